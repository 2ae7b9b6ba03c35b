-- Shared by every presence script (prepended by scripts.py).
-- A client is a hash of string fields; a missing field is None. Its version `v` grows with
-- every change, so that a node installs a state only if it is newer than the one it has.

local function tonum(x)
  if x == false or x == nil then return nil end
  return tonumber(x)
end

-- The client's effective timeout (core/model.py: Client.effective_timeout).
local function effective_timeout(tmo, ivl, default)
  local t = tmo or default
  if ivl and 2 * ivl > t then t = 2 * ivl end
  return t
end

-- Put an online client in the right sweep index, or take it out of both.
-- due: clients with a timeout of their own (score: deadline); dflt: on the default (score:
-- the last heartbeat, so that a changed default applies without rescoring anyone).
local function index(due, dflt, id, status, last, tmo, ivl)
  if status ~= 'online' then
    redis.call('ZREM', due, id)
    redis.call('ZREM', dflt, id)
  elseif tmo then
    redis.call('ZADD', due, last + effective_timeout(tmo, ivl, 0), id)
    redis.call('ZREM', dflt, id)
  else
    redis.call('ZADD', dflt, last, id)
    redis.call('ZREM', due, id)
  end
end

local function history(hkey, at, status, reason, keep)
  redis.call('LPUSH', hkey, at .. '|' .. status .. '|' .. (reason or ''))
  redis.call('LTRIM', hkey, 0, keep - 1)
end

-- Record a transition in the shard's stream of transitions, which the alerting node reads in
-- order (ev: C went online, D went offline, X removed; v: the client hash's version after it).
-- Bounded: the oldest go beyond TX_KEEP (a reader that fell that far behind rebuilds).
local TX_KEEP = 4096
local function transition(tx, id, ev, at, reason, prev, v)
  redis.call('XADD', tx, 'MAXLEN', '~', TX_KEEP, '*', 'c', id, 'e', ev, 'at', at,
    'r', reason or '', 'p', prev or '', 'v', v)
end

-- Wake the alerting node (once per script that recorded transitions).
local function wake(channel, node)
  redis.call('PUBLISH', channel, 't\n' .. node)
end

-- Tell every node the client's new state (they install it into their views).
local function announce(channel, node, flat)
  redis.call('PUBLISH', channel, 'p\n' .. node .. '\n' .. cjson.encode(flat))
end
