-- wrk script for rpad heartbeat ingestion (bench/ingest.py drives it).
--
-- Environment:
--   BENCH_TOKEN    a service token (Authorization: Bearer)
--   BENCH_BATCH    0: one heartbeat per request to /api/v1/client/heartbeat;
--                  N: N heartbeats per request to /api/v1/client/heartbeats
--   BENCH_CLIENTS  distinct client ids per wrk thread, cycled (keeps every client's beats
--                  further apart than presence.min_interval_seconds)
--   BENCH_PREFIX   client id prefix (default "b")
-- done() prints one line "BENCH_RESULT {json}" with requests, duration and latency.

local token = os.getenv("BENCH_TOKEN") or ""
local batch = tonumber(os.getenv("BENCH_BATCH") or "0")
local clients = tonumber(os.getenv("BENCH_CLIENTS") or "20000")
local prefix = os.getenv("BENCH_PREFIX") or "b"

local threads = {}

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

local n = 0
local path, headers

function init(args)
   headers = {
      ["Authorization"] = "Bearer " .. token,
      ["Content-Type"] = "application/json",
   }
   if batch > 0 then
      path = "/api/v1/client/heartbeats"
   else
      path = "/api/v1/client/heartbeat"
   end
end

local function one()
   n = n + 1
   local id = n % clients
   return string.format(
      '{"clientId":"%s%d-%d","status":"online","version":"1.4.2","ipAddress":"10.%d.%d.%d",' ..
      '"osType":"linux","intervalSeconds":30,"metrics":{"cpuUsagePercent":12.5,' ..
      '"memoryUsageBytes":2147483648,"memoryTotalBytes":8589934592,"load1":0.42}}',
      prefix, thread_index, id, thread_index, math.floor(id / 256) % 256, id % 256)
end

function request()
   local body
   if batch > 0 then
      local items = {}
      for i = 1, batch do
         items[i] = one()
      end
      body = '{"heartbeats":[' .. table.concat(items, ",") .. ']}'
   else
      body = one()
   end
   return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"errors_status":%d,' ..
      '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_timeout":%d,' ..
      '"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
      summary.requests, summary.duration, summary.bytes, summary.errors.status,
      summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout,
      latency:percentile(50), latency:percentile(99), latency.max))
end
