"""extproc-load (tools/loadgen) against the trivial processor and the body benchmarks'
processors (body-pass, body-rewrite), without Envoy.

The load generator plays Envoy's ext_proc side: ProcessingRequests on many concurrent streams
over a few HTTP/2 connections, sent as Envoy sends them in each body mode, each stream cancelled
(RST_STREAM) after its last reply, or half-closed. These tests run every shape for a short count
and check that every stream and every reply arrived and was right (body replies byte for byte),
that the server's CPU and memory were measured, that the latency figures are consistent, and
that errors are counted when they happen. No timed assertions: the figures themselves are for
benchmarks (bench/).

Environment:
  EXTPROC_EXAMPLES  processor runner binary (default: build/examples/extproc-examples)
  EXTPROC_LOAD      load generator (default: tools/loadgen/extproc-load in the runner's build
                    directory, so EXTPROC_EXAMPLES=build-asan/... picks build-asan's)
"""

import json
import subprocess

import pytest

from conftest import free_ports, start_processor, tool_binary

COUNT = 2000
CHUNK = 16 * 1024  # the load generator's default chunk
STREAMED_BODY = 256 * 1024  # 16 chunks; the 1 MiB default is for benchmarks
MESSAGES_PER_STREAM = {"headers": 2, "full": 6, "streamed": 2 + STREAMED_BODY // CHUNK,
                       "duplex": 2 + STREAMED_BODY // CHUNK, "buffered": 3}
# The body shapes against body-pass and body-rewrite: small bodies and counts, so that even
# under the sanitizers each run takes well under a second; the 1 MiB and 10 MiB defaults are
# for benchmarks (bench/bodies.sh).
BODY_COUNT = 200
BODY_BYTES = {"streamed": 64 * 1024 + 100, "duplex": 64 * 1024 + 100, "buffered": 256 * 1024}
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


@pytest.fixture(scope="module")
def body_processors(tmp_path_factory):
    """body-pass and body-rewrite on loopback ports, one runner. Yields ({"body-pass": target,
    "body-rewrite": target}, pid); after the module it must exit cleanly and have logged no
    warning."""
    log_dir = tmp_path_factory.mktemp("bodies")
    services = ["body-pass", "body-rewrite"]
    proc, addresses = start_processor(log_dir, "tcp", None, services, name="body-processors")
    try:
        yield ({name: f"127.0.0.1:{port}" for name, (_, port) in zip(services, addresses)},
               proc.popen.pid)
    finally:
        code = proc.stop()
    assert code == 0, f"body processors exited with {code}\n{proc.tail(80)}"
    bad = [line for line in proc.log.read_text(errors="replace").splitlines()
           if " WARN " in line or " ERROR " in line]
    assert not bad, "body processors logged:\n" + "\n".join(bad[:20])


@pytest.mark.parametrize("shape", ["headers", "full", "streamed", "duplex", "buffered"])
def test_shape(trivial_processors, shape):
    target, pid = trivial_processors["tcp"]
    args = ["--shape", shape, "--count", COUNT, "--concurrency", 16, "--connections", 2,
            "--server-pid", pid]
    count = COUNT
    if shape in ("streamed", "duplex"):
        args += ["--body-bytes", STREAMED_BODY]
    if shape in ("duplex", "buffered"):  # the newer shapes: fewer streams, as below
        count = BODY_COUNT
        args += ["--count", count]
    if shape == "buffered":
        args += ["--body-bytes", BODY_BYTES["buffered"]]
    report = run_load(target, *args)
    check_clean_run(report, count, MESSAGES_PER_STREAM[shape])
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


def body_chunks(shape, body):
    return -(-body // CHUNK) if shape in ("streamed", "duplex") else 1


@pytest.mark.parametrize("shape", ["streamed", "duplex", "buffered"])
@pytest.mark.parametrize("processor,expect", [("body-pass", "same"), ("body-rewrite", "upper")])
def test_body_shape(body_processors, shape, processor, expect):
    """Each body shape against a processor that passes every chunk through and one that
    rewrites every chunk (same size): every reply's body is checked byte for byte by the load
    generator (--expect-body), and the byte counts say what went each way."""
    targets, pid = body_processors
    body = BODY_BYTES[shape]
    report = run_load(targets[processor], "--shape", shape, "--body-bytes", body,
                      "--expect-body", expect, "--count", BODY_COUNT, "--concurrency", 8,
                      "--connections", 2, "--server-pid", pid)
    # The last chunk is short: 64 KiB + 100 bytes is four full chunks and one of 100 bytes.
    messages = 2 + body_chunks(shape, body)
    # In FULL_DUPLEX_STREAMED the SDK answers each chunk with exactly one streamed piece, the
    # last one carrying end_of_stream, so the replies match the messages there too.
    check_clean_run(report, BODY_COUNT, messages)
    assert report["expect_body"] == expect and report["chunk_bytes"] == CHUNK
    assert report["body_bytes_per_stream"] == body
    assert report["body_bytes_sent"] == BODY_COUNT * body
    # Passing through sends no body back in STREAMED and BUFFERED; in FULL_DUPLEX_STREAMED the
    # body goes on only as the processor's pieces.
    sends_body_back = processor == "body-rewrite" or shape == "duplex"
    assert report["body_bytes_received"] == (BODY_COUNT * body if sends_body_back else 0), report
    server = report["server"]
    assert server["cpu_us_per_mib"] > 0 and server["body_bytes_per_cpu_s"] > 0, server
    assert server["peak_rss_reset"] is True, server
    assert 0 < server["idle_rss_kib"] and server["peak_growth_per_stream_kib"] >= 0, server


@pytest.mark.parametrize("shape,processor,expect,why", [
    ("streamed", "body-pass", "upper", "the chunk was not rewritten"),
    ("streamed", "body-rewrite", "same", "the replacement's bytes are not the ones due"),
    ("duplex", "body-pass", "upper", "a streamed piece's bytes are not the ones due"),
    ("buffered", "body-rewrite", "same", "the replacement's bytes are not the ones due"),
])
def test_body_replies_are_checked(body_processors, shape, processor, expect, why):
    """Replies that do not carry the body expected fail their streams as bad replies."""
    targets, _ = body_processors
    report = run_load(targets[processor], "--shape", shape, "--body-bytes", BODY_BYTES[shape],
                      "--expect-body", expect, "--count", 20, "--concurrency", 4, expect_rc=1)
    assert report["streams"] == 0 and report["streams_failed"] == 20, report
    assert report["errors"]["bad_reply"] == 20 == report["errors"]["total"], report
    assert why in report["first_error"], report
