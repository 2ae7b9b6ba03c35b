-- The sweep lease: take it (when free), or keep it (when ours); give a fencing token.
-- KEYS: lease, token counter; ARGV: node, ttl (ms), our token ('' when we hold none)
-- Returns {token} when we hold the lease now (a new one when newly taken), or {0, holder}.
local lease, tokens = KEYS[1], KEYS[2]
local node, ttl, ours = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local cur = redis.call('GET', lease)
if cur then
  local holder, token = string.match(cur, '^(.*)|(%d+)$')
  if holder == node and token == ours then
    redis.call('PEXPIRE', lease, ttl)
    return {tonumber(token)}
  end
  return {0, holder or cur}
end
local token = redis.call('INCR', tokens)
redis.call('SET', lease, node .. '|' .. token, 'PX', ttl)
return {token}
