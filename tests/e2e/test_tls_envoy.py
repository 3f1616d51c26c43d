"""TLS and mutual TLS between real Envoy and the processor runner, with certificates made here by
the `openssl` command (an EC P-256 CA, a server certificate for localhost and 127.0.0.1, a client
certificate for Envoy).

One Envoy, two trivial processors and the echo upstream serve every test of the module:
  - "tls"      a processor with --tls-cert/--tls-key; Envoy's cluster validates its certificate
               against the CA (SAN localhost, SNI localhost) and offers ALPN h2;
  - "mtls"     a processor that also has --tls-client-ca; Envoy's cluster presents the client
               certificate;
  - "nocert"   the same mTLS processor, through a cluster WITHOUT a client certificate: the
               processor refuses the handshake, so the ext_proc stream fails and Envoy
               (failure_mode_allow false) answers 500.
Each cluster has its own Envoy listener. The reload test runs load through the mTLS listener
while the server certificate is renewed twice: once with SIGHUP, once picked up by the file
watcher alone; no request may fail, and a new connection (`openssl s_client -alpn h2`) must see
the new serial number. No timed assertions; waits are bounded.
"""

import http.client
import json
import os
import re
import signal
import subprocess
import threading
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import conftest
from conftest import (envoy_binary, envoy_ready, free_ports, start, start_echo, start_processor,
                      wait_until)

TYPES = "type.googleapis.com/envoy.extensions."
UPSTREAM_TLS = TYPES + "transport_sockets.tls.v3.UpstreamTlsContext"
CLUSTERS = ("tls", "mtls", "nocert")
LOAD_THREADS = 4
LOAD_MAX_REQUESTS = 20000  # a bound on the load, never reached in a normal run
WATCH_WAIT = 15.0  # seconds: the watcher checks every 2 s; sanitizer builds are slower


# ---------------------------------------------------------------- certificates


def openssl(cwd, *args):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(d):
    openssl(d, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    openssl(d, "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=extproc test CA",
            "-days", "2", "-out", "ca.pem")


def make_cert(d, name, serial, server, new_key=True):
    """name.pem signed by the CA with serial number 0xSERIAL, and name.key (kept unless new_key):
    for a server (SAN localhost and 127.0.0.1) or a client. The certificate is written aside and
    renamed over name.pem, as certificate managers replace it."""
    if new_key:
        openssl(d, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key")
    ext = Path(d) / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                   if server else "extendedKeyUsage=clientAuth\n")
    openssl(d, "req", "-new", "-key", f"{name}.key", "-subj",
            "/CN=localhost" if server else "/CN=envoy", "-out", f"{name}.csr")
    openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", f"0x{serial}", "-days", "2", "-extfile", ext.name,
            "-out", f"{name}.pem.new")
    os.replace(Path(d) / f"{name}.pem.new", Path(d) / f"{name}.pem")


def served_serial(port, d):
    """The serial number (hex, as openssl prints it) of the certificate a new TLS connection to
    127.0.0.1:port is served, with ALPN h2 and the client certificate."""
    hello = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-alpn", "h2", "-CAfile", "ca.pem", "-cert", "client.pem", "-key", "client.key",
         "-verify_return_error"],
        cwd=d, input=b"", capture_output=True, timeout=30)
    assert b"ALPN protocol: h2" in hello.stdout, hello.stdout.decode(errors="replace")
    serial = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=hello.stdout,
                            capture_output=True, timeout=30, check=True)
    return serial.stdout.decode().strip().removeprefix("serial=")


# ---------------------------------------------------------------- Envoy configuration


def _address(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _listener(name, port):
    ext_proc = {
        "@type": TYPES + "filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": name}},
        "stat_prefix": name,
        "failure_mode_allow": False,  # a failed processor stream fails the request (500)
        "message_timeout": "2s",
        "processing_mode": {"request_header_mode": "SEND", "response_header_mode": "SEND",
                            "request_body_mode": "NONE", "response_body_mode": "NONE",
                            "request_trailer_mode": "SKIP", "response_trailer_mode": "SKIP"},
    }
    hcm = {
        "@type": TYPES + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "preserve_external_request_id": True,
        "always_set_request_id_in_response": True,
        "route_config": {"virtual_hosts": [{
            "name": "all", "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        "route": {"cluster": "upstream", "timeout": "20s"}}]}]},
        "http_filters": [
            {"name": "envoy.filters.http.ext_proc", "typed_config": ext_proc},
            {"name": "envoy.filters.http.router",
             "typed_config": {"@type": TYPES + "filters.http.router.v3.Router"}}],
    }
    return {"name": name, "address": _address(port), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}


def _processor_cluster(name, port, cert_dir, client_cert):
    tls = {
        "alpn_protocols": ["h2"],
        "validation_context": {
            "trusted_ca": {"filename": f"{cert_dir}/ca.pem"},
            "match_typed_subject_alt_names": [
                {"san_type": "DNS", "matcher": {"exact": "localhost"}}],
        },
    }
    if client_cert:
        tls["tls_certificates"] = [{
            "certificate_chain": {"filename": f"{cert_dir}/client.pem"},
            "private_key": {"filename": f"{cert_dir}/client.key"}}]
    return {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": TYPES + "upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": UPSTREAM_TLS, "sni": "localhost", "common_tls_context": tls}},
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}]},
    }


