"""extproc-load (tools/loadgen) against the trivial processor, without Envoy.

The load generator plays Envoy's ext_proc side: lock-step ProcessingRequests on many concurrent
streams over a few HTTP/2 connections, each stream cancelled (RST_STREAM) after its last reply,
or half-closed. These tests run every shape for a short count and check that every stream and
every reply arrived and was right, that the server's CPU was measured, that the latency figures
are consistent, and that errors are counted when they happen. No timed assertions: the figures
themselves are for benchmarks (bench/).

Environment:
  EXTPROC_EXAMPLES  processor runner binary (default: build/examples/extproc-examples)
  EXTPROC_LOAD      load generator (default: tools/loadgen/extproc-load in the runner's build
                    directory, so EXTPROC_EXAMPLES=build-asan/... picks build-asan's)
"""

import json
import subprocess

import pytest

from conftest import free_ports, tool_binary

COUNT = 2000
STREAMED_BODY = 256 * 1024  # 4 chunks of 64 KiB; the 1 MiB default is for benchmarks
MESSAGES_PER_STREAM = {"headers": 2, "full": 6, "streamed": 2 + STREAMED_BODY // (64 * 1024)}
RUN_TIMEOUT = 60  # seconds; a run normally takes well under one, even under ASan
PERCENTILES = ["p50", "p90", "p99", "p99_9"]


def loadgen_binary():
    return tool_binary("EXTPROC_LOAD", "tools", "loadgen", "extproc-load")


def run_load(target, *args, expect_rc=0):
    """Runs extproc-load --json against target; returns the parsed report."""
    argv = [loadgen_binary(), "--target", target, "--json", *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == expect_rc, \
        f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def check_clean_run(report, count, messages_per_stream):
    assert report["errors"]["total"] == 0, report
    assert report["streams"] == count
    assert report["streams_failed"] == 0
    assert report["messages_per_stream"] == messages_per_stream
    assert report["messages"] == count * messages_per_stream
    assert report["hard_timeout"] is False
    for kind in ("message", "stream"):
        latency = report["latency_us"][kind]
        values = [latency[p] for p in PERCENTILES]
        assert values == sorted(values), (kind, latency)
        assert latency["min"] <= latency["p50"] and latency["p99_9"] <= latency["max"], latency
        assert latency["count"] == (report["messages"] if kind == "message" else count)


@pytest.mark.parametrize("shape", ["headers", "full", "streamed"])
def test_shape(trivial_processors, shape):
    target, pid = trivial_processors["tcp"]
    args = ["--shape", shape, "--count", COUNT, "--concurrency", 16, "--connections", 2,
            "--server-pid", pid]
    if shape == "streamed":
        args += ["--body-bytes", STREAMED_BODY]
    report = run_load(target, *args)
    check_clean_run(report, COUNT, MESSAGES_PER_STREAM[shape])
    assert report["shape"] == shape and report["end"] == "cancel"
    server = report["server"]
    assert server["pid"] == pid
    assert server["cpu_us_per_stream"] > 0, server
    assert server["stat_cpu_us_per_stream"] >= 0, server
    assert 0 < server["rss_kib"] <= server["peak_rss_kib"], server


def test_half_close_over_unix_socket(trivial_processors):
    target, pid = trivial_processors["unix"]
    report = run_load(target, "--shape", "full", "--end", "half-close", "--count", COUNT,
                      "--concurrency", 16, "--connections", 2, "--server-pid", pid)
    check_clean_run(report, COUNT, MESSAGES_PER_STREAM["full"])
    assert report["end"] == "half-close"
    assert report["server"]["cpu_us_per_stream"] > 0


def test_duration_rate_and_warmup(trivial_processors):
    target, _ = trivial_processors["tcp"]
    report = run_load(target, "--duration", 1, "--warmup", 0.2, "--rate", 300,
                      "--concurrency", 8, "--connections", 2)
    assert report["errors"]["total"] == 0 and report["errors"]["warmup"] == 0, report
    assert report["warmup_s"] >= 0.2
    # The rate is a schedule from the first stream on (warmup included): never ahead of it.
    assert report["streams"] <= 300 * (report["warmup_s"] + report["elapsed_s"]) + 1, report
    assert report["streams"] > 0
    assert report["messages"] == report["streams"] * 2


def test_errors_are_counted(trivial_processors):
    """A reply timeout far below any real latency: streams fail as timeouts, are cancelled,
    and the exit status says so. The server takes the cancels in its stride."""
    target, _ = trivial_processors["tcp"]
    report = run_load(target, "--count", COUNT, "--concurrency", 64, "--connections", 2,
                      "--timeout", 0.000001, expect_rc=1)
    assert report["errors"]["timeout"] > 0, report
    assert report["errors"]["total"] == report["errors"]["timeout"] == report["streams_failed"]
    assert report["streams"] + report["streams_failed"] == COUNT
    # And the server is still serving.
    check_clean_run(run_load(target, "--count", 100, "--concurrency", 4), 100, 2)


def test_nothing_listening():
    [port] = free_ports(1)
    done = subprocess.run([loadgen_binary(), "--target", f"127.0.0.1:{port}", "--count", "10"],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 2
    assert "connection refused" in done.stderr
    assert done.stdout == ""
