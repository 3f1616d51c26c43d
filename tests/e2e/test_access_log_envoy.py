"""AccessLogExtProcService (processors/access_log) behind a real Envoy, in three body modes.

One Envoy (listeners from tests/e2e/envoy_gen.py: BUFFERED, STREAMED, FULL_DUPLEX_STREAMED with
trailers SEND) in front of tools/echo_upstream.py, one runner serving the access-log processor.
Each mode gets 1,000 requests from 32 concurrent clients, a mix of GETs, JSON logins carrying
a password, text uploads larger than the body cap, and server-sent event streams. The log must
then hold exactly one well-formed JSON line per request whose fields match what the client sent
and got and what the upstream saw; passwords and authorization headers must be redacted; and
it must have been rotated. A client leaving mid-stream still gets its line, marked incomplete.
A second stack logs onto a full disk (a 256 KiB tmpfs): every request still succeeds, and the
lines that could not be written are counted and reported.
"""

import contextlib
import glob
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import envoy_gen
from conftest import (_base_ids, can_connect, envoy_binary, envoy_ready, free_ports, start,
                      start_echo, start_processor, wait_until)

MODES = ["buffered", "streamed", "duplex"]  # envoy_gen.LISTENERS names
REQUESTS = 1000
CONCURRENCY = 32
BODY_CAP = 256
SSE_EVENTS = 4
LOG_WAIT = 20.0  # seconds for the last lines to reach the file (the sanitizer builds are slow)
REDACTED = "[REDACTED]"


# ---------------------------------------------------------------- the stack


@contextlib.contextmanager
def access_log_stack(log_dir, env, listeners):
    """Echo upstream, the runner serving access-log with `env` added to its environment, and
    Envoy with `listeners`; yields {listener: port} and the processes; all stopped on exit."""
    admin_port, echo_port, *listen = free_ports(2 + len(listeners))
    ports = dict(zip(listeners, listen))
    base_id = os.getpid() * 10 + next(_base_ids) % 10
    sock_dir = tempfile.mkdtemp(prefix="extproc-")
    procs = []
    try:
        procs.append(start_echo(log_dir, echo_port))
        with pytest.MonkeyPatch.context() as mp:  # the runner copies the environment at start
            for name, value in env.items():
                mp.setenv(name, value)
            processor, (address,) = start_processor(log_dir, "tcp", sock_dir, ["access-log"])
        procs.append(processor)
        config = Path(log_dir) / "envoy.yaml"
        config.write_text(envoy_gen.config(ports, admin_port, echo_port, address, log_dir,
                                           listeners=listeners))
        procs.append(start("envoy", [
            envoy_binary(), "-c", str(config), "--base-id", str(base_id),
            "--log-level", "warn", "--concurrency", "2"], log_dir))
        wait_until("envoy /ready and its listeners",
                   lambda: envoy_ready(admin_port) and
                   all(can_connect(("127.0.0.1", p)) for p in listen), procs)
        yield ports, procs
    finally:
        codes = {p.name: p.stop() for p in reversed(procs)}
        shutil.rmtree(sock_dir, ignore_errors=True)
        Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)
    if codes.get("processor", 0) != 0:
        pytest.fail(f"processor exited with {codes['processor']}\n" + procs[1].tail(80),
                    pytrace=False)


# ---------------------------------------------------------------- the clients


def request_for(mode, i):
    """Request i of a run: (method, path, headers, body bytes or None, the JSON sent or None)."""
    rid = f"{mode}-{i}-{uuid.uuid4().hex[:8]}"
    headers = {"x-request-id": rid, "x-client": f"client-{i}",
               "authorization": f"Bearer tok-{rid}"}
    kind = i % 4
    if kind == 0:
        return "GET", f"/items/{i}?q={i}", headers, None, None
    if kind == 1:
        doc = {"user": f"u{i}", "password": f"pw-{rid}", "profile": {"Password": "x", "n": i}}
        headers["content-type"] = "application/json"
        return "POST", "/login", headers, json.dumps(doc).encode(), doc
    if kind == 2:  # text over the cap, two-byte characters across it
        headers["content-type"] = "text/plain; charset=utf-8"
        return "PUT", f"/notes/{i}", headers, ("é" * 150 + f" note {i}").encode(), None
    headers["x-echo-response-sse"] = str(SSE_EVENTS)
    headers["accept"] = "text/event-stream"
    return "GET", f"/events/{i}", headers, None, None


def upstream_view(received, headers):
    """The echo's JSON: the whole body, or the first server-sent event's data."""
    if "x-echo-response-sse" in headers:
        first = received.split(b"\n\n", 1)[0]
        assert first.startswith(b"event: echo\ndata: "), received[:200]
        return json.loads(first.split(b"data: ", 1)[1])
    return json.loads(received)


