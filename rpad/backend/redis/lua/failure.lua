-- A failed authentication from an address: count it in a sliding window; at the limit, tell
-- every node that the address is blocked until its oldest failure leaves the window.
-- KEYS: the address's failures (sorted set of times in ms)
-- ARGV: now (ms), window (ms), limit, unique member, channel, node, address
-- Returns the block's end in ms, or 0.
local key = KEYS[1]
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
redis.call('ZADD', key, now, ARGV[4])
redis.call('PEXPIRE', key, window)
local n = redis.call('ZCARD', key)
if n < limit then return 0 end
if n > limit then redis.call('ZREMRANGEBYRANK', key, 0, n - limit - 1) end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
local until_ms = tonumber(oldest[2]) + window
redis.call('PUBLISH', ARGV[5], 'b\n' .. ARGV[6] .. '\n' .. ARGV[7] .. '\n' .. until_ms)
return until_ms
