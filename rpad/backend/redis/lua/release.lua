-- Give the sweep lease back (at shutdown), only if it is still ours.
-- KEYS: lease; ARGV: node, token
if redis.call('GET', KEYS[1]) == ARGV[1] .. '|' .. ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