def run_load(port, mode, count=REQUESTS):
    """count requests through Envoy's `port`, CONCURRENCY at a time, each client on its own
    keep-alive connection. Returns one record per request, by request id."""
    local = threading.local()

    def one(i):
        method, path, headers, body, doc = request_for(mode, i)
        for attempt in range(2):  # a keep-alive connection Envoy closed meanwhile: once more
            conn = getattr(local, "conn", None) or http.client.HTTPConnection(
                "127.0.0.1", port, timeout=30)
            local.conn = conn
            try:
                conn.request(method, path, body=body, headers=headers)
                reply = conn.getresponse()
                received = reply.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                conn.close()
                local.conn = None
                if attempt:
                    raise
        return dict(i=i, method=method, path=path, headers=headers, sent=body or b"", doc=doc,
                    status=reply.status, received=received)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        records = list(pool.map(one, range(count)))
    return {r["headers"]["x-request-id"]: r for r in records}


# ---------------------------------------------------------------- the log


def log_files(path):
    return [p for p in [path, *sorted(glob.glob(f"{path}.*"))] if os.path.exists(p)]


def read_log(path):
    """Every line of the log and its rotated files, parsed (a line that is not JSON fails)."""
    lines = []
    for name in log_files(path):
        with open(name, "rb") as f:
            for raw in f.read().split(b"\n")[:-1]:
                try:
                    lines.append(json.loads(raw))  # bytes: must be valid UTF-8 too
                except ValueError:
                    pytest.fail(f"{name}: not a JSON line: {raw[:300]!r}")
    return lines


def lines_for(path, prefix, want):
    """The lines whose request id starts with prefix, once `want` of them are there."""
    deadline = time.monotonic() + LOG_WAIT
    while True:
        found = [line for line in read_log(path) if line["request_id"].startswith(prefix)]
        if len(found) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    time.sleep(0.3)  # and nothing more comes
    return [line for line in read_log(path) if line["request_id"].startswith(prefix)]


def redact(value):
    """What the processor logs for a JSON document with EXTPROC_ACCESS_LOG_REDACT_FIELDS
    "password" (any case, any depth)."""
    if isinstance(value, dict):
        return {k: REDACTED if k.lower() == "password" else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def expected_body(data):
    """(key, value) the line should hold for a body: its text up to the cap (without a
    character cut in half), or why a JSON body is left out, as the processor decides."""
    kept = data[:BODY_CAP]
    if kept.lstrip()[:1] in (b"{", b"["):
        if len(data) > BODY_CAP:
            return "_omitted", "truncated JSON body cannot be redacted"
        doc = json.loads(data)
        return "", data.decode() if redact(doc) == doc else redact(doc)
    return "", kept.decode("utf-8", errors="ignore")


def check_body(line, key, data):
    suffix, want = expected_body(data)
    got = line.get(key + suffix)
    if isinstance(want, (dict, list)):
        got = json.loads(got)
    assert got == want, (key, line)
    assert line.get(key + "_truncated", False) == (len(data) > BODY_CAP), line


def check_line(line, rec, port):
    assert line["method"] == rec["method"]
    assert line["path"] == rec["path"]
    assert line["authority"] == f"127.0.0.1:{port}"
    assert line["status"] == rec["status"] == 200
    assert line["request_bytes"] == len(rec["sent"])
    assert line["response_bytes"] == len(rec["received"])
    assert line["complete"] is True
    assert 0 <= line["upstream_ms"] <= line["duration_ms"], line
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["start_time"])
    echo = upstream_view(rec["received"], rec["headers"])
    assert echo["method"] == rec["method"] and echo["path"] == rec["path"]
    # The upstream got the credentials; the log has them redacted.
    assert echo["headers"]["authorization"] == rec["headers"]["authorization"]
    assert line["request_headers"] == {"x-client": echo["headers"]["x-client"],
                                       "authorization": REDACTED,
                                       **({"content-type": rec["headers"]["content-type"]}
                                          if "content-type" in rec["headers"] else {})}
    want_type = "text/event-stream" if "x-echo-response-sse" in rec["headers"] \
        else "application/json"
    assert line["response_headers"] == {"content-type": want_type}
    if rec["sent"]:
        assert echo["body"] == rec["sent"].decode()
        check_body(line, "request_body", rec["sent"])
    else:
        assert not any(k.startswith("request_body") for k in line), line
    check_body(line, "response_body", rec["received"])


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("e2e-access-log")
    path = str(log_dir / "access.jsonl")
    env = {
        "EXTPROC_ACCESS_LOG_PATH": path,
        "EXTPROC_ACCESS_LOG_MAX_BYTES": "1MiB",
        "EXTPROC_ACCESS_LOG_KEEP": "20",
        "EXTPROC_ACCESS_LOG_HEADERS": "x-client,authorization,content-type",
        "EXTPROC_ACCESS_LOG_REDACT_FIELDS": "password",
        "EXTPROC_ACCESS_LOG_BODY_CAP": str(BODY_CAP),
    }
    with access_log_stack(log_dir, env, MODES) as (ports, procs):
        yield path, ports, procs


