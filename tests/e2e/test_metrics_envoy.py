"""The Prometheus endpoint after real traffic through Envoy: the exposition parses with the
official Python client's parser, and its counts match what was sent."""

import http.client
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TRIVIAL_TEMPLATE, free_ports, running_stack
from test_trivial_envoy import call, check_processed

REQUESTS = 40
PROCESSOR = "TrivialExtProcService"


@pytest.fixture(scope="module")
def metered(tmp_path_factory):
    (metrics_port,) = free_ports(1)
    log_dir = tmp_path_factory.mktemp("metrics")
    with running_stack(log_dir, TRIVIAL_TEMPLATE, ["trivial"],
                       processor_args=("--metrics-listen", f"127.0.0.1:{metrics_port}")) as s:
        s.metrics_port = metrics_port
        yield s


def scrape(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode()
        assert resp.status == 200, body
        assert resp.getheader("content-type").startswith("text/plain; version=0.0.4")
    finally:
        conn.close()
    samples = {}
    for family in text_string_to_metric_families(body):  # raises on a malformed exposition
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def test_counts_match_the_traffic_sent(metered):
    before = scrape(metered.metrics_port)
    for _ in range(REQUESTS):
        sent = str(uuid.uuid4())
        status, headers, echoed = call(metered.port, "GET", "/m", headers={"x-request-id": sent})
        check_processed(status, headers, echoed, sent)
    after = scrape(metered.metrics_port)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # deploy's trivial filter sends request and response headers (bodies and trailers SKIP).
    for phase in ("request_headers", "response_headers"):
        assert delta("extproc_messages_total", processor=PROCESSOR, phase=phase) == REQUESTS
        assert delta("extproc_callback_duration_seconds_count", processor=PROCESSOR,
                     phase=phase) == REQUESTS
        assert delta("extproc_callback_duration_seconds_bucket", processor=PROCESSOR,
                     phase=phase, le="+Inf") == REQUESTS
    assert delta("extproc_messages_total", processor=PROCESSOR, phase="request_body") == 0
    # Every phase wrote x-extra-request-id: a mutation each, nothing else.
    assert delta("extproc_replies_total", processor=PROCESSOR, kind="mutation") == 2 * REQUESTS
    for kind in ("continue", "immediate", "error"):
        assert delta("extproc_replies_total", processor=PROCESSOR, kind=kind) == 0
    assert delta("extproc_streams_total") >= REQUESTS  # plus Envoy's health checks, if any
    assert delta("extproc_received_bytes_total") > 0 and delta("extproc_sent_bytes_total") > 0
    assert value(after, "extproc_connections_open") >= 1
    assert value(after, "extproc_draining") == 0


def test_a_path_other_than_metrics_is_404(metered):
    conn = http.client.HTTPConnection("127.0.0.1", metered.metrics_port, timeout=5)
    conn.request("GET", "/")
    assert conn.getresponse().status == 404
    conn.close()
