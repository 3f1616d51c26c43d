"""Stopping a processor behind a real Envoy without failing a request.

  - A rolling restart: two trivial processors behind ONE Envoy cluster with gRPC active health
    checks, load running through Envoy, SIGTERM to one of them mid-load. Its health turns
    NOT_SERVING, Envoy takes it out of rotation while it still serves, then it closes (GOAWAY)
    and exits. Every request must succeed and be processed.
  - A deferred answer due in 60 s does not hold the process past its grace period: the answer is
    logged as abandoned at shutdown, not as Envoy's message_timeout.
  - A second SIGTERM stops at once, whatever the drain delay.

The Envoy configuration is made here (envoy_config below): one listener whose ext_proc filter
(failure_mode_allow false, so a failed processor stream is a 500) calls the cluster
"processors", and the echo upstream behind it. No timed assertions beyond the bounds a correct
stop guarantees (drain delay + grace period + EXIT_BOUND); the times are printed.
"""

import http.client
import json
import os
import signal
import threading
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import conftest
from conftest import (envoy_binary, envoy_ready, free_ports, start, start_echo, start_processor,
                      wait_until)

# Envoy's active health check of the processors. A gRPC health check ejects a host at its first
# NOT_SERVING answer (UNHEALTHY_THRESHOLD counts only network failures: timeouts, refused
# connections), so within one HC_INTERVAL of the drain's start. DRAIN_DELAY leaves room for
# UNHEALTHY_THRESHOLD intervals (0.4 s) and the sanitizer builds.
HC_INTERVAL = "0.2s"
UNHEALTHY_THRESHOLD = 2
DRAIN_DELAY = 1.5  # seconds
GRACE = 2.0  # seconds
EXIT_BOUND = 5.0  # seconds beyond drain + grace: closing loops and the process, sanitizers
LOAD_THREADS = 8
LOAD_MAX_REQUESTS = 50000  # a bound on the load, never reached in a normal run
REQUESTS_BEFORE = 300  # through both processors, before the SIGTERM
REQUESTS_AFTER = 300  # after the drained processor exited
TYPES = "type.googleapis.com/envoy.extensions."


# ---------------------------------------------------------------- Envoy configuration