@pytest.mark.parametrize("mode", MODES)
def test_one_line_per_request(logged, mode):
    path, ports, _ = logged
    records = run_load(ports[mode], mode)
    failed = [r for r in records.values() if r["status"] != 200]
    assert not failed, f"{len(failed)} requests failed, e.g. {failed[0]['status']}"
    lines = lines_for(path, f"{mode}-", REQUESTS)
    assert len(lines) == REQUESTS
    by_id = {line["request_id"]: line for line in lines}
    assert set(by_id) == set(records)  # each request exactly once
    for rid, rec in records.items():
        check_line(by_id[rid], rec, ports[mode])


def test_credentials_never_logged_and_rotated(logged):
    path, _, procs = logged
    files = log_files(path)
    assert len(files) >= 2, files  # about 3 MiB of lines in files of at most 1 MiB
    assert all(os.path.getsize(f) <= 1 << 20 for f in files)
    text = b"".join(Path(f).read_bytes() for f in files)
    assert text.count(b"\n") == REQUESTS * len(MODES)
    assert b"pw-" not in text  # passwords only ever travel in JSON bodies, which are redacted
    # The authorization header is redacted; only an upstream that echoes it in a body that is
    # not JSON (the event streams) puts it back, which is the upstream's doing.
    for line in read_log(path):
        line.pop("response_body", None)
        assert "Bearer tok-" not in json.dumps(line), line
    runner_log = procs[1].log.read_text(errors="replace")
    assert "access-log:" not in runner_log, runner_log[-2000:]  # no drop, no write error


@contextlib.contextmanager
def full_disk(tmp_dir):
    """A 256 KiB tmpfs to log onto; where mounting is not allowed, /dev/full (every write
    fails with ENOSPC) stands in for it. Yields the log's path."""
    mount_point = Path(tmp_dir) / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs",
                              str(mount_point)], capture_output=True).returncode == 0
    try:
        yield str(mount_point / "access.jsonl") if mounted else "/dev/full"
    finally:
        if mounted:
            subprocess.run(["umount", str(mount_point)], check=True)


def test_full_disk_drops_lines_never_requests(tmp_path):
    with full_disk(tmp_path) as path:
        env = {"EXTPROC_ACCESS_LOG_PATH": path, "EXTPROC_ACCESS_LOG_MAX_BYTES": "0",
               "EXTPROC_ACCESS_LOG_BODY_CAP": str(BODY_CAP)}
        with access_log_stack(tmp_path, env, ["buffered"]) as (ports, procs):
            records = run_load(ports["buffered"], "full")
            assert all(r["status"] == 200 for r in records.values())
            for rec in records.values():
                upstream_view(rec["received"], rec["headers"])  # the echo's answer, whole
            # Drops are reported at most once a second, each report counting all so far:
            # written + dropped must come to one line per request.
            deadline = time.monotonic() + LOG_WAIT
            while True:
                written = len(read_log(path)) if path != "/dev/full" else 0
                reports = re.findall(r"lines dropped \((\d+) in all",
                                     procs[1].log.read_text(errors="replace"))
                dropped = int(reports[-1]) if reports else 0
                if written + dropped == REQUESTS or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert dropped > 0, procs[1].tail()
            assert written + dropped == REQUESTS, (written, dropped)


def test_client_gone_midstream_still_logged(logged):
    """A client that leaves in the middle of an event stream: Envoy ends the exchange before
    the response's end, and the line is still written, marked incomplete."""
    path, ports, _ = logged
    rid = f"gone-{uuid.uuid4().hex[:8]}"
    conn = http.client.HTTPConnection("127.0.0.1", ports["streamed"], timeout=10)
    conn.request("GET", "/events/gone", headers={"x-request-id": rid,
                                                 "x-echo-response-sse": "64"})
    reply = conn.getresponse()
    assert reply.status == 200
    assert reply.read1(100)  # the stream has begun: 63 more events would take 0.6 s
    conn.close()
    (line,) = lines_for(path, rid, 1)
    assert line["complete"] is False
    assert line["status"] == 200 and line["path"] == "/events/gone"
    # The first events only: the whole stream is longer.
    conn = http.client.HTTPConnection("127.0.0.1", ports["streamed"], timeout=10)
    conn.request("GET", "/events/gone", headers={"x-request-id": rid + "-whole",
                                                 "x-echo-response-sse": "64"})
    whole = conn.getresponse().read()
    conn.close()
    assert 0 < line["response_bytes"] < len(whole) - 200, (line["response_bytes"], len(whole))
