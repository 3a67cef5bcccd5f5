-- Shared by the bench/*.lua scripts: wrk calls done() once at the end of a run. It prints one
-- machine-readable line that bench/run parses; the percentiles come from wrk's own latency
-- histogram (microseconds), which its default report does not show beyond p99 without --latency.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
