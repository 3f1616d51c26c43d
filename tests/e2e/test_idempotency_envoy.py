"""IdempotencyExtProcService (processors/idempotency/) behind a real Envoy, with a real Redis.

The stack: a redis-server started here (loopback port, no persistence), the example runner
serving the idempotency processor with two workers (two loops, so two Redis connections), Envoy
with the processor's filter (request and response headers SEND, bodies BUFFERED), and a
counting upstream in this process: it counts the requests it gets per key, answers 201 with a
body naming its serial number (so a second upstream call for a key would show as another
body), and takes 100 ms (so repeats of a key overlap the first). A path starting with /fail
answers 503.

The Redis policy is 503 (the default): with Redis stopped, or stopped in its tracks (SIGSTOP),
a keyed write gets 503 within the Redis timeout, and after Redis is back the processor serves
again on its own. Time: about 5-7 s, normal and under ASan or TSan, on 2 cores.
"""

import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import (_base_ids, can_connect, envoy_binary, envoy_ready, environment, free_ports,
                      start, start_processor, wait_until)

KEYS, REPEATS, CONCURRENCY = 200, 5, 64
UPSTREAM_DELAY = 0.1  # seconds the upstream takes, so that repeats arrive while in flight
REDIS_TIMEOUT_MS = 500  # the processor's Redis deadline; Envoy's message_timeout is 5 s
RECOVERY_TIMEOUT = 15.0  # seconds for the processor to use a restarted Redis again


# ---------------------------------------------------------------- the counting upstream


class Upstream:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = Counter()  # idempotency-key (or x-test-id) -> requests seen
        self.serial = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                key = self.headers.get("idempotency-key") or self.headers.get("x-test-id", "")
                with upstream.lock:
                    upstream.counts[key] += 1
                    upstream.serial += 1
                    serial = upstream.serial
                time.sleep(UPSTREAM_DELAY)
                status = 503 if self.path.startswith("/fail") else 201
                out = json.dumps({"serial": serial, "key": key, "method": self.command,
                                  "path": self.path, "body": body.decode()}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("location", f"/orders/{serial}")
                self.send_header("x-upstream-only", "not replayed")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_POST = do_PATCH = do_GET = do_PUT = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, key):
        with self.lock:
            return self.counts[key]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- Redis


class Redis:
    """A redis-server on a loopback port, without persistence; stop() and start() again."""

    def __init__(self, log_dir, port):
        self.log_dir, self.port, self.proc = log_dir, port, None
        self.dir = tempfile.mkdtemp(prefix="extproc-redis-")

    def start(self):
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = start("redis", [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--dir", self.dir,
                                    "--daemonize", "no"], self.log_dir)
        wait_until("redis-server", lambda: can_connect(("127.0.0.1", self.port)), [self.proc])

    def stop(self):
        if self.proc:
            if self.proc.popen.poll() is None:
                self.proc.popen.send_signal(signal.SIGCONT)  # in case a test paused it
            self.proc.stop()
            self.proc = None

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------- Envoy


def envoy_config(listen_port, admin_port, upstream_port, processor_port):
    types = "type.googleapis.com/envoy.extensions."
    h2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": types + "upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}}}}

    def cluster(name, port, extra=None):
        return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                **(extra or {}),
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": port}}}}]}]}}

    ext_proc = {
        "@type": types + "filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "idempotency"}},
        "failure_mode_allow": False,
        # Above two Redis deadlines, with room for the sanitizer builds.
        "message_timeout": "5s",
        "processing_mode": {
            "request_header_mode": "SEND", "response_header_mode": "SEND",
            "request_body_mode": "BUFFERED", "response_body_mode": "BUFFERED",
            "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"},
    }
    return json.dumps({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                 "port_value": admin_port}}},
        "static_resources": {
            "listeners": [{
                "name": "main",
                "address": {"socket_address": {"address": "127.0.0.1",
                                               "port_value": listen_port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": types + "filters.network.http_connection_manager.v3."
                                         "HttpConnectionManager",
                        "stat_prefix": "main",
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "route": {"cluster": "upstream", "timeout": "20s"}}]}]},
                        "http_filters": [
                            {"name": "envoy.filters.http.ext_proc", "typed_config": ext_proc},
                            {"name": "envoy.filters.http.router", "typed_config": {
                                "@type": types + "filters.http.router.v3.Router"}}],
                    }}]}],
            }],
            "clusters": [cluster("upstream", upstream_port),
                         cluster("idempotency", processor_port,
                                 {"typed_extension_protocol_options": h2})],
        },
    }, indent=1)


# ---------------------------------------------------------------- the stack