def _address(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _endpoint(processor):
    """processor: (port, health_port or None); a health port sends Envoy's checks there."""
    port, health_port = processor
    endpoint = {"address": _address(port)}
    if health_port:
        endpoint["health_check_config"] = {"port_value": health_port}
    return {"endpoint": endpoint}


def envoy_config(listen_port, admin_port, echo_port, processors, message_timeout="2s",
                 max_message_timeout=None):
    """The configuration's text (JSON, which Envoy reads as YAML)."""
    ext_proc = {
        "@type": TYPES + "filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "processors"}},
        "stat_prefix": "drain",
        "failure_mode_allow": False,  # a failed processor stream fails the request (500)
        "message_timeout": message_timeout,
        "processing_mode": {"request_header_mode": "SEND", "response_header_mode": "SEND",
                            "request_body_mode": "NONE", "response_body_mode": "NONE",
                            "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"},
    }
    if max_message_timeout:
        ext_proc["max_message_timeout"] = max_message_timeout
    hcm = {
        "@type": TYPES + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "preserve_external_request_id": True,
        "always_set_request_id_in_response": True,
        "route_config": {"virtual_hosts": [{
            "name": "all", "domains": ["*"],
            # No retry policy: a request the processor fails must show as a failure.
            "routes": [{"match": {"prefix": "/"},
                        "route": {"cluster": "upstream", "timeout": "90s"}}]}]},
        "http_filters": [
            {"name": "envoy.filters.http.ext_proc", "typed_config": ext_proc},
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": TYPES + "filters.http.router.v3.Router"}}],
    }
    doc = {
        "admin": {"address": _address(admin_port)},
        "static_resources": {
            "listeners": [{
                "name": "ingress", "address": _address(listen_port),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": hcm}]}]}],
            "clusters": [
                {"name": "upstream", "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": "upstream", "endpoints": [
                     {"lb_endpoints": [{"endpoint": {"address": _address(echo_port)}}]}]}},
                {"name": "processors", "type": "STATIC", "connect_timeout": "1s",
                 "typed_extension_protocol_options": {
                     "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                         "@type": TYPES + "upstreams.http.v3.HttpProtocolOptions",
                         "explicit_http_config": {"http2_protocol_options": {}}}},
                 # With one of two hosts out, 50% are healthy: keep Envoy from ever spreading
                 # traffic over unhealthy hosts (its panic mode) whatever the count.
                 "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
                 "health_checks": [{
                     "timeout": "1s", "interval": HC_INTERVAL,
                     # Used until the cluster has had traffic (default 60 s): the checks must
                     # run at HC_INTERVAL from the start for the drain to be seen in time.
                     "no_traffic_interval": HC_INTERVAL,
                     "unhealthy_threshold": UNHEALTHY_THRESHOLD, "healthy_threshold": 1,
                     "grpc_health_check": {}}],
                 "load_assignment": {"cluster_name": "processors", "endpoints": [
                     {"lb_endpoints": [_endpoint(p) for p in processors]}]}},
            ],
        },
    }
    return json.dumps(doc, indent=2) + "\n"


# ---------------------------------------------------------------- the stack


@dataclass
class DrainStack:
    port: int
    admin_port: int
    processors: list  # conftest.Proc, in the cluster's order
    ports: list  # each processor's ext_proc port
    procs: list = field(default_factory=list)  # everything, for logs and cleanup

    def logs(self):
        return "\n".join(p.tail() for p in self.procs)

    def admin(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as r:
            return r.read().decode()

    def host_stats(self):
        """{port: {"health_flags": ..., "rq_total": ...}} for the processors cluster."""
        hosts = {}
        for line in self.admin("/clusters").splitlines():
            parts = line.split("::")
            # processors::127.0.0.1:PORT::NAME::VALUE (other lines are the cluster's own)
            if len(parts) == 4 and parts[0] == "processors" and ":" in parts[1]:
                port = int(parts[1].rsplit(":", 1)[1])
                hosts.setdefault(port, {})[parts[2]] = parts[3]
        return hosts

    def stat(self, name):
        for line in self.admin(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0


@contextmanager
def drain_stack(log_dir, sock_dir, processor_specs, **config):
    """Echo upstream, one runner per entry of processor_specs ((service, extra args)), and
    Envoy with all of them in the cluster "processors"; all stopped on exit. A runner given
    --health-listen 127.0.0.1:0 is not supported: pass a port (see free_ports)."""
    listen_port, admin_port, echo_port = free_ports(3)
    base_id = os.getpid() * 10 + next(conftest._base_ids) % 10
    procs, processors, ports, endpoints = [], [], [], []
    try:
        procs.append(start_echo(log_dir, echo_port))
        for i, (service, args) in enumerate(processor_specs):
            proc, addresses = start_processor(log_dir, "tcp", sock_dir, [service],
                                              name=f"processor{i}", extra_args=args)
            procs.append(proc)
            processors.append(proc)
            port = addresses[0][1]
            ports.append(port)
            health = int(args[args.index("--health-listen") + 1].rsplit(":", 1)[1]) \
                if "--health-listen" in args else None
            endpoints.append((port, health))
        path = Path(log_dir) / "envoy.yaml"
        path.write_text(envoy_config(listen_port, admin_port, echo_port, endpoints, **config))
        procs.append(start("envoy", [envoy_binary(), "-c", str(path), "--base-id", str(base_id),
                                     "--log-level", "warn", "--concurrency", "2"], log_dir))
        s = DrainStack(listen_port, admin_port, processors, ports, procs)
        wait_until("envoy /ready", lambda: envoy_ready(admin_port), procs)
        yield s
    finally:
        for p in reversed(procs):
            p.stop(timeout=DRAIN_DELAY + GRACE + EXIT_BOUND)
        Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)


def processor_args(*extra):
    return ["--drain-delay", str(DRAIN_DELAY), "--grace-period", str(GRACE), "--workers", "2",
            *extra]


def wait_exit(proc, timeout):
    """Waits for a signalled process; returns its exit code (None if it is still running)."""
    try:
        return proc.popen.wait(timeout)
    except Exception:  # subprocess.TimeoutExpired
        return None


# ---------------------------------------------------------------- load through Envoy


class Load:
    """LOAD_THREADS clients sending GETs through Envoy on keep-alive connections until stopped;
    each reply must be a 200 the processor handled (x-extra-request-id = x-request-id)."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done = 0
        self.failures = []  # (seconds since start, what went wrong)
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(LOAD_THREADS)]
        for t in self.threads:
            t.start()

    def count(self):
        with self.lock:
            return self.done

    def _one(self, conn, n):
        rid = f"drain-{n}-{uuid.uuid4()}"
        conn.request("GET", f"/drain/{n}", headers={"x-request-id": rid})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            return f"status {resp.status}: {body[:200]!r}"
        if resp.getheader("x-extra-request-id") != rid:
            return f"not processed: x-extra-request-id {resp.getheader('x-extra-request-id')!r}"
        return None

    def _run(self, index):
        conn, n = None, 0
        while not self.stop.is_set() and self.count() < LOAD_MAX_REQUESTS:
            conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                why = self._one(conn, index * LOAD_MAX_REQUESTS + n)
            except (OSError, http.client.HTTPException) as e:
                why, conn = f"{type(e).__name__}: {e}", None
            n += 1
            with self.lock:
                self.done += 1
                if why:
                    self.failures.append((round(time.monotonic() - self.started, 3), why))
        if conn:
            conn.close()

    def wait_for(self, count, procs, timeout=60):
        wait_until(f"{count} requests through Envoy", lambda: self.count() >= count, procs,
                   timeout)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a load thread hangs"


# ---------------------------------------------------------------- the tests


def healthy(stack, port):
    return stack.host_stats().get(port, {}).get("health_flags") == "healthy"


def test_rolling_restart_fails_no_request(tmp_path, short_tmp_dir):
    health_port = free_ports(1)[0]
    specs = [("trivial", processor_args("--health-listen", f"127.0.0.1:{health_port}")),
             ("trivial", processor_args())]
    with drain_stack(tmp_path, short_tmp_dir, specs) as s:
        drained, kept = s.processors
        drained_port, kept_port = s.ports
        wait_until("both processors healthy in Envoy",
                   lambda: healthy(s, drained_port) and healthy(s, kept_port), s.procs)
        load = Load(s.port)
        try:
            load.wait_for(REQUESTS_BEFORE, s.procs)
            before = s.host_stats()
            assert int(before[drained_port]["rq_total"]) > 0, before  # both take traffic
            assert int(before[kept_port]["rq_total"]) > 0, before

            sent_at = time.monotonic()
            count_at_signal = load.count()
            drained.popen.send_signal(signal.SIGTERM)
            out_at, alive_when_out = None, None
            deadline = sent_at + DRAIN_DELAY + GRACE + EXIT_BOUND
            while drained.popen.poll() is None and time.monotonic() < deadline:
                flags = s.host_stats().get(drained_port, {}).get("health_flags", "")
                if out_at is None and "failed_active_hc" in flags:
                    out_at = time.monotonic() - sent_at
                    alive_when_out = drained.popen.poll() is None
                time.sleep(0.02)
            rc = wait_exit(drained, max(0.0, deadline - time.monotonic()))
            exited_after = time.monotonic() - sent_at
            count_at_exit = load.count()
            load.wait_for(count_at_exit + REQUESTS_AFTER, [kept, s.procs[-1]])
        finally:
            load.finish()
        after = s.host_stats()
        failures = list(load.failures)
        print(f"rolling restart: {load.done} requests ({count_at_signal} before the SIGTERM, "
              f"{count_at_exit - count_at_signal} during the drain and the grace period, "
              f"{load.done - count_at_exit} after the exit), {len(failures)} failed; "
              f"out of rotation in Envoy {out_at if out_at is None else round(out_at, 3)} s "
              f"after SIGTERM, processor exited after {exited_after:.3f} s "
              f"(drain delay {DRAIN_DELAY} s, grace period {GRACE} s)")
        assert failures == [], f"{len(failures)} failed requests, first ones: {failures[:10]}"
        assert rc == 0, f"exit code {rc}\n{drained.tail()}"
        assert exited_after < DRAIN_DELAY + GRACE + EXIT_BOUND
        # Envoy marked it unhealthy from its NOT_SERVING answers, while it was still serving.
        assert out_at is not None, f"never marked unhealthy: {after}\n{s.logs()}"
        assert alive_when_out
        assert s.stat("cluster.processors.health_check.failure") >= 1
        assert int(after[kept_port]["rq_total"]) > int(before[kept_port]["rq_total"])
        log = drained.log.read_text()
        assert "received signal 15" in log
        assert "grace period over" not in log  # every open stream finished in time
        assert kept.popen.poll() is None  # the other one is untouched


def wait_for_override(stack, procs):
    """Waits until the processor has sent its override_message_timeout: it has the request,
    and has deferred it."""
    def seen():
        text = stack.admin("/stats?filter=override_message_timeout_received")
        return any(line.rsplit(": ", 1)[-1].strip() not in ("", "0")
                   for line in text.splitlines())
    wait_until("the processor's override_message_timeout", seen, procs)


def test_deferred_answer_due_in_60s_does_not_hold_shutdown(tmp_path, short_tmp_dir):
    drain = 0.5
    specs = [("protocol", ["--drain-delay", str(drain), "--grace-period", str(GRACE)])]
    # message_timeout 1 s, extended by the processor to 62 s (max 100 s): Envoy still waits for
    # the answer when the processor stops, so the grace period runs out with the stream open.
    with drain_stack(tmp_path, short_tmp_dir, specs, message_timeout="1s",
                     max_message_timeout="100s") as s:
        proc = s.processors[0]
        wait_until("processor healthy in Envoy", lambda: healthy(s, s.ports[0]), s.procs)
        reply = {}

        def slow_request():
            conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
            try:
                conn.request("GET", "/slow", headers={"x-test-slow": "60000"})
                reply["status"] = conn.getresponse().status
            except (OSError, http.client.HTTPException) as e:
                reply["error"] = repr(e)
            finally:
                conn.close()

        client = threading.Thread(target=slow_request, daemon=True)
        client.start()
        wait_for_override(s, s.procs)
        sent_at = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        rc = wait_exit(proc, drain + GRACE + EXIT_BOUND)
        took = time.monotonic() - sent_at
        client.join(30)
        print(f"deferred answer due in 60 s: processor exited {took:.3f} s after SIGTERM "
              f"(drain delay {drain} s + grace period {GRACE} s); the client got {reply}")
        assert rc == 0, f"exit code {rc} after {took:.1f} s\n{proc.tail()}"
        assert drain + GRACE <= took < drain + GRACE + EXIT_BOUND
        log = proc.log.read_text()
        assert "grace period over" in log, proc.tail()
        assert "deferred answer abandoned at shutdown" in log, proc.tail()
        assert "message_timeout" not in log, proc.tail()  # not Envoy's doing
        assert not client.is_alive()


def test_second_sigterm_stops_at_once(tmp_path, short_tmp_dir):
    long_wait = 60  # drain delay and grace period: a stop that waited would time out below
    proc, addresses = start_processor(tmp_path, "tcp", short_tmp_dir, ["trivial"], extra_args=[
        "--drain-delay", str(long_wait), "--grace-period", str(long_wait)])
    try:
        proc.popen.send_signal(signal.SIGTERM)
        wait_until("the drain to begin", lambda: "draining for" in proc.log.read_text(), [proc])
        # Still serving: the drain keeps accepting.
        assert conftest.can_connect(("127.0.0.1", addresses[0][1]))
        assert proc.popen.poll() is None
        sent_at = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        rc = wait_exit(proc, EXIT_BOUND)
        took = time.monotonic() - sent_at
        print(f"second SIGTERM during a {long_wait} s drain: exited after {took:.3f} s")
        assert rc == 0, proc.tail()
        assert "stopping now" in proc.log.read_text()
    finally:
        proc.stop(signal.SIGKILL)
