-- The sweep of one shard, by the holder of the sweep lease (core/registry.py: Registry.sweep).
-- KEYS: due, dflt, ids, fence, tx (of the shard)
-- ARGV: now, default timeout, fencing token, limit, client key prefix, history key prefix,
--       history_per_client, channel, node
-- Returns {'fenced'} when a newer lease holder has swept this shard (this one's lease is
-- gone), else {'ok', more (1/0), flat hash of each client marked offline...}.
local due, dflt, fence, tx = KEYS[1], KEYS[2], KEYS[4], KEYS[5]
local now, default = tonumber(ARGV[1]), tonumber(ARGV[2])
local token, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local cprefix, hprefix, keep = ARGV[5], ARGV[6], tonumber(ARGV[7])
local channel, node = ARGV[8], ARGV[9]
local seen = tonumber(redis.call('GET', fence) or '0')
if token < seen then return {'fenced'} end
if token > seen then redis.call('SET', fence, token) end
local out = {'ok', 0}
local candidates = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)
local from_dflt = redis.call('ZRANGEBYSCORE', dflt, '-inf', now - default, 'LIMIT', 0, limit)
if #candidates == limit or #from_dflt == limit then out[2] = 1 end
for _, id in ipairs(from_dflt) do candidates[#candidates + 1] = id end
for _, id in ipairs(candidates) do
  local key = cprefix .. id
  local cur = redis.call('HMGET', key, 'st', 'last', 'tmo', 'ivl')
  local st, last, tmo, ivl = cur[1], tonum(cur[2]), tonum(cur[3]), tonum(cur[4])
  if st ~= 'online' then
    index(due, dflt, id, 'offline', 0, nil, nil)  -- a stale index entry
  elseif last == nil or now - last > effective_timeout(tmo, ivl, default) then
    redis.call('HSET', key, 'st', 'offline', 'off', tostring(now))
    local v = redis.call('HINCRBY', key, 'v', 1)
    index(due, dflt, id, 'offline', 0, nil, nil)
    history(hprefix .. id, tostring(now), 'offline', 'timeout', keep)
    transition(tx, id, 'D', ARGV[1], 'timeout', 'online', v)
    local flat = redis.call('HGETALL', key)
    announce(channel, node, flat)
    out[#out + 1] = flat
  else
    index(due, dflt, id, st, last, tmo, ivl)  -- not due yet (a new timeout): its true place
  end
end
if #out > 2 then wake(channel, node) end
return out
