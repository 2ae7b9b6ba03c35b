-- Remove a client. KEYS: due, dflt, ids, fence (of the shard)
-- ARGV: id, client key prefix, history key prefix, channel, node
-- Returns the flat hash it had, or false when there was none.
local due, dflt, ids = KEYS[1], KEYS[2], KEYS[3]
local id, cprefix, hprefix, channel, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = cprefix .. id
local flat = redis.call('HGETALL', key)
if #flat == 0 then return false end
redis.call('DEL', key, hprefix .. id)
redis.call('SREM', ids, id)
index(due, dflt, id, 'removed', 0, nil, nil)
redis.call('PUBLISH', channel, 'x\n' .. node .. '\n' .. id)
return flat
