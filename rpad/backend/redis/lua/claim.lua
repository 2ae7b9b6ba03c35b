-- Count a new WebSocket connection of a user against the cluster-wide limit.
-- KEYS: the user's connections hash (field: node/connection, value: expiry in ms)
-- ARGV: field, now (ms), ttl (ms), limit. Expired entries (of dead nodes) are dropped.
-- Returns 1 (claimed) or 0 (the user has `limit` connections already).
local key = KEYS[1]
local now, ttl, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local all = redis.call('HGETALL', key)
local live = 0
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < now then redis.call('HDEL', key, all[i]) else live = live + 1 end
end
if live >= limit then return 0 end
redis.call('HSET', key, ARGV[1], now + ttl)
redis.call('PEXPIRE', key, ttl)
return 1
