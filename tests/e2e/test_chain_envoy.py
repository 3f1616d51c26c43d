"""The demo through real Envoy: deploy/envoy.yaml with the six example processors chained in the
Python SDK's order, reproducing that SDK's README outputs, plus echo-only answers, a concurrency
run that would show crossed requests, the failure policy, and Envoy's own health checks."""

import hashlib
import http.client
import json
import re
import threading
import time

import pytest

CHAIN = ("TrivialExtProcService,TimerExtProcService,EchoExtProcService,DigestExtProcService,"
         "DecoratedExtProcService,CtxExtProcService")
RFC3339_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
# The digests the Python SDK's README shows for these very requests.
README_GET_DIGEST = "860d64d6465b9e9886050295087e8a547b3e7a3c40e79d26147b50a97b9ac2c6"
README_PUT_DIGEST = "a794dbc467285567e4c2604c991938386366f6ab94b0b0e4fab5e27e0a932e60"


def call(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def digest(tenant, method, path, body=b""):
    return hashlib.sha256(tenant.encode() + method.encode() + path.encode() + body).hexdigest()


def stat(stack, name):
    status, _, body = call(stack.admin_port, "GET", f"/stats?filter=^{re.escape(name)}$")
    assert status == 200
    text = body.decode().strip()
    return int(text.split(":")[1]) if text else 0


def check_readme_exchange(stack, method, body, context_id):
    """One request through the chain; checks what the upstream and the client saw."""
    headers = {"x-context-id": context_id}
    if body:
        headers["content-type"] = "application/json"
    status, resp, raw = call(stack.port, method, "/something", body=body, headers=headers)
    assert status == 200, (status, raw, stack.logs())
    echoed = json.loads(raw)
    up = echoed["headers"]
    request_id = resp["x-request-id"]
    want = digest("unknown", method, "/something", body or b"")

    # Upstream: one header from each request-side processor.
    assert up["x-extra-request-id"] == request_id == up["x-request-id"]
    assert RFC3339_MICROS.match(up["x-request-started"]), up
    assert up["x-request-digest"] == want
    assert up["x-context-id"] == context_id
    # Client: the response side.
    assert resp["x-extra-request-id"] == request_id
    assert resp["x-request-started"] == up["x-request-started"]
    assert int(resp["x-duration-ns"]) > 0
    assert resp["x-request-digest"] == want
    assert resp["x-context-id"] == context_id
    assert resp["x-ext-procs-applied"] == CHAIN
    assert echoed["method"] == method and echoed["path"] == "/something"
    return want


def test_readme_get(chain):
    assert check_readme_exchange(chain, "GET", None, "ctx-get") == README_GET_DIGEST


def test_readme_put_with_json_body(chain):
    # CtxExtProcService checks the body equals x-context-id: send the JSON as both.
    body = b'{"hello":"hi"}'
    assert check_readme_exchange(chain, "PUT", body, body.decode()) == README_PUT_DIGEST


def test_tenant_goes_into_the_digest(chain):
    status, resp, raw = call(chain.port, "POST", "/orders?id=3", body=b"abc",
                             headers={"x-tenant-id": "acme", "x-context-id": "abc"})
    assert status == 200, raw
    want = digest("acme", "POST", "/orders?id=3", b"abc")
    assert json.loads(raw)["headers"]["x-request-digest"] == want
    assert resp["x-request-digest"] == want


@pytest.mark.parametrize("method,body", [("GET", None), ("POST", b'{"answer":42}')])
def test_echo_only_never_reaches_the_upstream(chain, method, body):
    before = stat(chain, "cluster.upstream.upstream_rq_total")
    status, resp, raw = call(chain.port, method, "/echo-me", body=body,
                             headers={"x-echo-only": "Yes", "x-mine": "kept"})
    assert status == 200
    assert raw == (body or b"")  # the processor's answer, not the echo upstream's JSON
    assert resp["x-mine"] == "kept" and resp["x-echo-only"] == "Yes"
    # Echo answered; the processors before it in the chain still saw the response.
    assert resp["x-ext-procs-applied"].split(",")[-1] == "EchoExtProcService"
    assert resp["x-ext-procs-applied"].startswith("TrivialExtProcService,TimerExtProcService")
    assert stat(chain, "cluster.upstream.upstream_rq_total") == before


def test_failed_check_is_logged_and_failure_mode_allow_lets_it_through(chain):
    before = stat(chain, "http.ingress_http.ext_proc.context.streams_failed")
    status, resp, raw = call(chain.port, "POST", "/mismatch", body=b"not-the-id",
                             headers={"x-context-id": "the-id"})
    # failure_mode_allow: true, so the request goes on without CtxExtProcService's answer.
    assert status == 200, raw
    assert "x-context-id" not in resp
    assert stat(chain, "http.ingress_http.ext_proc.context.streams_failed") == before + 1
    processor = next(p for p in chain.procs if p.name == "processor")
    deadline = time.monotonic() + 5
    while "request body does not equal x-context-id" not in processor.log.read_text():
        assert time.monotonic() < deadline, processor.tail()
        time.sleep(0.05)
    line = next(l for l in processor.log.read_text().splitlines() if "does not equal" in l)
    assert "processor=CtxExtProcService" in line and "phase=request_body" in line
    assert f"request_id={resp['x-request-id']}" in line


def test_2000_requests_at_concurrency_64_never_cross(chain):
    total, workers = 2000, 64
    failed_before = stat(chain, "http.ingress_http.ext_proc.context.streams_failed")
    errors, done = [], []
    lock = threading.Lock()

    def worker(w):
        conn = http.client.HTTPConnection("127.0.0.1", chain.port, timeout=30)
        try:
            for n in range(w, total, workers):
                cid = f"ctx-{n}-{w}"
                conn.request("POST", f"/load/{n}", body=cid.encode(),
                             headers={"x-context-id": cid})
                resp = conn.getresponse()
                raw = resp.read()
                got = resp.getheader("x-context-id")
                ok = (resp.status == 200 and got == cid and json.loads(raw)["body"] == cid
                      and resp.getheader("x-ext-procs-applied") == CHAIN)
                with lock:
                    (done if ok else errors).append((n, resp.status, got, raw[:120]))
        except Exception as e:  # recorded, so the assertion below reports it
            with lock:
                errors.append(("exception", repr(e)))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    assert len(done) == total
    assert stat(chain, "http.ingress_http.ext_proc.context.streams_failed") == failed_before


def test_envoy_health_checks_see_serving(chain):
    # Envoy checks each processor with grpc.health.v1; a SERVING answer marks it healthy.
    deadline = time.monotonic() + 15
    while True:
        _, _, body = call(chain.admin_port, "GET", "/clusters")
        flags = {line.split("::")[0]: line.rsplit("::", 1)[1]
                 for line in body.decode().splitlines() if "::health_flags::" in line}
        processors = {n: flags.get(n) for n in
                      ("trivial", "timer", "echo", "digest", "decorated", "context")}
        if all(v == "healthy" for v in processors.values()):
            break
        assert time.monotonic() < deadline, processors
        time.sleep(0.2)
    for name in processors:
        assert stat(chain, f"cluster.{name}.health_check.success") >= 1
        assert stat(chain, f"cluster.{name}.health_check.failure") == 0
