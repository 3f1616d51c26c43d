-- wrk script for bench/envoy/run.sh: when the run ends, prints one line
--   BENCH-JSON {...}
-- with the figures run.sh keeps (latencies in microseconds, as wrk records them).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, "rps": %.1f, '
    .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "stdev": %.1f, '
    .. '"min": %d, "max": %d}, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.stdev, latency.min, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
