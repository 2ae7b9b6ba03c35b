-- Register (or update the registration of) a client (core/registry.py: Registry.register).
-- KEYS: due, dflt, ids, fence (of the shard)
-- ARGV: id, now, client key prefix, channel, node, name, tags, timeout, metadata
--       (optional values '' for absent, else '=' .. value)
-- Returns {created (1/0), flat hash}.
local due, dflt, ids = KEYS[1], KEYS[2], KEYS[3]
local id, now, cprefix, channel, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local function opt(x)
  if x == '' then return nil end
  return string.sub(x, 2)
end
local name, tags, tmo, metadata = opt(ARGV[6]), opt(ARGV[7]), opt(ARGV[8]), opt(ARGV[9])
local key = cprefix .. id
local created = 0
if redis.call('EXISTS', key) == 0 then
  redis.call('HSET', key, 'id', id, 'reg_at', now, 'st', 'unknown')
  redis.call('SADD', ids, id)
  created = 1
end
local set = {'regd', '1'}
if name then set[#set + 1] = 'name'; set[#set + 1] = name end
if tags then set[#set + 1] = 'tags'; set[#set + 1] = tags end
if tmo then set[#set + 1] = 'tmo'; set[#set + 1] = tmo end
if metadata then set[#set + 1] = 'meta'; set[#set + 1] = metadata end
redis.call('HSET', key, unpack(set))
redis.call('HINCRBY', key, 'v', 1)
local cur = redis.call('HMGET', key, 'st', 'last', 'tmo', 'ivl')
index(due, dflt, id, cur[1], tonum(cur[2]) or tonumber(now), tonum(cur[3]), tonum(cur[4]))
local flat = redis.call('HGETALL', key)
announce(channel, node, flat)
return {created, flat}
