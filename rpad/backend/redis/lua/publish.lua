-- Publish a message to a topic: bump its seq, keep it in the topic's stream, tell every node.
-- KEYS: meta hash, history stream (of the topic)
-- ARGV: channel, node, quoted topic, quoted type, quoted ts, data (JSON), history size,
--       topic (plain), type (plain)
-- Returns the seq. The envelope is core/jsonenc.py's, field for field.
local meta, log = KEYS[1], KEYS[2]
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local text = '{"type":' .. ARGV[4] .. ',"topic":' .. ARGV[3] .. ',"seq":' .. seq
  .. ',"ts":' .. ARGV[5] .. ',"data":' .. ARGV[6] .. '}'
local size = tonumber(ARGV[7])
if size > 0 then
  redis.call('XADD', log, 'MAXLEN', '~', size, seq .. '-0', 't', text)
end
redis.call('PUBLISH', ARGV[1], 'm\n' .. ARGV[2] .. '\n' .. ARGV[8] .. '\n' .. ARGV[9] .. '\n'
  .. seq .. '\n' .. text)
return seq