class IdemStack:
    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self.procs = []

    def logs(self):
        return "\n".join(p.tail() for p in self.procs + [self.redis.proc] if p)

    def processor_log(self):
        return self.processor.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def idem(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("e2e-idempotency")
    s = IdemStack(log_dir)
    redis_port, listen_port, admin_port = free_ports(3)
    base_id = os.getpid() * 10 + next(_base_ids) % 10
    s.upstream = Upstream()
    s.redis = Redis(log_dir, redis_port)
    sock_dir = tempfile.mkdtemp(prefix="extproc-")
    codes = {}
    try:
        s.redis.start()
        with environment(EXTPROC_IDEMPOTENCY_REDIS=f"127.0.0.1:{redis_port}",
                         EXTPROC_IDEMPOTENCY_TIMEOUT=f"{REDIS_TIMEOUT_MS}ms",
                         EXTPROC_IDEMPOTENCY_TTL="10m",
                         EXTPROC_IDEMPOTENCY_IN_FLIGHT_TTL="30s",
                         EXTPROC_IDEMPOTENCY_ON_REDIS_ERROR="503"):
            s.processor, addresses = start_processor(log_dir, "tcp", sock_dir, ["idempotency"],
                                                     extra_args=["--workers", "2"])
        s.procs.append(s.processor)
        config = Path(log_dir) / "envoy.json"
        config.write_text(envoy_config(listen_port, admin_port, s.upstream.port,
                                       addresses[0][1]))
        s.procs.append(start("envoy", [envoy_binary(), "-c", str(config), "--base-id",
                                       str(base_id), "--log-level", "warn", "--concurrency",
                                       "2"], log_dir))
        s.port, s.admin_port = listen_port, admin_port
        wait_until("envoy /ready and its listener",
                   lambda: envoy_ready(admin_port) and can_connect(("127.0.0.1", listen_port)),
                   s.procs)
        yield s
    finally:
        codes = {p.name: p.stop() for p in reversed(s.procs)}
        s.redis.close()
        s.upstream.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
        Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)
    if codes.get("processor", 0) != 0:
        pytest.fail(f"processor exited with {codes['processor']}\n" + s.processor.tail(80),
                    pytrace=False)


def send(s, method, path, body=None, key=None, headers=None, timeout=20):
    h = dict(headers or {})
    if key is not None:
        h["idempotency-key"] = key
    if body is not None:
        h["content-type"] = "application/json"
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def new_key():
    return str(uuid.uuid4())


# ---------------------------------------------------------------- the tests


def test_concurrent_repeats_reach_the_upstream_once(idem):
    keys = [new_key() for _ in range(KEYS)]
    # The repeats of a key are next to each other, so they run at the same time.
    jobs = [(k, i) for k in keys for i in range(REPEATS)]

    def one(job):
        key, _ = job
        return key, send(idem, "POST", "/orders", body=json.dumps({"item": key}), key=key)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(one, jobs))

    by_key = {}
    for key, (status, headers, body) in results:
        by_key.setdefault(key, []).append((status, headers, body))
    statuses = Counter(status for _, (status, _, _) in results)
    for key in keys:
        assert idem.upstream.count(key) == 1, (key, idem.upstream.count(key), statuses)
        answers = by_key[key]
        assert {a[0] for a in answers} <= {201, 409}, (key, answers)
        bodies = {a[2] for a in answers if a[0] == 201}
        assert len(bodies) == 1, (key, answers)  # the first response, and only it
        assert json.loads(bodies.pop())["key"] == key
        for status, headers, body in answers:
            if status == 409:
                assert headers["content-type"] == "application/problem+json"
                assert json.loads(body)["status"] == 409

    # Afterwards every key is settled: one more repeat each is a replay of the same response,
    # with the headers worth replaying and without the others.
    def again(key):
        return key, send(idem, "POST", "/orders", body=json.dumps({"item": key}), key=key)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        replays = list(pool.map(again, keys))
    for key, (status, headers, body) in replays:
        first = next(a for a in by_key[key] if a[0] == 201)
        assert status == 201, (key, status, body)
        assert body == first[2]
        assert headers.get("idempotent-replayed") == "true"
        assert headers["content-type"] == "application/json"
        assert headers["location"] == first[1]["location"]
        assert "x-upstream-only" not in headers
        assert idem.upstream.count(key) == 1
    print(f"first pass: {dict(statuses)}")


def test_a_different_request_with_the_same_key_gets_422(idem):
    key = new_key()
    status, _, body = send(idem, "POST", "/orders", body='{"item": 1}', key=key)
    assert status == 201, body
    assert send(idem, "POST", "/orders", body='{"item": 2}', key=key)[0] == 422
    assert send(idem, "POST", "/other", body='{"item": 1}', key=key)[0] == 422
    assert send(idem, "PATCH", "/orders", body='{"item": 1}', key=key)[0] == 422
    status, headers, body = send(idem, "POST", "/orders", body='{"item": 1}', key=key)
    assert status == 201 and headers.get("idempotent-replayed") == "true"
    assert idem.upstream.count(key) == 1


