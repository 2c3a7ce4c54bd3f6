-- wrk script for `make bench` (row 3): POST /v1/events/batch with a JSON array of N
-- copies of the event file; `-- FILE N` after the URL. Prints one parseable summary
-- line (latencies in microseconds, per batch call).
function init(args)
  local f = assert(io.open(args[1], "rb"))
  local one = f:read("*a"):gsub("%s+$", "")
  f:close()
  local n = tonumber(args[2] or "100")
  local items = {}
  for i = 1, n do items[i] = one end
  wrk.body = "[" .. table.concat(items, ",") .. "]"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK requests=%d duration_us=%d p50_us=%d p99_us=%d max_us=%d " ..
    "non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
