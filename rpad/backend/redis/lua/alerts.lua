-- Writes to the alerts' keys (all under one hash tag), in order, as one atomic step.
-- KEYS: lease, outbox, order, log sequence, log targets, stats, silences, overrides, policy,
--       cursor
-- ARGV: the lease's value this step needs ('<node>|<token>': the alerting node's step, refused
--       unless it still holds the lease; '': a write any node may make), the key prefix of
--       the targets' logs, the bus channel, this node, then the operations, each a code and
--       its arguments:
--   R id row          add a delivery (its place: after every other; kept if it exists)
--   U id row          update a delivery still in the outbox
--   F id target record keep outcome attempted
--                     a delivery finished: out of the outbox, into its target's log (the
--                     newest `keep`), counted (and its attempt, when `attempted` is 1)
--   A target          count an attempt that will be retried
--   S client state    the policy's memory of a client ('': forget it)
--   C shard id        the last transition of a shard the policy has seen
--   P which field value / D which field
--                     put / delete a silence or an override (which: silences | overrides)
--   B kind            tell every node that `kind` changed (silences, overrides, outbox)
-- Returns 1, or 0 when the lease is not held with that value (nothing was written).
local lease, outbox, order, logseq, logtargets, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5], KEYS[6]
local hashes = {silences = KEYS[7], overrides = KEYS[8]}
local policy, cursor = KEYS[9], KEYS[10]
local fence, logprefix, channel, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if fence ~= '' and redis.call('GET', lease) ~= fence then return 0 end
local top = nil
local i = 5
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'R' then
    local id = ARGV[i + 1]
    if redis.call('HSET', outbox, id, ARGV[i + 2]) == 1 then
      if top == nil then
        local last = redis.call('ZREVRANGE', order, 0, 0, 'WITHSCORES')
        top = tonumber(last[2] or '0')
      end
      top = top + 1
      redis.call('ZADD', order, top, id)
    end
    i = i + 3
  elseif op == 'U' then
    if redis.call('HEXISTS', outbox, ARGV[i + 1]) == 1 then
      redis.call('HSET', outbox, ARGV[i + 1], ARGV[i + 2])
    end
    i = i + 3
  elseif op == 'F' then
    local id, target, keep = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 4])
    redis.call('HDEL', outbox, id)
    redis.call('ZREM', order, id)
    local n = redis.call('INCR', logseq)
    local log = logprefix .. target
    redis.call('LPUSH', log, n .. '\t' .. ARGV[i + 3])
    redis.call('LTRIM', log, 0, keep - 1)
    redis.call('SADD', logtargets, target)
    redis.call('HINCRBY', stats, target .. '\t' .. ARGV[i + 5], 1)
    if ARGV[i + 6] == '1' then redis.call('HINCRBY', stats, target .. '\tattempts', 1) end
    i = i + 7
  elseif op == 'A' then
    redis.call('HINCRBY', stats, ARGV[i + 1] .. '\tattempts', 1)
    i = i + 2
  elseif op == 'S' then
    if ARGV[i + 2] == '' then
      redis.call('HDEL', policy, ARGV[i + 1])
    else
      redis.call('HSET', policy, ARGV[i + 1], ARGV[i + 2])
    end
    i = i + 3
  elseif op == 'C' then
    redis.call('HSET', cursor, ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'P' then
    redis.call('HSET', hashes[ARGV[i + 1]], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'D' then
    redis.call('HDEL', hashes[ARGV[i + 1]], ARGV[i + 2])
    i = i + 3
  elseif op == 'B' then
    redis.call('PUBLISH', channel, 'a\n' .. node .. '\n' .. ARGV[i + 1])
    i = i + 2
  else
    return redis.error_reply('alerts.lua: unknown operation ' .. tostring(op))
  end
end
return 1