def envoy_config(listen_ports, admin_port, echo_port, tls_port, mtls_port, cert_dir):
    clusters = [
        {"name": "upstream", "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": "upstream", "endpoints": [
             {"lb_endpoints": [{"endpoint": {"address": _address(echo_port)}}]}]}},
        _processor_cluster("tls", tls_port, cert_dir, client_cert=False),
        _processor_cluster("mtls", mtls_port, cert_dir, client_cert=True),
        _processor_cluster("nocert", mtls_port, cert_dir, client_cert=False),
    ]
    doc = {"admin": {"address": _address(admin_port)},
           "static_resources": {
               "listeners": [_listener(n, listen_ports[n]) for n in CLUSTERS],
               "clusters": clusters}}
    return json.dumps(doc, indent=2) + "\n"


# ---------------------------------------------------------------- the stack


@dataclass
class TlsStack:
    cert_dir: str
    listen: dict  # cluster name -> Envoy listener port
    tls_port: int
    mtls_port: int
    metrics_port: int  # the mTLS processor's
    tls_proc: conftest.Proc
    mtls_proc: conftest.Proc
    procs: list = field(default_factory=list)

    def logs(self):
        return "\n".join(p.tail() for p in self.procs)


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("e2e-tls")
    cert_dir = str(tmp_path_factory.mktemp("certs"))
    make_ca(cert_dir)
    make_cert(cert_dir, "server", 1001, server=True)
    make_cert(cert_dir, "client", 2001, server=False)
    listen_ports = dict(zip(CLUSTERS, free_ports(len(CLUSTERS))))
    admin_port, echo_port, metrics_port = free_ports(3)
    base_id = os.getpid() * 10 + next(conftest._base_ids) % 10
    tls_args = ["--tls-cert", f"{cert_dir}/server.pem", "--tls-key", f"{cert_dir}/server.key"]
    procs = []
    try:
        procs.append(start_echo(log_dir, echo_port))
        tls_proc, tls_addr = start_processor(log_dir, "tcp", cert_dir, ["trivial"],
                                             name="processor-tls", extra_args=tls_args)
        procs.append(tls_proc)
        mtls_proc, mtls_addr = start_processor(
            log_dir, "tcp", cert_dir, ["trivial"], name="processor-mtls",
            extra_args=[*tls_args, "--tls-client-ca", f"{cert_dir}/ca.pem",
                        "--metrics-listen", f"127.0.0.1:{metrics_port}"])
        procs.append(mtls_proc)
        config = Path(log_dir) / "envoy.yaml"
        config.write_text(envoy_config(listen_ports, admin_port, echo_port, tls_addr[0][1],
                                       mtls_addr[0][1], cert_dir))
        procs.append(start("envoy", [envoy_binary(), "-c", str(config), "--base-id",
                                     str(base_id), "--log-level", "warn", "--concurrency", "2"],
                           log_dir))
        wait_until("envoy /ready", lambda: envoy_ready(admin_port), procs)
        yield TlsStack(cert_dir, listen_ports, tls_addr[0][1], mtls_addr[0][1], metrics_port,
                       tls_proc, mtls_proc, procs)
    finally:
        codes = {p.name: p.stop() for p in reversed(procs)}
        Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)
    for name in ("processor-tls", "processor-mtls"):
        if codes.get(name, 0) != 0:
            pytest.fail(f"{name} exited with {codes[name]}\n" +
                        next(p.tail(80) for p in procs if p.name == name), pytrace=False)


def get(port, path="/", conn=None):
    """One GET through Envoy: (status, x-request-id sent, response headers)."""
    rid = str(uuid.uuid4())
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"x-request-id": rid})
        resp = conn.getresponse()
        resp.read()
        return resp.status, rid, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        if own:
            conn.close()


