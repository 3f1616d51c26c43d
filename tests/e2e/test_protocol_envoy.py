"""ProtocolExtProcService (examples/protocol.c) behind a real Envoy, in every body mode.

One Envoy (tests/e2e/envoy_gen.py) has a listener per processing mode, all pointing at one
processor serving ProtocolExtProcService, in front of tools/echo_upstream.py. The processor is
driven by x-test-* request headers (see the header comment of examples/protocol.c) and reports
what it saw in x-test-* response headers; the echo upstream's JSON shows what reached it.

Every request carries its own x-request-id, which Envoy keeps and returns, so a test can find its
request in the processor's log and in the access logs. Requests that are meant to make the
processor log an error register their id in EXPECTED_ERRORS; the last test checks that nothing
else in the whole module made the processor log a WARN or ERROR line, and that Envoy counted no
spurious ext_proc message.
"""

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import envoy_gen
from conftest import (Stack, _base_ids, can_connect, envoy_binary, envoy_ready, free_ports,
                      start, start_echo, start_processor, wait_until)

MIB = 1024 * 1024
BODY_MODES = ["buffered", "partial", "streamed", "duplex"]  # listeners, see envoy_gen.LISTENERS
ALL_MODES = ["none", *BODY_MODES]
MODE_NAMES = {name: m["body"] for name, m in envoy_gen.LISTENERS.items()}
HEADER_OPS = "set:x-a=new;append:x-b=two;add:x-c=kept;add:x-new=added;remove:x-d"
REPORT_HEADERS = ("x-test-request-body", "x-test-request-chunks", "x-test-modes",
                  "x-test-attribute-path")
# Request ids whose exchange is meant to make the processor log a WARN or ERROR line.
EXPECTED_ERRORS = set()


# ---------------------------------------------------------------- the stack


@dataclass
class ProtocolStack(Stack):
    ports: dict = field(default_factory=dict)  # listener name -> port

    def proc(self, name):
        return next(p for p in self.procs if p.name == name)

    def access_log(self, listener):
        return self.log_dir / f"access-{listener}.log"


@contextlib.contextmanager
def protocol_stack(log_dir, processor_args=()):
    """Echo upstream, one runner serving ProtocolExtProcService over TCP, and Envoy configured by
    envoy_gen with a listener per mode; all stopped on exit (as conftest.running_stack does)."""
    names = list(envoy_gen.LISTENERS)
    admin_port, echo_port, *listen = free_ports(2 + len(names))
    s = ProtocolStack("tcp", listen[0], admin_port, echo_port, Path(log_dir),
                      ports=dict(zip(names, listen)))
    base_id = os.getpid() * 10 + next(_base_ids) % 10
    sock_dir = tempfile.mkdtemp(prefix="extproc-")
    try:
        s.procs.append(start_echo(log_dir, echo_port))
        processor, (address,) = start_processor(log_dir, "tcp", sock_dir, ["protocol"],
                                              extra_args=processor_args)
        s.procs.append(processor)
        config = Path(log_dir) / "envoy.yaml"
        config.write_text(envoy_gen.config(s.ports, admin_port, echo_port, address, log_dir))
        # Access log lines are flushed every 50 ms instead of Envoy's default 10 s.
        s.procs.append(start("envoy", [
            envoy_binary(), "-c", str(config), "--base-id", str(base_id),
            "--log-level", "warn", "--concurrency", "2", "--file-flush-interval-msec", "50"],
            log_dir))
        wait_until("envoy /ready and its listeners",
                   lambda: envoy_ready(admin_port) and
                   all(can_connect(("127.0.0.1", p)) for p in listen), s.procs)
        yield s
    finally:
        codes = {p.name: p.stop() for p in reversed(s.procs)}
        shutil.rmtree(sock_dir, ignore_errors=True)
        Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)
    if codes.get("processor", 0) != 0:
        pytest.fail(f"processor exited with {codes['processor']}\n" +
                    s.proc("processor").tail(80), pytrace=False)


@pytest.fixture(scope="module")
def proto(tmp_path_factory):
    with protocol_stack(tmp_path_factory.mktemp("e2e-protocol")) as s:
        yield s


# ---------------------------------------------------------------- HTTP helpers


@dataclass
class Reply:
    status: int
    headers: dict  # lower-cased names; a repeated header's values joined with ", "
    raw: bytes
    request_id: str
    elapsed: float

    @property
    def echo(self):
        """The echo upstream's JSON (fails the test with the reply if it is not)."""
        try:
            doc = json.loads(self.raw)
        except ValueError:
            pytest.fail(f"not the echo's JSON: status {self.status} {self.headers} "
                        f"{self.raw[:300]!r}")
        assert doc.get("message") == "echo", doc
        return doc


def joined(header_list):
    out = {}
    for name, value in header_list:
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def with_request_id(headers):
    headers = dict(headers or {})
    headers.setdefault("x-request-id", f"proto-{uuid.uuid4()}")
    return headers


