-- Heartbeats of one shard, each applied atomically (core/registry.py: Registry.heartbeat).
-- KEYS: due, dflt, ids, fence, tx (of the shard)
-- ARGV: min_interval, auto_register (1/0), client key prefix, history key prefix,
--       history_per_client, channel, node, then 11 per beat:
--       id, status, version, ip, os, name, interval, metrics, metadata, skew, now
--       (optional values are '' for absent, else '=' .. value; now: when it was received)
-- Returns per beat {'ok', event, previous status, flat hash, created (1/0)} where event is
-- C (went online), D (went offline: agent shutdown), U (status update) or '' (nothing);
-- {'rate', seconds to wait}; or {'unknown'}.
local due, dflt, ids, tx = KEYS[1], KEYS[2], KEYS[3], KEYS[5]
local woke = false
local min_interval = tonumber(ARGV[1])
local auto = ARGV[2] == '1'
local cprefix, hprefix = ARGV[3], ARGV[4]
local keep = tonumber(ARGV[5])
local channel, node = ARGV[6], ARGV[7]
local out = {}
local function opt(x)
  if x == '' then return nil end
  return string.sub(x, 2)
end
local i = 8
while i + 10 <= #ARGV do
  local id, status = ARGV[i], ARGV[i + 1]
  local version, ip, os, name = opt(ARGV[i + 2]), opt(ARGV[i + 3]), opt(ARGV[i + 4]), opt(ARGV[i + 5])
  local ivl, metrics, metadata, skew = opt(ARGV[i + 6]), opt(ARGV[i + 7]), opt(ARGV[i + 8]), opt(ARGV[i + 9])
  local now_s = ARGV[i + 10]
  local now = tonumber(now_s)
  i = i + 11
  local key = cprefix .. id
  local cur = redis.call('HMGET', key, 'st', 'last', 'rst', 'ver', 'regd', 'name', 'tmo', 'ivl')
  local was, last, old_rst, old_ver = cur[1], tonum(cur[2]), cur[3], cur[4]
  local regd, has_name, tmo, old_ivl = cur[5] == '1', cur[6], tonum(cur[7]), tonum(cur[8])
  local wait = nil
  if was and last and status ~= 'offline' then
    local w = last + min_interval - now
    if w > 0 and now >= last then wait = w end
  end
  if wait then
    out[#out + 1] = {'rate', tostring(wait)}
  elseif not was and not auto then
    out[#out + 1] = {'unknown'}
  else
    local created = 0
    if not was then
      created = 1
      redis.call('HSET', key, 'id', id, 'reg_at', now_s, 'st', 'unknown', 'regd', '0')
      redis.call('SADD', ids, id)
      was = 'unknown'
    end
    local set = {'last', now_s, 'rst', status}
    if version then set[#set + 1] = 'ver'; set[#set + 1] = version end
    if ip then set[#set + 1] = 'ip'; set[#set + 1] = ip end
    if os then set[#set + 1] = 'os'; set[#set + 1] = os end
    if name and (not regd or not has_name) then set[#set + 1] = 'name'; set[#set + 1] = name end
    if ivl then set[#set + 1] = 'ivl'; set[#set + 1] = ivl; old_ivl = tonumber(ivl) end
    if metrics then set[#set + 1] = 'mx'; set[#set + 1] = metrics end
    if metadata then set[#set + 1] = 'meta'; set[#set + 1] = metadata end
    if skew then set[#set + 1] = 'skew'; set[#set + 1] = skew else redis.call('HDEL', key, 'skew') end
    local ev, st, reason = '', was, nil
    if status == 'offline' then
      if was ~= 'offline' then
        st, ev, reason = 'offline', 'D', 'agent_shutdown'
        set[#set + 1] = 'off'; set[#set + 1] = now_s
      end
    elseif was ~= 'online' then
      st, ev, reason = 'online', 'C', 'heartbeat'
      set[#set + 1] = 'on'; set[#set + 1] = now_s
      redis.call('HDEL', key, 'off')
    elseif status ~= old_rst or (version or old_ver) ~= old_ver then
      ev = 'U'
    end
    set[#set + 1] = 'st'; set[#set + 1] = st
    redis.call('HSET', key, unpack(set))
    local v = redis.call('HINCRBY', key, 'v', 1)
    index(due, dflt, id, st, now, tmo, old_ivl)
    if ev == 'C' or ev == 'D' then
      history(hprefix .. id, now_s, st, reason, keep)
      transition(tx, id, ev, now_s, reason, was, v)
      woke = true
    end
    local flat = redis.call('HGETALL', key)
    announce(channel, node, flat)
    out[#out + 1] = {'ok', ev, was, flat, created}
  end
end
if woke then wake(channel, node) end
return out