def processed(status, rid, headers):
    """The trivial processor saw the request: it copies x-request-id into x-extra-request-id."""
    return status == 200 and headers.get("x-extra-request-id") == rid


def metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)} (\d+)$", text, re.M)
    assert m, f"{name} not in the metrics:\n{text}"
    return int(m[1])


# ---------------------------------------------------------------- tests


def test_requests_through_tls_and_mutual_tls(tls_stack):
    s = tls_stack
    for cluster in ("tls", "mtls"):
        for _ in range(5):
            status, rid, headers = get(s.listen[cluster])
            assert processed(status, rid, headers), (cluster, status, headers, s.logs())
    # Both processors were reached over TLS only: nothing refused so far.
    assert "TLS handshake failed" not in s.tls_proc.log.read_text()
    assert "TLS handshake failed" not in s.mtls_proc.log.read_text()


def test_envoy_without_client_certificate_is_refused(tls_stack):
    s = tls_stack
    before = metric(s.metrics_port, "extproc_tls_handshake_failures_total")
    status, rid, headers = get(s.listen["nocert"])
    # The handshake is refused, the ext_proc stream fails, and with failure_mode_allow false
    # Envoy fails the request rather than pass it on unprocessed.
    assert status == 500, (status, headers)
    assert "x-extra-request-id" not in headers
    wait_until("the refused handshake in the processor's log",
               lambda: "peer did not return a certificate" in s.mtls_proc.log.read_text(),
               s.procs, timeout=10)
    assert metric(s.metrics_port, "extproc_tls_handshake_failures_total") > before
    # The clusters with a certificate are unaffected.
    assert processed(*get(s.listen["mtls"]))


class Load:
    """LOAD_THREADS clients sending GETs through one Envoy listener on kept-alive connections
    until stopped; every response must be 200 and processed."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures = []
        self.threads = [threading.Thread(target=self.run) for _ in range(LOAD_THREADS)]

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while not self.stop.is_set() and self.ok + len(self.failures) < LOAD_MAX_REQUESTS:
                try:
                    result = get(self.port, "/load", conn)
                except (OSError, http.client.HTTPException) as e:
                    result = (repr(e), None, {})
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                with self.lock:
                    if processed(*result):
                        self.ok += 1
                    else:
                        self.failures.append(result[0])
        finally:
            conn.close()

    def count(self):
        with self.lock:
            return self.ok

    def wait_for_more(self, n, procs):
        target = self.count() + n
        wait_until(f"{n} more requests under load", lambda: self.count() >= target, procs,
                   timeout=30)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def reload_lines(proc, how, serial):
    return [line for line in proc.log.read_text().splitlines()
            if f"TLS: reloaded ({how})" in line and f"serial {serial}," in line]


def test_reload_under_load(tls_stack):
    s = tls_stack
    d = s.cert_dir
    assert served_serial(s.mtls_port, d) == "1001"
    ok_before = metric(s.metrics_port, 'extproc_tls_reloads_total{result="ok"}')
    with Load(s.listen["mtls"]) as load:
        load.wait_for_more(50, s.procs)
        # Renewed (same key, as certificate renewals usually keep it), then SIGHUP.
        make_cert(d, "server", 1002, server=True, new_key=False)
        s.mtls_proc.popen.send_signal(signal.SIGHUP)
        wait_until("the SIGHUP reload", lambda: reload_lines(s.mtls_proc, "SIGHUP", "1002"),
                   s.procs, timeout=10)
        assert served_serial(s.mtls_port, d) == "1002"
        load.wait_for_more(50, s.procs)
        # Renewed again, no signal: the file watcher picks it up.
        make_cert(d, "server", 1003, server=True, new_key=False)
        wait_until("the watcher's reload",
                   lambda: reload_lines(s.mtls_proc, "files changed", "1003"), s.procs,
                   timeout=WATCH_WAIT)
        assert served_serial(s.mtls_port, d) == "1003"
        load.wait_for_more(50, s.procs)
    print(f"reload under load: {load.ok} requests processed, {len(load.failures)} failed")
    assert load.failures == [], (load.failures[:10], s.logs())
    assert load.ok >= 150
    assert metric(s.metrics_port, 'extproc_tls_reloads_total{result="ok"}') >= ok_before + 2
    assert metric(s.metrics_port, 'extproc_tls_reloads_total{result="failed"}') == 0
    # New Envoy connections validate the renewed certificate too.
    assert processed(*get(s.listen["mtls"]))
