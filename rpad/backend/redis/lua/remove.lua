-- Remove a client. KEYS: due, dflt, ids, fence, tx (of the shard)
-- ARGV: id, client key prefix, history key prefix, channel, node, now
-- Returns the flat hash it had, or false when there was none.
local due, dflt, ids, tx = KEYS[1], KEYS[2], KEYS[3], KEYS[5]
local id, cprefix, hprefix, channel, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = cprefix .. id
local flat = redis.call('HGETALL', key)
if #flat == 0 then return false end
local cur = redis.call('HMGET', key, 'st', 'v')
transition(tx, id, 'X', ARGV[6], 'removed', cur[1], cur[2] or '0')
wake(channel, node)
redis.call('DEL', key, hprefix .. id)
redis.call('SREM', ids, id)
index(due, dflt, id, 'removed', 0, nil, nil)
redis.call('PUBLISH', channel, 'x\n' .. node .. '\n' .. id)
return flat
