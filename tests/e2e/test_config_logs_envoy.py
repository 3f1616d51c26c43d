"""The runner configured by environment variables alone, behind Envoy, logging JSON; clients
that speak HTTP/1.1 or TLS to its HTTP/2 port named in the log; bad values refused at start.

Every log line must parse as JSON (strictly: UTF-8, then json.loads), name the peer where a
connection is concerned, and a normal request must log nothing at info level."""
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import (TRIVIAL_TEMPLATE, Proc, can_connect, envoy_binary, envoy_config,
                      envoy_ready, free_ports, runner_binary, start_echo, wait_until)

PEER = re.compile(r"^127\.0\.0\.1:\d+$")
REQUESTS = 20


def start_with_env(name, argv, env, log_dir):
    log = Path(log_dir) / f"{name}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EXTPROC_")}
    full_env.pop("LOG_LEVEL", None)
    full_env.update(env)
    with open(log, "wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=full_env)
    return Proc(name, popen, log)


def json_lines(proc):
    lines = []
    for raw in proc.log.read_bytes().splitlines():
        text = raw.decode("utf-8")  # strict: a JSON line must be valid UTF-8
        lines.append(json.loads(text))
    return lines


def get(port, path, request_id):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"x-request-id": request_id})
        r = conn.getresponse()
        r.read()
        return r.status, r.getheader("x-extra-request-id")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def env_stack(tmp_path_factory):
    """Echo upstream, the trivial example configured only by EXTPROC_* variables (JSON logs at
    debug level, two workers, a 2 s grace period), and Envoy in front."""
    log_dir = tmp_path_factory.mktemp("e2e-env")
    listen_port, admin_port, echo_port, proc_port = free_ports(4)
    procs = []
    base_id = os.getpid() * 10 + 7
    try:
        procs.append(start_echo(log_dir, echo_port))
        processor = start_with_env("processor", [runner_binary()], {
            "EXTPROC_SERVICE": f"trivial@127.0.0.1:{proc_port}",
            "EXTPROC_LOG_FORMAT": "json",
            "EXTPROC_LOG_LEVEL": "debug",
            "EXTPROC_WORKERS": "2",
            "EXTPROC_GRACE_PERIOD": "2s",
        }, log_dir)
        procs.append(processor)
        wait_until("processor", lambda: can_connect(("127.0.0.1", proc_port)), procs)
        config = Path(log_dir) / "envoy.yaml"
        config.write_text(envoy_config(TRIVIAL_TEMPLATE, listen_port, admin_port, echo_port,
                                       {50051: ("tcp", proc_port)}))
        procs.append(start_with_env("envoy", [
            envoy_binary(), "-c", str(config), "--base-id", str(base_id),
            "--log-level", "warn", "--concurrency", "1"], {}, log_dir))
        wait_until("envoy", lambda: envoy_ready(admin_port) and
                   can_connect(("127.0.0.1", listen_port)), procs)
        yield {"listen": listen_port, "proc_port": proc_port, "processor": processor}
    finally:
        codes = {p.name: p.stop() for p in reversed(procs)}
        Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)
    assert codes.get("processor") == 0, processor.tail()


def test_env_only_configuration_serves_through_envoy(env_stack):
    # A request id with a quote and a backslash: the JSON line must still parse.
    ids = [f'{uuid.uuid4()}"\\x' for _ in range(REQUESTS)]
    for rid in ids:
        status, extra = get(env_stack["listen"], "/env", rid)
        assert (status, extra) == (200, rid)
    lines = json_lines(env_stack["processor"])
    served = [l for l in lines if l["level"] == "INFO"]
    assert [l["message"] for l in served] == \
        [f"serving TrivialExtProcService on 127.0.0.1:{env_stack['proc_port']}"], lines
    # At debug level each phase is logged with processor, phase, request id and peer.
    for rid in ids:
        mine = [l for l in lines if l.get("request_id") == rid]
        assert mine, f"no debug line for {rid!r}"
        for l in mine:
            assert l["level"] == "DEBUG"
            assert l["processor"] == "TrivialExtProcService"
            assert l["phase"] in ("request_headers", "response_headers")
            assert PEER.match(l["peer"]), l
            assert set(l) >= {"time", "level", "message"}


def test_a_normal_request_logs_nothing_at_info(env_stack):
    before = len(json_lines(env_stack["processor"]))
    for _ in range(REQUESTS):
        assert get(env_stack["listen"], "/quiet", str(uuid.uuid4()))[0] == 200
    new = json_lines(env_stack["processor"])[before:]
    assert new, "debug lines expected"
    assert [l for l in new if l["level"] != "DEBUG"] == []


def test_http1_client_on_the_grpc_port_is_named(env_stack):
    port = env_stack["proc_port"]
    out = subprocess.run(["curl", "-s", "-i", "--http1.1", "--max-time", "10",
                          f"http://127.0.0.1:{port}/hello"],
                         capture_output=True, timeout=20)
    reply = out.stdout.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 505 "), reply
    assert "cleartext HTTP/2" in reply and "http2_protocol_options" in reply
    line = wait_for_line(env_stack["processor"], "HTTP/1.x request on a cleartext HTTP/2 port")
    assert line["level"] == "WARN" and PEER.match(line["peer"]), line
    assert "bad client magic" not in env_stack["processor"].log.read_text()


def test_tls_client_on_the_grpc_port_is_named(env_stack):
    port = env_stack["proc_port"]
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                pass
    line = wait_for_line(env_stack["processor"], "TLS handshake on a cleartext HTTP/2 port")
    assert line["level"] == "WARN" and PEER.match(line["peer"]), line


def wait_for_line(proc, fragment):
    found = []

    def seen():
        found[:] = [l for l in json_lines(proc) if fragment in l["message"]]
        return bool(found)
    wait_until(f"a log line with {fragment!r}", seen, [proc], timeout=10)
    return found[0]


@pytest.mark.parametrize("env, expected", [
    ({"EXTPROC_SERVICE": "trivial", "EXTPROC_WORKERS": "many"},
     "EXTPROC_WORKERS: 'many' is not a whole number (allowed: 0 to 1024)"),
    ({"EXTPROC_SERVICE": "trivial", "EXTPROC_GRACE_PERIOD": "3h"},
     "EXTPROC_GRACE_PERIOD: unknown unit 'h' in '3h'"),
    ({"EXTPROC_SERVICE": "nope"}, "EXTPROC_SERVICE: unknown service 'nope'"),
    ({}, "--service (or EXTPROC_SERVICE) is required"),
])
def test_bad_environment_is_refused_at_start(tmp_path, env, expected):
    p = start_with_env("bad", [runner_binary()], env, tmp_path)
    assert p.popen.wait(10) == 2
    assert expected in p.log.read_text()


def test_flag_wins_over_environment(tmp_path):
    # EXTPROC_WORKERS is bad, but --workers is given, so the variable is never read.
    port, = free_ports(1)
    p = start_with_env("flag", [runner_binary(), "--workers", "1",
                                "--service", f"trivial@127.0.0.1:{port}"],
                       {"EXTPROC_WORKERS": "many", "EXTPROC_SERVICE": "nope"}, tmp_path)
    wait_until("processor", lambda: can_connect(("127.0.0.1", port)), [p])
    assert p.stop(signal.SIGTERM) == 0, p.tail()


def test_version(tmp_path):
    p = start_with_env("version", [runner_binary(), "--version"], {}, tmp_path)
    assert p.popen.wait(10) == 0
    assert re.match(r"extproc-examples \(libextproc \d+\.\d+\.\d+\)\n", p.log.read_text())