def test_a_different_request_while_the_first_is_in_flight_gets_422(idem):
    key = new_key()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(send, idem, "PATCH", "/orders/7", '{"a": 1}', key)
        deadline = time.monotonic() + 5
        while idem.upstream.count(key) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert send(idem, "PATCH", "/orders/7", body='{"a": 2}', key=key)[0] == 422
        assert first.result()[0] == 201
    assert idem.upstream.count(key) == 1


def test_what_is_not_a_keyed_write_passes_through(idem):
    key = new_key()
    for _ in range(2):  # GET is idempotent already: not ours, even with a key
        assert send(idem, "GET", "/orders", key=key)[0] == 201
    assert idem.upstream.count(key) == 2
    tid = new_key()
    for _ in range(2):  # no key: nothing to deduplicate by
        status, headers, _ = send(idem, "POST", "/orders", body="{}", headers={"x-test-id": tid})
        assert status == 201 and "idempotent-replayed" not in headers
    assert idem.upstream.count(tid) == 2


def test_a_quoted_key_is_the_same_key_and_a_bad_one_gets_400(idem):
    key = new_key()
    assert send(idem, "POST", "/orders", body="{}", key=key)[0] == 201
    status, headers, _ = send(idem, "POST", "/orders", body="{}", key=f'"{key}"')
    assert status == 201 and headers.get("idempotent-replayed") == "true"
    assert idem.upstream.count(key) == 1
    for bad in ["x" * 256, "has space", '""']:
        status, headers, body = send(idem, "POST", "/orders", body="{}", key=bad)
        assert status == 400, (bad, body)
        assert headers["content-type"] == "application/problem+json"


def test_a_5xx_releases_the_key(idem):
    key = new_key()
    assert send(idem, "POST", "/fail", body="{}", key=key)[0] == 503
    status, headers, _ = send(idem, "POST", "/fail", body="{}", key=key)
    assert status == 503 and "idempotent-replayed" not in headers
    assert idem.upstream.count(key) == 2


def test_a_bodyless_post_is_stored_too(idem):
    key = new_key()
    first = send(idem, "POST", "/orders", key=key)
    again = send(idem, "POST", "/orders", key=key)
    assert first[0] == again[0] == 201 and first[2] == again[2]
    assert idem.upstream.count(key) == 1


def wait_for_log(s, text, timeout=5.0):
    deadline = time.monotonic() + timeout
    while text not in s.processor_log():
        assert time.monotonic() < deadline, f"no {text!r} in the processor's log\n{s.logs()}"
        time.sleep(0.05)


def assert_refused_503(s, key):
    started = time.monotonic()
    status, headers, body = send(s, "POST", "/orders", body="{}", key=key)
    took = time.monotonic() - started
    assert status == 503, (status, body)
    assert headers.get("retry-after") == "1"
    assert json.loads(body)["title"] == "Idempotency store unavailable"
    assert s.upstream.count(key) == 0
    return took


def recover(s):
    """Keyed writes until one is served again (bounded); returns its key."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while True:
        key = new_key()
        status, _, body = send(s, "POST", "/orders", body="{}", key=key)
        if status == 201:
            return key
        assert status == 503, (status, body)
        assert time.monotonic() < deadline, f"no recovery within {RECOVERY_TIMEOUT}s\n{s.logs()}"
        time.sleep(0.1)


def test_a_paused_redis_gets_the_policy_within_the_deadline_then_recovery(idem):
    idem.redis.proc.popen.send_signal(signal.SIGSTOP)
    try:
        for _ in range(3):
            assert_refused_503(idem, new_key())
        wait_for_log(idem, "no answer within the timeout")
        wait_for_log(idem, "answered 503")
    finally:
        idem.redis.proc.popen.send_signal(signal.SIGCONT)
    key = recover(idem)
    status, headers, _ = send(idem, "POST", "/orders", body="{}", key=key)
    assert status == 201 and headers.get("idempotent-replayed") == "true"


def test_redis_stopped_mid_run_gets_the_policy_then_recovery_after_restart(idem):
    stored = new_key()
    assert send(idem, "POST", "/orders", body="{}", key=stored)[0] == 201
    # Stopped while requests are being served.
    with ThreadPoolExecutor(8) as pool:
        running = [pool.submit(send, idem, "POST", "/orders", "{}", new_key())
                   for _ in range(40)]
        time.sleep(0.05)
        idem.redis.stop()
        outcomes = Counter(f.result()[0] for f in running)
    assert set(outcomes) <= {201, 503}, outcomes
    for _ in range(5):
        assert_refused_503(idem, new_key())
    wait_for_log(idem, "idempotency store unavailable")
    idem.redis.start()  # empty: no persistence
    key = recover(idem)
    assert idem.upstream.count(key) == 1
    status, headers, _ = send(idem, "POST", "/orders", body="{}", key=key)
    assert status == 201 and headers.get("idempotent-replayed") == "true"
    assert idem.upstream.count(key) == 1
    wait_for_log(idem, "connected again")
