-- wrk script: one heartbeat per request, POST /api/v1/client/heartbeat, keep-alive,
-- for many distinct client ids (bench/http_heartbeat.py drives it).
--
-- Environment:
--   BENCH_TOKEN    a service token (Authorization: Bearer), so one token beats for every id
--   BENCH_CLIENTS  distinct client ids per wrk thread, cycled (default 10000)
-- done() prints one line "BENCH_RESULT {json}": requests, duration, errors, latency.

local token = os.getenv("BENCH_TOKEN") or ""
local clients = tonumber(os.getenv("BENCH_CLIENTS") or "10000")

local threads = {}

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

local n = 0
local headers

function init(args)
   headers = {
      ["Authorization"] = "Bearer " .. token,
      ["Content-Type"] = "application/json",
   }
end

function request()
   n = n + 1
   local id = n % clients
   -- The seed agents' snake_case payload, plus metrics as a real agent sends them.
   local body = string.format(
      '{"client_id":"hb%d-%d","timestamp":"2026-01-01T00:00:00Z","status":"online",' ..
      '"version":"1.0.0","ip_address":"10.%d.%d.%d","metrics":{"cpuUsagePercent":12.5,' ..
      '"memoryUsageBytes":2147483648,"load1":0.42}}',
      thread_index, id, thread_index, math.floor(id / 256) % 256, id % 256)
   return wrk.format("POST", "/api/v1/client/heartbeat", headers, body)
end

function done(summary, latency, requests)
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"errors_status":%d,"errors_connect":%d,' ..
      '"errors_read":%d,"errors_write":%d,"errors_timeout":%d,"p50_us":%d,"p99_us":%d}\n',
      summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
      summary.errors.read, summary.errors.write, summary.errors.timeout,
      latency:percentile(50), latency:percentile(99)))
end
