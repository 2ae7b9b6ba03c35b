-- What a subscriber who saw up to `since` missed, read at the same instant as a marker is
-- published on the bus: every message of the topic with a seq up to the returned one was
-- published before the marker, every later one after it.
-- KEYS: meta hash, history stream; ARGV: since (or -1), channel, node, marker
-- Returns {seq, oldest kept seq (0: none), text...}.
local meta, log = KEYS[1], KEYS[2]
local since = tonumber(ARGV[1])
local seq = tonumber(redis.call('HGET', meta, 'seq') or '0')
local out = {seq, 0}
local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
if #first > 0 then out[2] = tonumber(string.match(first[1][1], '^(%d+)')) end
if since >= 0 and since < seq then
  local entries = redis.call('XRANGE', log, (since + 1) .. '-0', '+')
  for _, e in ipairs(entries) do out[#out + 1] = e[2][2] end
end
redis.call('PUBLISH', ARGV[2], 'k\n' .. ARGV[3] .. '\n' .. ARGV[4])
return out
