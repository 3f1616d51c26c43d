"""The demo's use-case chain through real Envoy: deploy/envoy.yaml (templated as for the six
examples) with all nine processors served by one runner, a real redis-server for idempotency,
an HS256 secret and an API keys file generated here, and the access log in a file.

On the use-case listener the filters are auth -> idempotency -> access-log. Envoy runs request
phases in that order and response phases in the reverse one. What an immediate response from
an earlier filter (auth's 401, idempotency's replay) does to the later ones, as checked here:

  - their request phases never run, and the upstream is never called;
  - Envoy sends the local reply through the whole encoder chain, so their response phases do
    run: each opens an ext_proc stream that starts with the response headers (the reply's
    x-ext-procs-applied names them, and their streams_started counters move);
  - the access-log processor writes a line only for an exchange whose request headers it saw,
    so neither the 401 nor the replay gets a line; the exchange that reached the upstream gets
    exactly one, with its status. (To log every exchange, list access-log first.)

The six-example chain on the other listener still answers as before. Time: about 1.2 s, normal
and under ASan or TSan, on 2 cores.
"""

import hashlib
import http.client
import json
import re
import shutil
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import jwt
import pytest

from conftest import (DEMO_SERVICES, ENVOY_TEMPLATE, USECASE_SERVICES, can_connect, free_ports,
                      running_stack, start, wait_until)

SECRET = "demo-secret-" + "k" * 40
API_KEY = "demo-key-0123456789"
SIX = ("TrivialExtProcService,TimerExtProcService,EchoExtProcService,DigestExtProcService,"
       "DecoratedExtProcService,CtxExtProcService")
README_GET_DIGEST = "860d64d6465b9e9886050295087e8a547b3e7a3c40e79d26147b50a97b9ac2c6"
LOG_WAIT = 10.0  # seconds for a line to reach the file (the sanitizer builds are slow)


# ---------------------------------------------------------------- the stack


def start_redis(log_dir, data_dir):
    port = free_ports(1)[0]
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", data_dir, "--daemonize", "no"],
                 log_dir)
    wait_until("redis-server", lambda: can_connect(("127.0.0.1", port)), [proc])
    return proc, port


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("e2e-usecases")
    keys = tmp_path_factory.mktemp("e2e-usecases-keys")
    (keys / "hs256.secret").write_text(SECRET + "\n")
    (keys / "api-keys.txt").write_text(
        f"{hashlib.sha256(API_KEY.encode()).hexdigest()} demo-service orders\n")
    data_dir = tempfile.mkdtemp(prefix="extproc-redis-")
    redis, redis_port = start_redis(log_dir, data_dir)
    access_log = log_dir / "access.jsonl"
    env = {  # as scripts/demo.sh sets them
        "EXTPROC_AUTH_HS256_SECRET_FILE": str(keys / "hs256.secret"),
        "EXTPROC_AUTH_API_KEYS_FILE": str(keys / "api-keys.txt"),
        "EXTPROC_IDEMPOTENCY_REDIS": f"127.0.0.1:{redis_port}",
        "EXTPROC_ACCESS_LOG_PATH": str(access_log),
        "EXTPROC_ACCESS_LOG_HEADERS": "user-agent,content-type,x-auth-subject,idempotency-key",
        "EXTPROC_ACCESS_LOG_BODY_CAP": "1KiB",
        "EXTPROC_ACCESS_LOG_REDACT_FIELDS": "password,secret,token,authorization,x-api-key",
    }
    try:
        with pytest.MonkeyPatch.context() as mp:  # the runner copies the environment at start
            for name, value in env.items():
                mp.setenv(name, value)
            with running_stack(log_dir, ENVOY_TEMPLATE, DEMO_SERVICES + USECASE_SERVICES) as s:
                mp.undo()
                s.access_log = access_log
                s.procs.append(redis)  # for the log tails; stopped below
                yield s
                s.procs.remove(redis)
    finally:
        redis.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# ---------------------------------------------------------------- helpers


def call(port, method, path, headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def stat(s, name):
    url = f"http://127.0.0.1:{s.admin_port}/stats?filter=^{re.escape(name)}$"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode().strip()
    return int(text.split(":")[1]) if text else 0


def upstream_requests(s):
    return stat(s, "cluster.upstream.upstream_rq_total")


def streams_started(s, name):
    return stat(s, f"http.usecases_http.ext_proc.{name}.streams_started")


def token(sub="demo-user"):
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 300, "scope": "orders"}, SECRET,
                      algorithm="HS256")


def request_id():
    return f"uc-{uuid.uuid4()}"


def log_lines(s):
    if not s.access_log.exists():
        return []
    return [json.loads(line) for line in s.access_log.read_text().splitlines()]


def lines_after_barrier(s, *request_ids):
    """The access log's lines for request_ids, once a later admitted request's line is written.

    The processor hands every line to one writer thread in the order the exchanges end, so once
    the barrier's line is in the file, any line for an earlier exchange would be there too: a
    missing line is really missing, not late."""
    barrier = request_id()
    status, _, body = call(s.usecase_port, "GET", "/barrier",
                           {"authorization": f"Bearer {token()}", "x-request-id": barrier})
    assert status == 200, (status, body)
    deadline = time.monotonic() + LOG_WAIT
    while not any(line["request_id"] == barrier for line in log_lines(s)):
        assert time.monotonic() < deadline, f"no access-log line for {barrier}\n{s.logs()}"
        time.sleep(0.05)
    return [line for line in log_lines(s) if line["request_id"] in request_ids]


