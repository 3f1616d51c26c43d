"""The trivial processor behind a real Envoy (deploy/envoy.yaml), over TCP and a unix socket.

The processor copies x-request-id into x-extra-request-id on the upstream request and on the
client's response. deploy/envoy.yaml keeps a client's own x-request-id and always returns the
id on the response, so for every request four values must agree: the x-request-id and
x-extra-request-id the upstream saw, and the same two headers on the response.
"""

import http.client
import json
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import start_processor


def call(port, method, path, body=None, headers=None, conn=None):
    """One request through Envoy. Returns (status, response headers, echoed JSON or None)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        resp_headers = {k.lower(): v for k, v in resp.getheaders()}
        echoed = json.loads(raw) if resp.status == 200 else raw
        return resp.status, resp_headers, echoed
    finally:
        if own:
            conn.close()


def check_processed(status, resp_headers, echoed, sent_id=None, method="GET", body=""):
    """Asserts the request went through the processor with consistent ids; returns the id."""
    assert status == 200, f"status {status}, body {echoed!r}"
    assert echoed["message"] == "echo"
    assert echoed["method"] == method
    assert echoed["body"] == body
    upstream = echoed["headers"]
    request_id = upstream.get("x-request-id")
    assert request_id, f"upstream saw no x-request-id: {upstream}"
    if sent_id is not None:
        assert request_id == sent_id, "Envoy replaced the client's x-request-id"
    assert upstream.get("x-extra-request-id") == request_id, upstream
    assert resp_headers.get("x-request-id") == request_id, resp_headers
    assert resp_headers.get("x-extra-request-id") == request_id, resp_headers
    return request_id


def ext_proc_stats(stack):
    status, _, body = call(stack.admin_port, "GET", "/stats?filter=ext_proc&format=json")
    assert status == 200, body
    prefix = "http.ingress_http.ext_proc."
    return {s["name"][len(prefix):]: s["value"] for s in body["stats"]
            if s.get("name", "").startswith(prefix)}  # histograms have no "name": skipped


def test_get(stack):
    status, headers, echoed = call(stack.port, "GET", "/hello?x=1")
    check_processed(status, headers, echoed)
    assert echoed["path"] == "/hello?x=1"


def test_post_json_body(stack):
    body = json.dumps({"name": "libextproc", "items": [1, 2, 3]})
    status, headers, echoed = call(stack.port, "POST", "/items", body=body,
                                   headers={"content-type": "application/json"})
    check_processed(status, headers, echoed, method="POST", body=body)
    assert echoed["headers"]["content-type"] == "application/json"
    assert json.loads(echoed["body"]) == {"name": "libextproc", "items": [1, 2, 3]}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_client_request_id_is_kept(stack, method):
    sent = str(uuid.uuid4())
    body = '{"k": "v"}' if method == "POST" else ""
    status, headers, echoed = call(stack.port, method, "/with-id", body=body or None,
                                   headers={"x-request-id": sent})
    assert check_processed(status, headers, echoed, sent_id=sent, method=method,
                           body=body) == sent


@pytest.mark.parametrize("path", ["/no-ext-procs", "/no-ext-procs/deeper?q=1"])
@pytest.mark.parametrize("sent_id", [None, "client-chosen-id"])
def test_no_ext_procs_route_skips_processor(stack, path, sent_id):
    headers = {"x-request-id": sent_id} if sent_id else {}
    status, resp_headers, echoed = call(stack.port, "GET", path, headers=headers)
    assert status == 200, echoed
    assert echoed["path"] == path
    # The id is there (so its copy's absence means something), but nobody copied it.
    request_id = echoed["headers"].get("x-request-id")
    assert request_id and resp_headers.get("x-request-id") == request_id
    if sent_id:
        assert request_id == sent_id
    assert "x-extra-request-id" not in echoed["headers"]
    assert "x-extra-request-id" not in resp_headers


def test_500_requests_at_concurrency_50(stack):
    before = ext_proc_stats(stack)

    def worker(w):
        # Ten requests on one keep-alive connection, mixing methods and client-sent ids.
        conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
        ids = []
        try:
            for i in range(10):
                n = w * 10 + i
                sent = f"load-{n}-{uuid.uuid4()}" if n % 2 else None
                method, body = ("POST", json.dumps({"n": n})) if n % 3 == 0 else ("GET", "")
                hdrs = {"x-request-id": sent} if sent else {}
                status, resp_headers, echoed = call(stack.port, method, f"/load/{n}",
                                                    body=body or None, headers=hdrs, conn=conn)
                ids.append(check_processed(status, resp_headers, echoed, sent_id=sent,
                                           method=method, body=body))
                assert echoed["path"] == f"/load/{n}"
        finally:
            conn.close()
        return ids

    with ThreadPoolExecutor(max_workers=50) as pool:
        ids = [i for batch in pool.map(worker, range(50)) for i in batch]
    assert len(ids) == 500
    # Distinct ids everywhere: no stream answered with another request's id.
    assert len(set(ids)) == 500

    after = ext_proc_stats(stack)
    delta = {k: after[k] - before.get(k, 0) for k in after}
    assert delta["streams_started"] == 500, delta
    assert delta["stream_msgs_received"] == 1000, delta  # request and response headers
    for bad in ("streams_failed", "spurious_msgs_received", "message_timeouts",
                "rejected_header_mutations", "failure_mode_allowed", "immediate_responses_sent"):
        assert delta[bad] == 0, f"{bad}: {delta}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_processor_exits_zero_on_signal(tmp_path, short_tmp_dir, transport, sig):
    proc, _ = start_processor(tmp_path, transport, short_tmp_dir, ["trivial"])  # waits for accept
    rc = proc.stop(sig)
    assert rc == 0, proc.tail()
