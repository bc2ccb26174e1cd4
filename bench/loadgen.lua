-- wrk script for bench/bench_load.py: replays a file of callbacks as OpenIM's Go client sends them.
--
--   wrk -t1 -c16 -d10s -s bench/loadgen.lua http://127.0.0.1:PORT -- REQUESTS_FILE
--
-- REQUESTS_FILE has one request per line: "<path>\t<operationID>\t<JSON body>". The body gets
-- Go's trailing newline back and the headers Go's net/http sends (Operationid is how Go
-- canonicalises "operationID"). Requests are formatted once, in init(), and then cycled.
-- done() prints one line "WRKJSON {...}" for the orchestrator (latencies in microseconds).

local reqs = {}
local n = 0
local i = 0

function init(args)
   local file = assert(io.open(args[1], "rb"))
   for line in file:lines() do
      local path, opid, body = line:match("^([^\t]+)\t([^\t]*)\t(.*)$")
      if path then
         body = body .. "\n"
         local headers = {
            ["Content-Type"] = "application/json; charset=utf-8",
            ["User-Agent"] = "Go-http-client/1.1",
            ["Accept-Encoding"] = "gzip",
            ["Operationid"] = opid,
         }
         n = n + 1
         reqs[n] = wrk.format("POST", path, headers, body)
      end
   end
   file:close()
   assert(n > 0, "no requests in " .. args[1])
   -- Threads start at different offsets so they do not send the same bodies in lockstep.
   i = (tonumber(args[2] or "0") or 0) % n
end

function request()
   i = i % n + 1
   return reqs[i]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
      '"status":%d,"timeout":%d,"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max))
end