# ---------------------------------------------------------------- the tests


def test_the_processors_are_healthy(demo):
    deadline = time.monotonic() + 15
    while True:
        _, _, body = call(demo.admin_port, "GET", "/clusters")
        flags = {line.split("::")[0]: line.rsplit("::", 1)[1]
                 for line in body.decode().splitlines() if "::health_flags::" in line}
        nine = {n: flags.get(n) for n in ("trivial", "timer", "echo", "digest", "decorated",
                                          "context", "auth", "idempotency", "access_log")}
        if all(v == "healthy" for v in nine.values()):
            break
        assert time.monotonic() < deadline, nine
        time.sleep(0.2)


def test_no_credential_gets_401_and_only_the_response_phases_after_auth_run(demo):
    rid = request_id()
    upstream = upstream_requests(demo)
    later = {n: streams_started(demo, n) for n in ("idempotency", "access_log")}
    status, headers, body = call(demo.usecase_port, "POST", "/orders",
                                 {"x-request-id": rid, "idempotency-key": f"k-{rid}",
                                  "content-type": "application/json"}, b'{"item": 1}')
    assert status == 401, (status, body)
    assert headers["www-authenticate"] == 'Bearer realm="extproc"'
    assert json.loads(body) == {"error": "unauthorized", "error_description": "no credential"}
    assert upstream_requests(demo) == upstream, "a refused request reached the upstream"
    # Auth answered; Envoy then ran the reply through access-log's and idempotency's response
    # phases (each prepends its name), on streams that began with those response headers.
    assert headers["x-ext-procs-applied"] == \
        "IdempotencyExtProcService,AccessLogExtProcService,AuthExtProcService"
    for name, before in later.items():
        assert streams_started(demo, name) == before + 1, name
    # access-log never saw the request, so it writes no line for it.
    assert lines_after_barrier(demo, rid) == []


def test_a_keyed_post_reaches_the_upstream_once_and_its_repeat_is_replayed(demo):
    first_id, repeat_id = request_id(), request_id()
    key = f"order-{uuid.uuid4()}"
    sent = b'{"item": 1}'

    def post(rid):
        return call(demo.usecase_port, "POST", "/orders",
                    {"authorization": f"Bearer {token()}", "idempotency-key": key,
                     "content-type": "application/json", "x-request-id": rid}, sent)

    upstream = upstream_requests(demo)
    status, headers, body = post(first_id)
    assert status == 200, (status, body, demo.logs())
    assert "idempotent-replayed" not in headers
    seen = json.loads(body)
    assert seen["body"] == sent.decode()
    assert seen["headers"]["x-auth-subject"] == "demo-user"  # auth's claim header
    assert seen["headers"]["x-auth-method"] == "jwt"  # its metadata, copied by the route
    assert headers["x-ext-procs-applied"] == "IdempotencyExtProcService,AccessLogExtProcService"
    assert upstream_requests(demo) == upstream + 1

    status, again, replayed = post(repeat_id)
    assert status == 200 and again.get("idempotent-replayed") == "true", (status, again)
    assert replayed == body  # the first response, upstream's request id and all
    assert again["x-request-id"] == repeat_id
    assert again["x-ext-procs-applied"] == "AccessLogExtProcService,IdempotencyExtProcService"
    assert upstream_requests(demo) == upstream + 1

    lines = lines_after_barrier(demo, first_id, repeat_id)
    assert [line["request_id"] for line in lines] == [first_id], lines
    line = lines[0]
    assert (line["method"], line["path"], line["status"], line["complete"]) == \
        ("POST", "/orders", 200, True)
    assert line["request_headers"]["x-auth-subject"] == "demo-user"
    assert line["request_headers"]["idempotency-key"] == key
    assert line["request_body"] == sent.decode()
    # The echo's answer repeats the request's headers; the token is redacted in the log.
    assert json.loads(line["response_body"])["headers"]["authorization"] == "[REDACTED]"


def test_an_api_key_is_admitted_and_logged(demo):
    rid = request_id()
    status, _, body = call(demo.usecase_port, "GET", "/orders",
                           {"x-api-key": API_KEY, "x-request-id": rid})
    assert status == 200, (status, body)
    seen = json.loads(body)["headers"]
    assert (seen["x-auth-subject"], seen["x-auth-method"]) == ("demo-service", "api_key")
    (line,) = lines_after_barrier(demo, rid)
    assert line["status"] == 200 and line["request_headers"]["x-auth-subject"] == "demo-service"


def test_the_six_examples_still_answer_on_their_listener(demo):
    status, headers, body = call(demo.port, "GET", "/something")
    assert status == 200, body
    assert headers["x-ext-procs-applied"] == SIX
    assert headers["x-request-digest"] == README_GET_DIGEST
    assert "x-auth-subject" not in json.loads(body)["headers"]  # no use-case filter here
