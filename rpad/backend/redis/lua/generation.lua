-- Revoke a client's agent tokens: bump its generation and tell every node.
-- KEYS: generations hash; ARGV: client id, channel, node. Returns the new generation.
local gen = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PUBLISH', ARGV[2], 'g\n' .. ARGV[3] .. '\n' .. ARGV[1] .. '\n' .. gen)
return gen