def send(port, method, path, body=None, headers=None, timeout=10):
    """One request through Envoy; http.client sends content-length: 0 for a POST without body
    and no content-length for a GET without one."""
    headers = with_request_id(headers)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return Reply(resp.status, joined(resp.getheaders()), raw, headers["x-request-id"],
                     time.monotonic() - started)
    finally:
        conn.close()


def send_chunked(port, path, pieces, headers=None, pause=0.15, timeout=10, trailers=None):
    """A POST with chunked transfer coding, each piece its own chunk sent `pause` seconds after
    the previous one, so that Envoy forwards them as separate body messages, then the trailers
    (a dict) if given. If Envoy answers early and closes, the remaining pieces are not sent; the
    answer is still read."""
    headers = with_request_id(headers)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.putrequest("POST", path)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        try:
            for piece in pieces:
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                time.sleep(pause)
            conn.send(b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode()
                                             for k, v in (trailers or {}).items()) + b"\r\n")
        except OSError:
            pass  # answered (and closed) before the upload ended: read the answer below
        resp = conn.getresponse()
        raw = resp.read()
        return Reply(resp.status, joined(resp.getheaders()), raw, headers["x-request-id"],
                     time.monotonic() - started)
    finally:
        conn.close()


def undouble_pieces(data):
    """The original chunks of a body whose every chunk c became c.upper() + c (x-test-body:
    double, applied chunk by chunk), or None when data is not such a concatenation. A chunk of
    n bytes becomes 2n, so a chunk starting at offset p of the original starts at 2p of data."""
    dead = set()  # offsets of data from which no split works

    def walk(q):
        if q == len(data):
            return []
        if q in dead:
            return None
        for k in range((len(data) - q) // 2, 0, -1):  # one whole chunk first: the usual case
            piece = data[q + k:q + 2 * k]
            if data[q:q + 1] == piece[:1].upper() and data[q:q + k] == piece.upper():
                rest = walk(q + 2 * k)
                if rest is not None:
                    return [piece, *rest]
        dead.add(q)
        return None

    return walk(0)


def undouble(data):
    pieces = undouble_pieces(data)
    return None if pieces is None else b"".join(pieces)


def stat(s, name):
    conn = http.client.HTTPConnection("127.0.0.1", s.admin_port, timeout=5)
    try:
        conn.request("GET", f"/stats?filter=^{re.escape(name)}$")
        text = conn.getresponse().read().decode().strip()
    finally:
        conn.close()
    return int(text.split(":")[1]) if text else 0


def stats(s, substring):
    """{name: value} of every counter or gauge whose name contains substring."""
    conn = http.client.HTTPConnection("127.0.0.1", s.admin_port, timeout=5)
    try:
        conn.request("GET", f"/stats?filter={re.escape(substring)}")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return {name: int(value) for name, value in
            (line.split(": ", 1) for line in text.splitlines()) if value.strip().isdigit()}


def log_lines_for(s, request_id, timeout=5.0, want=lambda lines: lines):
    """The processor's log lines naming request_id, waiting up to timeout for want(lines)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in s.proc("processor").log.read_text(errors="replace").splitlines()
                 if f"request_id={request_id}" in line]
        if want(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def assert_reported(reply, mode, body_kind, chunks=None):
    """The processor's x-test-* report on the client's response (None: not checked)."""
    h = reply.headers
    assert h.get("x-test-modes") == f"{MODE_NAMES[mode]},{MODE_NAMES[mode]}", h
    if body_kind is not None:
        assert h.get("x-test-request-body") == body_kind, h
    if chunks is not None:
        assert h.get("x-test-request-chunks") == str(chunks), h


# ---------------------------------------------------------------- 1. header operations


@pytest.mark.parametrize("mode", ALL_MODES)
def test_header_ops_on_the_request(proto, mode):
    r = send(proto.ports[mode], "POST", "/headers", body=b"hi", headers={
        "x-test-header-op": HEADER_OPS,
        "x-a": "old", "x-b": "one", "x-c": "original", "x-d": "gone"})
    assert r.status == 200, (r, proto.logs())
    up = r.echo["headers"]
    assert up["x-a"] == "new"             # set replaced the value
    assert up["x-b"] == "one, two"        # append kept both
    assert up["x-c"] == "original"        # add-if-absent left it alone
    assert up["x-new"] == "added"         # add-if-absent added it
    assert "x-d" not in up                # removed
    assert r.echo["body"] == "hi"
    # Body mode NONE: the processor never sees the body, so it cannot report its size.
    assert_reported(r, mode, "2" if mode != "none" else None)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_header_ops_on_the_response(proto, mode):
    # The echo answers with these headers (x-echo-response-headers); the processor edits them.
    r = send(proto.ports[mode], "GET", "/headers", headers={
        "x-echo-response-headers": "x-a=old;x-b=one;x-c=original;x-d=gone",
        "x-test-response-header-op": HEADER_OPS})
    assert r.status == 200, (r, proto.logs())
    h = r.headers
    assert h["x-a"] == "new"
    assert h["x-b"] == "one, two"
    assert h["x-c"] == "original"
    assert h["x-new"] == "added"
    assert "x-d" not in h
    # The request side was left alone: the echo saw none of the edits.
    assert not {"x-a", "x-b", "x-new"} & set(r.echo["headers"])
    assert_reported(r, mode, "none", chunks=0)


# ---------------------------------------------------------------- 2. body replacement


def check_length(headers, body, must_have):
    """content-length, if any, is the body's; must_have: whether it has to be there."""
    if must_have:
        assert headers.get("content-length") == str(len(body)), headers
    elif "content-length" in headers:
        assert headers["content-length"] == str(len(body)), headers


@pytest.mark.parametrize("response_chunks", [0, 3], ids=["upstream-length", "upstream-chunked"])
@pytest.mark.parametrize("mode", BODY_MODES)
def test_body_doubled_both_ways(proto, mode, response_chunks):
    sent = b"hello, world"
    headers = {"x-test-body": "double"}
    if response_chunks:
        headers["x-echo-response-chunks"] = str(response_chunks)
    r = send(proto.ports[mode], "POST", "/double", body=sent, headers=headers)
    assert r.status == 200, (r, proto.logs())

    # The client's body: every chunk of the echo's JSON doubled; its original half is the JSON.
    pieces = undouble_pieces(r.raw)
    assert pieces is not None, r.raw[:400]
    echoed = json.loads(b"".join(pieces))
    assert echoed["message"] == "echo"
    if mode in ("buffered", "partial"):
        assert len(pieces) == 1  # the whole response body at once
    elif response_chunks:
        assert len(pieces) > 1, r.raw  # the echo's chunks, each doubled as it came
    # BUFFERED keeps the upstream's content-length, which must then be the new length.
    check_length(r.headers, r.raw, must_have=(mode == "buffered" and not response_chunks))

    # What the upstream got: the request body doubled, chunk by chunk, and no stale length.
    up_body = echoed["body"].encode()
    assert undouble(up_body) == sent, up_body
    if r.headers["x-test-request-chunks"] == "1":
        assert up_body == b"HELLO, WORLDhello, world"
    up = echoed["headers"]
    if mode == "buffered":
        assert up.get("content-length") == str(2 * len(sent)), up
    else:  # Envoy drops content-length in these modes and sends the body chunked
        assert "content-length" not in up and up.get("transfer-encoding") == "chunked", up
    assert_reported(r, mode, str(len(sent)))


@pytest.mark.parametrize("mode", BODY_MODES)
def test_body_uppercased_both_ways(proto, mode):
    r = send(proto.ports[mode], "POST", "/upper", body=b"make me loud",
             headers={"x-test-body": "upper"})
    assert r.status == 200, (r, proto.logs())
    assert r.raw == r.raw.upper()
    echoed = json.loads(r.raw)  # the JSON with its keys and values uppercased
    assert echoed["MESSAGE"] == "ECHO" and echoed["BODY"] == "MAKE ME LOUD", echoed
    check_length(r.headers, r.raw, must_have=(mode == "buffered"))
    up = {k.lower(): v for k, v in echoed["HEADERS"].items()}
    check_length(up, b"MAKE ME LOUD", must_have=(mode == "buffered"))
    assert_reported(r, mode, "12")


@pytest.mark.parametrize("mode", BODY_MODES)
def test_body_replaced_at_request_headers(proto, mode):
    # CONTINUE_AND_REPLACE at request_headers: the upstream gets the processor's body instead,
    # and Envoy sends no more of the request to the processor. The body goes in the same write
    # as the headers, and 20 times: in FULL_DUPLEX_STREAMED Envoy sends body messages without
    # waiting for the headers' answer, so some are already on their way when the answer comes
    # and must then go unanswered (Envoy would count a reply as spurious and answer 500).
    spurious = f"http.{mode}.ext_proc.{mode}.spurious_msgs_received"
    before = stat(proto, spurious)
    failures = []
    for _ in range(20):
        r = send(proto.ports[mode], "POST", "/replace", body=b"the client's own body",
                 headers={"x-test-body": "replace"})
        if r.status != 200:
            failures.append((r.status, r.request_id))
            continue
        echoed = r.echo
        assert echoed["body"] == "replaced by the processor"
        check_length(echoed["headers"], b"replaced by the processor", must_have=False)
        check_length(r.headers, r.raw, must_have=False)
    assert (failures, stat(proto, spurious) - before) == ([], 0), proto.proc("envoy").tail(10)


# ---------------------------------------------------------------- 3. no body vs an empty body


@pytest.mark.parametrize("mode", ALL_MODES)
def test_no_body_versus_empty_body(proto, mode):
    get = send(proto.ports[mode], "GET", "/nobody")
    post = send(proto.ports[mode], "POST", "/empty")  # content-length: 0
    assert get.status == post.status == 200, (get, post, proto.logs())
    assert get.echo["body"] == post.echo["body"] == ""
    assert_reported(get, mode, "none", chunks=0)
    assert_reported(post, mode, "empty")
    assert post.echo["headers"].get("content-length") in ("0", None)


# ---------------------------------------------------------------- 4. chunked uploads


PIECES = [b"first piece, ", b"second piece, ", b"third piece, ", b"the last one"]


@pytest.mark.parametrize("mode", BODY_MODES)
def test_chunked_upload_uppercased(proto, mode):
    r = send_chunked(proto.ports[mode], "/chunked", PIECES, headers={"x-test-body": "upper"})
    assert r.status == 200, (r, proto.logs())
    whole = b"".join(PIECES)
    echoed = json.loads(r.raw)
    assert echoed["BODY"] == whole.upper().decode()
    assert r.headers["x-test-request-body"] == str(len(whole))
    chunks = int(r.headers["x-test-request-chunks"])
    if mode in ("buffered", "partial"):
        assert chunks == 1  # buffered whole
    else:
        # Streamed as sent: at least one message per piece; Envoy's end of the body may come
        # as one more, empty, message with end_of_stream.
        assert chunks >= len(PIECES), r.headers
    assert r.elapsed < len(PIECES) * 0.15 + 3, r.elapsed


@pytest.mark.parametrize("mode", ["streamed", "duplex"])
def test_chunked_upload_doubled_chunk_by_chunk(proto, mode):
    r = send_chunked(proto.ports[mode], "/chunked", PIECES,
                     headers={"x-test-body": "double", "x-echo-response-chunks": "4"})
    assert r.status == 200, (r, proto.logs())
    original = undouble(r.raw)
    assert original is not None, r.raw
    echoed = json.loads(original)
    up_body = echoed["body"].encode()
    # Each piece arrived (and was doubled) on its own.
    assert up_body == b"".join(p.upper() + p for p in PIECES), up_body
    assert "content-length" not in echoed["headers"]


def test_duplex_bodyless_request_completes(proto):
    r = send(proto.ports["duplex"], "GET", "/duplex-get", headers={"x-test-body": "upper"})
    assert r.status == 200, (r, proto.logs())
    assert json.loads(r.raw)["MESSAGE"] == "ECHO"
    assert_reported(r, "duplex", "none", chunks=0)
    assert r.elapsed < 3, r.elapsed


# ---------------------------------------------------------------- 5. trailers SEND, none sent


@pytest.mark.parametrize("how", ["get", "post", "chunked"])
@pytest.mark.parametrize("mode", ["trailers_none", "trailers_buffered", "trailers_streamed",
                                  "duplex"])
def test_trailer_mode_send_without_trailers_does_not_wait(proto, mode, how):
    port = proto.ports[mode]
    if how == "get":
        r = send(port, "GET", "/no-trailers")
    elif how == "post":
        r = send(port, "POST", "/no-trailers", body=b"some body")
    else:
        r = send_chunked(port, "/no-trailers", [b"some ", b"body"], pause=0.05)
    assert r.status == 200, (r, proto.logs())
    assert r.echo["body"] == ("" if how == "get" else "some body")
    # Nothing waited for trailers (message_timeout is 2 s; a wait would show as a 500 or hang).
    assert r.elapsed < 1.5, r.elapsed
    assert "x-test-modes" in r.headers


@pytest.mark.parametrize("mode", ["trailers_buffered", "trailers_streamed", "duplex"])
def test_client_trailers_with_trailer_mode_send(proto, mode):
    # The body's end comes with the trailers, not with a last body chunk.
    r = send_chunked(proto.ports[mode], "/trailers", PIECES[:2], pause=0.05,
                     headers={"x-test-body": "upper"}, trailers={"x-client-trailer": "t"})
    assert r.status == 200, (r, proto.logs())
    echoed = json.loads(r.raw)  # uppercased by the response body's transformation
    assert echoed["BODY"] == b"".join(PIECES[:2]).upper().decode()
    # The processor saw the trailers and its mutation of them reached the upstream.
    assert echoed.get("TRAILERS") == {"X-CLIENT-TRAILER": "T", "X-TEST-TRAILER-SEEN": "YES"}, \
        echoed
    assert r.elapsed < 1.5, r.elapsed


# ---------------------------------------------------------------- 6. immediate responses


def assert_denied(r, phase):
    assert r.status == 403, (r, phase)
    assert r.raw == f"denied at {phase}".encode(), r
    assert r.headers.get("content-type") == "text/plain", r.headers
    assert "x-test-modes" not in r.headers  # the processor's answer, not the echo's


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("phase", ["request_headers", "response_headers"])
def test_immediate_response_at_headers(proto, mode, phase):
    r = send(proto.ports[mode], "POST", "/deny", body=b"abc", headers={"x-test-immediate": phase})
    assert_denied(r, phase)


@pytest.mark.parametrize("mode", ["buffered", "partial"])
def test_immediate_response_at_buffered_request_body(proto, mode):
    r = send(proto.ports[mode], "POST", "/deny", body=b"abc",
             headers={"x-test-immediate": "request_body"})
    assert_denied(r, "request_body")


@pytest.mark.parametrize("mode", ["streamed", "duplex"])
def test_immediate_response_at_third_streamed_request_chunk(proto, mode):
    before = stat(proto, "cluster.upstream.upstream_rq_completed")
    r = send_chunked(proto.ports[mode], "/deny", PIECES, pause=0.2,
                     headers={"x-test-immediate": "request_body:3"})
    assert_denied(r, "request_body")
    assert r.elapsed >= 2 * 0.2, r.elapsed  # not before the third piece was sent
    # The upstream never answered this one: it was reset before the body ended.
    assert stat(proto, "cluster.upstream.upstream_rq_completed") == before


@pytest.mark.parametrize("mode", ["buffered", "partial"])
def test_immediate_response_at_buffered_response_body(proto, mode):
    r = send(proto.ports[mode], "POST", "/deny", body=b"abc",
             headers={"x-test-immediate": "response_body"})
    assert_denied(r, "response_body")


@pytest.mark.parametrize("mode", ["streamed", "duplex"])
def test_immediate_response_after_streamed_response_headers_went_out(proto, mode):
    """What Envoy 1.40 does (not the SDK): in STREAMED and FULL_DUPLEX_STREAMED the response
    headers go to the client as soon as the processor answers them, so an immediate response at
    the first chunk of a body that is still coming (the echo sends 3 chunks 50 ms apart) can
    no longer be sent: Envoy resets the stream, and the client sees the 200's headers and then
    the connection closing before any body. (With the whole body in the first read, Envoy holds
    the headers for the body's answer and the client gets the 403: see the BUFFERED test.)"""
    headers = with_request_id({"x-test-immediate": "response_body",
                               "x-echo-response-chunks": "3"})
    conn = http.client.HTTPConnection("127.0.0.1", proto.ports[mode], timeout=10)
    try:
        conn.request("POST", "/deny-late", body=b"abc", headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("x-test-modes") == f"{MODE_NAMES[mode]},{MODE_NAMES[mode]}"
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------- 7. large bodies


def test_5_mib_body_arrives_whole_in_buffered_mode(proto):
    body = b"x" * (5 * MIB)
    r = send(proto.ports["buffered"], "POST", "/big", body=body, timeout=30)
    assert r.status == 200, (r.status, r.headers, r.raw[:200], proto.logs())
    assert r.headers["x-test-request-body"] == str(5 * MIB)
    assert r.headers["x-test-request-chunks"] == "1"
    assert len(r.echo["body"]) == 5 * MIB


def post_and_read_while_sending(port, size, timeout=30):
    """POSTs size bytes from a thread while the answer is read; Envoy may answer before the
    body is all sent. Returns (status, body) of the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = (f"POST /too-big HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n"
            f"x-request-id: proto-{uuid.uuid4()}\r\n\r\n").encode()

    def upload():
        try:
            sock.sendall(head)
            block = b"y" * 65536
            for _ in range(size // len(block)):
                sock.sendall(block)
        except OSError:
            pass  # Envoy answered and closed

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    try:
        resp = http.client.HTTPResponse(sock, method="POST")
        resp.begin()
        return resp.status, resp.read()
    finally:
        sock.close()
        sender.join(timeout)


def test_default_buffer_limit_is_1_mib(proto):
    # The same BUFFERED mode on a listener with Envoy's default limit: 2 MiB is too much there,
    # so the raised limit is what lets the 5 MiB body through.
    status, body = post_and_read_while_sending(proto.ports["trailers_buffered"], 2 * MIB)
    assert status == 413, (status, body[:200])


def test_body_over_the_buffer_limit_gets_413_and_the_processor_goes_on(proto):
    status, body = post_and_read_while_sending(proto.ports["buffered"], 9 * MIB)
    assert status == 413, (status, body[:200])
    r = send(proto.ports["buffered"], "POST", "/after-413", body=b"still here")
    assert r.status == 200, (r, proto.logs())
    assert r.echo["body"] == "still here"
    assert_reported(r, "buffered", "10", chunks=1)


# ---------------------------------------------------------------- 8. failing callback


def test_failed_callback_with_failure_mode_allow_false_is_a_500(proto):
    r = send(proto.ports["buffered"], "GET", "/fail", headers={"x-test-fail": "request_headers"})
    EXPECTED_ERRORS.add(r.request_id)
    assert r.status == 500, r
    assert r.headers.get("x-request-id") == r.request_id
    assert not set(REPORT_HEADERS) & set(r.headers)
    check_one_error_line(proto, r.request_id)


def test_failed_callback_with_failure_mode_allow_true_goes_through(proto):
    r = send(proto.ports["allow"], "GET", "/fail", headers={"x-test-fail": "request_headers"})
    EXPECTED_ERRORS.add(r.request_id)
    assert r.status == 200, r
    assert r.echo["path"] == "/fail"  # the upstream answered, unprocessed
    assert not [h for h in r.headers if h.startswith("x-test-")], r.headers
    check_one_error_line(proto, r.request_id)


def check_one_error_line(s, request_id):
    lines = log_lines_for(s, request_id, want=lambda ls: any(" ERROR " in l for l in ls))
    errors = [l for l in lines if " ERROR " in l]
    assert len(errors) == 1, (lines, s.proc("processor").tail())
    assert "processor=ProtocolExtProcService" in errors[0]
    assert "phase=request_headers" in errors[0]
    assert not [l for l in lines if " WARN " in l], lines


# ---------------------------------------------------------------- 9. dynamic metadata


def access_log_line(s, listener, request_id, timeout=5.0):
    path = s.access_log(listener)
    deadline = time.monotonic() + timeout
    while True:
        if path.exists():
            found = [l for l in path.read_text().splitlines() if l.startswith(f"rid={request_id} ")]
            if found:
                assert len(found) == 1, found
                return found[0]
        assert time.monotonic() < deadline, f"no access log line for {request_id} in {path}"
        time.sleep(0.05)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_dynamic_metadata_reaches_the_access_log(proto, mode):
    r = send(proto.ports[mode], "POST", "/metadata", body=b"m",
             headers={"x-test-metadata": "hello"})
    assert r.status == 200, (r, proto.logs())
    line = access_log_line(proto, mode, r.request_id)
    m = re.fullmatch(r"rid=\S+ status=200 value=(\S+) nested=(.+) list=(.+)", line)
    assert m, line
    assert m.group(1) == "hello"
    assert json.loads(m.group(2)) == {"answer": 42, "ok": True}
    assert json.loads(m.group(3)) == [1, "two"]


def test_no_metadata_when_not_asked(proto):
    r = send(proto.ports["buffered"], "GET", "/no-metadata")
    assert r.status == 200
    line = access_log_line(proto, "buffered", r.request_id)
    assert line.endswith("value=- nested=- list=-"), line


# ---------------------------------------------------------------- 10. attributes


@pytest.mark.parametrize("mode", ALL_MODES)
def test_request_path_attribute(proto, mode):
    path = "/attributes/some/where?q=1&r=two"
    r = send(proto.ports[mode], "GET", path)
    assert r.status == 200, (r, proto.logs())
    assert r.headers.get("x-test-attribute-path") == path, r.headers


# ---------------------------------------------------------------- 11. streamed immediate response


@pytest.mark.parametrize("method,body", [("GET", None), ("POST", b"abc")])
@pytest.mark.parametrize("mode", ["none", "duplex"])
def test_streamed_immediate_response(proto, mode, method, body):
    # Envoy 1.40 takes a streamed immediate response with request body mode NONE or
    # FULL_DUPLEX_STREAMED (in BUFFERED and STREAMED it counts it as spurious and answers 500,
    # as the SDK's documentation of extproc_streamed_immediate_response warns).
    before = stat(proto, "cluster.upstream.upstream_rq_total")
    r = send(proto.ports[mode], method, "/streamed", body=body,
             headers={"x-test-streamed-immediate": "hello-world"})
    assert (r.status, r.headers.get("x-streamed"), r.raw) == (200, "yes", b"hello-world"), \
        (r, proto.proc("envoy").tail(10))
    assert "x-test-modes" not in r.headers  # response_headers never came: no upstream answer
    started = stat(proto, "cluster.upstream.upstream_rq_total") - before
    # In FULL_DUPLEX_STREAMED Envoy 1.40 may already have passed the request headers upstream
    # when the processor's answer comes (then it drops that request); in NONE it never does.
    assert started == 0 if mode == "none" else started in (0, 1), started


# ---------------------------------------------------------------- 12. a clean log, no spurious


def test_normal_requests_log_no_warning(proto):
    log = proto.proc("processor").log
    start_at = len(log.read_bytes())
    for mode in ALL_MODES:
        port = proto.ports[mode]
        for _ in range(5):
            assert send(port, "GET", "/quiet").status == 200
            assert send(port, "POST", "/quiet", body=b"abc", headers={"x-test-body": "upper"}) \
                .status == 200
    assert send_chunked(proto.ports["duplex"], "/quiet", PIECES, pause=0.02).status == 200
    time.sleep(0.3)  # ends of exchanges (resets) arrive after the answers
    new = log.read_bytes()[start_at:].decode(errors="replace").splitlines()
    assert not [l for l in new if " WARN " in l or " ERROR " in l], new[-20:]


# ---------------------------------------------------------------- mode_override and timeouts


def test_mode_override_asks_for_the_response_body(proto):
    port = proto.ports["override"]
    plain = send(port, "GET", "/override", headers={"x-test-body": "upper"})
    assert plain.status == 200
    assert json.loads(plain.raw)["message"] == "echo"  # bodies are NONE: left alone
    r = send(port, "GET", "/override", headers={"x-test-body": "upper",
                                                "x-test-mode-override": "BUFFERED"})
    assert r.status == 200, r.raw
    doc = json.loads(r.raw.lower())  # the processor uppercased the whole response body
    assert r.raw == r.raw.upper() and doc["message"] == "echo"


@pytest.mark.parametrize("slow_ms", [600])
def test_override_message_timeout_gives_slow_work_time(proto, slow_ms):
    # message_timeout is 0.3 s on this listener: the slow answer only makes it thanks to the
    # override (up to max_message_timeout 10 s), while the loop keeps serving others.
    r = send(proto.ports["override"], "GET", "/slow", headers={"x-test-slow": str(slow_ms)})
    assert r.status == 200, (r.status, r.raw)
    assert r.echo["headers"]["x-test-slow-done"] == "yes"
    assert r.elapsed >= slow_ms / 1000
    assert stat(proto, "http.override.ext_proc.override.override_message_timeout_received") >= 1


# ---------------------------------------------------------------- allowed_override_modes


# Listeners whose filter refuses an override to STREAMED (see envoy_gen.LISTENERS): its
# allowed_override_modes lacks it, lists it written differently (header and trailer modes DEFAULT
# in the entries, or in the filter's own mode), or allow_mode_override is off altogether.
REFUSING = ["allowed_lacks", "allowed_differs", "allowed_differs_static", "buffered"]
# Which body modes an x-test-* header asks to override to STREAMED (the other stays as it is).
DIRECTIONS = {
    "request": {"x-test-request-mode-override": "STREAMED"},
    "response": {"x-test-mode-override": "STREAMED"},
    "both": {"x-test-request-mode-override": "STREAMED", "x-test-mode-override": "STREAMED"},
}
SENT = b"a body the processor doubles"


def send_late_body(port, path, body, headers=None, pause=0.4, timeout=10):
    """A POST with a content-length whose body follows the headers `pause` seconds later, so
    that Envoy has the processor's answer to the request headers before the body arrives."""
    headers = with_request_id(headers)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.putrequest("POST", path)
        for name, value in {**headers, "content-length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders()
        time.sleep(pause)
        conn.send(body)
        resp = conn.getresponse()
        raw = resp.read()
        return Reply(resp.status, joined(resp.getheaders()), raw, headers["x-request-id"],
                     time.monotonic() - started)
    finally:
        conn.close()


def check_doubled_exchange(r, sent):
    """The client got the echo's answer doubled by the processor with a content-length, if any,
    that is its length; the upstream got `sent` doubled with a length that is true too. Returns
    the echo's JSON."""
    assert r.status == 200, (r.status, r.headers, r.raw[:300])
    check_length(r.headers, r.raw, must_have="transfer-encoding" not in r.headers)
    original = undouble(r.raw)
    assert original is not None, r.raw[:400]
    echoed = json.loads(original)
    assert echoed["message"] == "echo", echoed
    up_body = echoed["body"].encode()
    assert undouble(up_body) == sent, up_body
    up = echoed["headers"]
    check_length(up, up_body, must_have="transfer-encoding" not in up)
    return echoed


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("listener", REFUSING)
def test_refused_override_body_change_keeps_content_length_true(proto, listener, direction):
    # Envoy stays BUFFERED, keeps content-length and answers 500 if it no longer matches the
    # changed body, whatever mode the processor asked for.
    r = send(proto.ports[listener], "POST", "/refused", body=SENT,
             headers={"x-test-body": "double", **DIRECTIONS[direction]})
    echoed = check_doubled_exchange(r, SENT)
    # Still BUFFERED both ways: the whole body in one message, and the client's answer with the
    # new content-length (in STREAMED Envoy would have dropped it and sent the body chunked).
    assert r.headers["x-test-request-chunks"] == "1", r.headers
    assert r.headers.get("content-length") == str(len(r.raw)), r.headers
    assert "transfer-encoding" not in r.headers, r.headers
    assert echoed["body"].encode() == SENT.upper() + SENT
    assert_reported(r, listener, str(len(SENT)))


@pytest.mark.parametrize("listener", REFUSING)
def test_refused_request_override_with_a_chunked_upload(proto, listener):
    r = send_chunked(proto.ports[listener], "/refused", PIECES,
                     headers={"x-test-body": "double", **DIRECTIONS["both"]})
    echoed = check_doubled_exchange(r, b"".join(PIECES))
    assert r.headers["x-test-request-chunks"] == "1", r.headers  # refused: buffered whole
    assert echoed["body"].encode() == b"".join(PIECES).upper() + b"".join(PIECES)


@pytest.mark.parametrize("listener", REFUSING)
def test_refused_request_override_with_a_late_body(proto, listener):
    r = send_late_body(proto.ports[listener], "/refused-late", SENT,
                       headers={"x-test-body": "double", **DIRECTIONS["request"]})
    echoed = check_doubled_exchange(r, SENT)
    assert r.headers["x-test-request-chunks"] == "1", r.headers
    assert echoed["body"].encode() == SENT.upper() + SENT


@pytest.mark.parametrize("response_chunks", [0, 3], ids=["upstream-length", "upstream-chunked"])
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_granted_override_body_change_keeps_content_length_true(proto, direction,
                                                                response_chunks):
    # allowed_override_modes lists these modes as the filter's mode is written: granted.
    headers = {"x-test-body": "double", **DIRECTIONS[direction]}
    if response_chunks:
        headers["x-echo-response-chunks"] = str(response_chunks)
    r = send(proto.ports["allowed_has"], "POST", "/granted", body=SENT, headers=headers)
    check_doubled_exchange(r, SENT)
    if direction != "request":
        # The response is STREAMED: Envoy dropped content-length, the client's body is chunked,
        # each echo chunk doubled as it came.
        assert "content-length" not in r.headers and r.headers["transfer-encoding"] == "chunked"
        if response_chunks:
            assert len(undouble_pieces(r.raw)) > 1, r.raw[:300]
    elif not response_chunks:  # BUFFERED response: the echo's length, made the new one
        assert r.headers.get("content-length") == str(len(r.raw)), r.headers
    assert_reported(r, "allowed_has", str(len(SENT)))


@pytest.mark.parametrize("direction", ["request", "both"])
def test_granted_request_override_streams_a_chunked_upload(proto, direction):
    r = send_chunked(proto.ports["allowed_has"], "/granted", PIECES,
                     headers={"x-test-body": "double", **DIRECTIONS[direction]})
    check_doubled_exchange(r, b"".join(PIECES))
    assert int(r.headers["x-test-request-chunks"]) >= len(PIECES), r.headers  # granted


@pytest.mark.parametrize("direction", ["request", "both"])
def test_granted_request_override_with_a_late_body(proto, direction):
    # Envoy kept the request's content-length (it decides when it sends the headers, with the
    # filter's BUFFERED), then streams the late body; the SDK removed the header in its answer,
    # so the upstream reads the changed body by chunked coding, not a stale length. Twice, so a
    # wrong length would also show as leftover bytes in the next request on the connection.
    for _ in range(2):
        r = send_late_body(proto.ports["allowed_has"], "/granted-late", SENT,
                           headers={"x-test-body": "double", **DIRECTIONS[direction]})
        echoed = check_doubled_exchange(r, SENT)
        assert echoed["method"] == "POST" and echoed["path"] == "/granted-late", echoed
        assert int(r.headers["x-test-request-chunks"]) >= 2, r.headers  # streamed, not buffered
        up = echoed["headers"]
        assert "content-length" not in up and up["transfer-encoding"] == "chunked", up


def test_override_header_modes_written_out_match_the_entries(proto):
    # With its header modes written SEND, the override still matches allowed_has's entries
    # (trailer modes DEFAULT take the filter's SKIP), but not allowed_differs_static's, whose
    # filter leaves the trailer modes DEFAULT while the entries say SKIP.
    headers = {"x-test-body": "double", "x-test-override-header-mode": "SEND",
               **DIRECTIONS["response"]}
    granted = send(proto.ports["allowed_has"], "POST", "/written", body=SENT, headers=headers)
    check_doubled_exchange(granted, SENT)
    assert granted.headers.get("transfer-encoding") == "chunked", granted.headers
    refused = send(proto.ports["allowed_differs_static"], "POST", "/written", body=SENT,
                   headers=headers)
    check_doubled_exchange(refused, SENT)
    assert refused.headers.get("content-length") == str(len(refused.raw)), refused.headers


@pytest.mark.parametrize("direction", ["request", "response", "both"])
def test_override_from_streamed_to_buffered(proto, direction):
    # The other way: a STREAMED filter (Envoy drops content-length) whose processor asks for
    # BUFFERED, granted. The client's answer, when buffered, gets the new content-length.
    ask = {"request": {"x-test-request-mode-override": "BUFFERED"},
           "response": {"x-test-mode-override": "BUFFERED"},
           "both": {"x-test-request-mode-override": "BUFFERED",
                    "x-test-mode-override": "BUFFERED"}}[direction]
    r = send(proto.ports["streamed_to_buffered"], "POST", "/to-buffered", body=SENT,
             headers={"x-test-body": "double", **ask})
    echoed = check_doubled_exchange(r, SENT)
    # The processor saw the request's content-length; Envoy, STREAMED when it sent the request
    # headers, dropped it afterwards, override or not: the upstream got the body chunked.
    assert r.headers["x-test-saw-content-length"].split(",")[0] == str(len(SENT)), r.headers
    assert "content-length" not in echoed["headers"], echoed["headers"]
    if direction != "request":
        assert r.headers.get("content-length") == str(len(r.raw)), r.headers
        assert len(undouble_pieces(r.raw)) == 1  # buffered whole


# ---------------------------------------------------------------- last


def test_zz_whole_module_no_unexpected_warning_and_no_spurious_message(proto):
    """Runs last: across every test above, the processor logged WARN or ERROR only for the
    requests meant to fail, and Envoy counted no spurious ext_proc message on any listener."""
    time.sleep(0.3)
    lines = proto.proc("processor").log.read_text(errors="replace").splitlines()
    unexpected = [l for l in lines if (" WARN " in l or " ERROR " in l)
                  and not any(f"request_id={rid}" in l for rid in EXPECTED_ERRORS)]
    assert not unexpected, unexpected[:20]
    spurious = stats(proto, "spurious_msgs_received")
    # Every listener's counter is listed (so a renamed stat cannot make this pass vacuously)...
    assert set(spurious) == {f"http.{n}.ext_proc.{n}.spurious_msgs_received"
                             for n in envoy_gen.LISTENERS}, spurious
    # ...and none counted anything.
    assert not {k: v for k, v in spurious.items() if v}, spurious
