"""extproc-test (tools/extproc-test) as its users meet it, against the trivial processor:
scenario file errors, exit codes, the three reports, --filter, golden files, unix sockets,
parallel runs, and a server that is not there. Its judgments of replies are tested against a
misbehaving server in test_scenarios_envoy.py, where real Envoy shows the same.
"""

import json
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET

import pytest

from conftest import extproc_test_binary as tool_binary
from conftest import free_ports, start_processor

RUN_TIMEOUT = 60  # seconds; a run takes well under one


def run_tool(*args, expect_rc=None):
    argv = [tool_binary(), *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if expect_rc is not None:
        assert done.returncode == expect_rc, \
            f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def trivial(trivial_processors):
    """The trivial processor's targets: {"tcp": "127.0.0.1:PORT", "unix": "unix:PATH"}."""
    return {transport: target for transport, (target, _) in trivial_processors.items()}


PASSING = """
scenarios:
  - name: copies the request id
    request:
      headers: {":path": /a, x-request-id: r-1}
    response:
      body: [hel, lo]
    expect:
      upstream:
        headers: {x-extra-request-id: r-1, x-never: null}
      client:
        status: 200
        headers: {x-extra-request-id: r-1}
        body: hello
"""

FAILING = """
scenarios:
  - name: right
    request:
      headers: {x-request-id: r-2}
    expect:
      upstream: {headers: {x-extra-request-id: r-2}}
  - name: wrong header and status
    request:
      headers: {x-request-id: r-3}
    expect:
      upstream: {headers: {x-extra-request-id: not-r-3}}
      client: {status: 204}
  - name: expects a judgment that is not made
    request:
      headers: {x-request-id: r-4}
    expect:
      envoy_says: [value_only]
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_passing_file(trivial, tmp_path, transport):
    path = write(tmp_path, "pass.yaml", PASSING)
    done = run_tool("--target", trivial[transport], path, expect_rc=0)
    assert "PASS" in done.stdout and "1 passed, 0 failed" in done.stdout, done.stdout


def test_failures_are_named_and_reported_three_ways(trivial, tmp_path):
    path = write(tmp_path, "fail.yaml", FAILING)
    junit = tmp_path / "report.xml"
    done = run_tool("--target", trivial["tcp"], "--json", "-", "--junit", junit, "-q", path,
                    expect_rc=1)
    report = json.loads(done.stdout)
    assert (report["passed"], report["failed"], report["errors"], report["skipped"]) == (1, 2, 0, 0)
    by_name = {s["name"]: s for s in report["scenarios"]}
    assert by_name["right"]["status"] == "passed" and by_name["right"]["failures"] == []
    wrong = by_name["wrong header and status"]
    assert wrong["status"] == "failed"
    assert any('x-extra-request-id: expected "not-r-3", got "r-3"' in f for f in wrong["failures"])
    assert any("status: expected 204, got 200" in f for f in wrong["failures"])
    # What the tool saw is in the report, as Envoy would forward it.
    upstream = dict(map(tuple, wrong["outcome"]["upstream"]["headers"]))
    assert upstream["x-extra-request-id"] == "r-3" and upstream[":path"] == "/"
    assert any("envoy_says: expected value_only" in f
               for f in by_name["expects a judgment that is not made"]["failures"])
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "2", "0")
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert sorted(failed) == ["expects a judgment that is not made", "wrong header and status"]


def test_filter_skips_the_rest(trivial, tmp_path):
    path = write(tmp_path, "fail.yaml", FAILING)
    done = run_tool("--target", trivial["tcp"], "--filter", "right", "--json", "-", "-q", path,
                    expect_rc=0)
    report = json.loads(done.stdout)
    assert (report["passed"], report["failed"], report["skipped"]) == (1, 0, 2)


def test_golden_files_are_written_then_compared(trivial, tmp_path):
    path = write(tmp_path, "golden.yaml", """
scenarios:
  - name: golden
    golden: golden/out.json
    request:
      headers: {x-request-id: g-1}
""")
    run_tool("--target", trivial["tcp"], path, expect_rc=1)  # no golden file yet
    run_tool("--target", trivial["tcp"], "--update-golden", path, expect_rc=0)
    golden = tmp_path / "golden" / "out.json"
    saved = json.loads(golden.read_text())
    assert ["x-extra-request-id", "g-1"] in saved["upstream"]["headers"]
    run_tool("--target", trivial["tcp"], path, expect_rc=0)
    golden.write_text(golden.read_text().replace('"g-1"', '"g-2"'))
    done = run_tool("--target", trivial["tcp"], path, expect_rc=1)
    assert "golden:" in done.stdout and "differs" in done.stdout, done.stdout


def test_many_scenarios_in_parallel(trivial, tmp_path):
    scenarios = "".join(f"""
  - name: parallel {i}
    request: {{headers: {{x-request-id: p-{i}}}}}
    expect: {{client: {{headers: {{x-extra-request-id: p-{i}}}}}}}
""" for i in range(40))
    path = write(tmp_path, "many.yaml", "scenarios:" + scenarios)
    done = run_tool("--target", trivial["tcp"], "--jobs", 8, path, expect_rc=0)
    assert "40 passed, 0 failed" in done.stdout, done.stdout


# A "billion laughs" file: seven levels of ten aliases each, ten million strings expanded.
LAUGHS = "scenarios:\n  - name: lol\n    expect:\n      dynamic_metadata:\n" + "".join(
    f"        l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else '"lol"'] * 10) + "]\n"
    for i in range(7))


@pytest.mark.parametrize("text,message", [
    ("scenarios:\n  - name: a\n    expcet: {}\n", "3: unknown key 'expcet' in a scenario"),
    ("scenarios:\n  - name: a\n    processing_mode: {request_body_mode: CHUNKED}\n",
     "3: request_body_mode must be NONE, STREAMED"),
    ("scenarios: [\n", "malformed YAML"),
    ("scenarios: []\n", "needs a non-empty list under `scenarios`"),
    ("scenarios:\n  - name: a\n  - name: a\n", "two scenarios are named 'a'"),
    ("scenarios:\n  - request: {}\n", "a scenario needs a name"),
    ("scenarios:\n  - name: a\n    fault: {cancel_after: -1}\n", "cancel_after must be a whole"),
    ("scenarios:\n  - name: a\n    expect: {client: {status: 2000}}\n",
     "status must be a whole number from 0 to 999"),
    ("scenario:\n  - name: a\n", "unknown key 'scenario' in the file"),
    ("scenarios:\n  - name: a\n    processing_mode: {response_body_mode: FULL_DUPLEX_STREAMED}\n",
     "FULL_DUPLEX_STREAMED response bodies need response_trailer_mode SEND"),
    # What hostile files could do through YAML aliases, refused before it is done.
    ("scenarios:\n  - name: cycle\n    expect:\n      dynamic_metadata: &a {x: *a}\n",
     "nested deeper than 32"),
    (LAUGHS, "larger than 100000 nodes"),
    ("scenarios: " + "[" * 20000 + "]" * 20000 + "\n", "nested deeper than 64 levels"),
    ("scenarios:\n  - name: bomb\n    request:\n      body: [&c {repeat: x, bytes: 200000000}, *c]\n",
     "bodies add up to more than 256 MiB"),
    ("scenarios:\n  - name: a\n    request: {headers: {\"x-a\\0b\": v}}\n", "without NUL"),
    ("scenarios:\n  - name: a\n    request: {headers: {x-a: \"v\\r\\nx-b: w\"}}\n", "CR or LF"),
])
def test_scenario_file_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "bad.yaml", text)
    done = run_tool("--target", "127.0.0.1:1", path, expect_rc=2)
    assert str(path) in done.stderr and message in done.stderr, done.stderr


@pytest.mark.parametrize("target", ["[::1", ":80", "127.0.0.1:99999", "127.0.0.1:80abc",
                                    "localhost:80", "unix:", "unix:/" + "x" * 120])
def test_bad_targets_are_usage_errors(tmp_path, target):
    path = write(tmp_path, "pass.yaml", PASSING)
    assert "bad target" in run_tool("--target", target, path, expect_rc=2).stderr


def test_golden_must_be_a_regular_file(trivial, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    path = write(tmp_path, "golden.yaml", "scenarios:\n  - name: g\n    golden: fifo\n")
    done = run_tool("--target", trivial["tcp"], path, expect_rc=1)  # at once, not blocked
    assert "not a regular file" in done.stdout, done.stdout


def test_usage_errors():
    assert "--target is required" in run_tool("x.yaml", expect_rc=2).stderr
    assert "no scenario file" in run_tool("--target", "127.0.0.1:1", expect_rc=2).stderr
    assert "--jobs takes" in run_tool("-t", "127.0.0.1:1", "-j", "0", "x.yaml", expect_rc=2).stderr
    assert "No such file" in run_tool("-t", "127.0.0.1:1", "missing.yaml", expect_rc=2).stderr
    assert run_tool("--help", expect_rc=0).stdout.startswith("usage: extproc-test")


def test_nothing_listening_is_an_error_not_a_pass(tmp_path):
    path = write(tmp_path, "pass.yaml", PASSING)
    [port] = free_ports(1)
    # --json - alone: the report is all there is on stdout.
    done = run_tool("--target", f"127.0.0.1:{port}", "--json", "-", path, expect_rc=1)
    report = json.loads(done.stdout)
    assert report["scenarios"][0]["status"] == "error", report
    assert (report["failed"], report["errors"]) == (0, 1)
    assert "Connection refused" in report["scenarios"][0]["failures"][0], report
    assert done.stderr == "", done.stderr  # said once, in the report


def test_mutual_tls(tmp_path):
    """A processor that asks for a client certificate: the tool passes with one (verifying the
    server against the CA and the name), and cannot play without one."""
    from test_tls_envoy import make_ca, make_cert
    make_ca(tmp_path)
    make_cert(tmp_path, "server", "1001", server=True)
    make_cert(tmp_path, "client", "2001", server=False)
    sock_dir = tempfile.mkdtemp(prefix="extproc-")
    proc, [(_, port)] = start_processor(
        tmp_path, "tcp", sock_dir, ["trivial"], name="processor-mtls",
        extra_args=["--tls-cert", tmp_path / "server.pem", "--tls-key", tmp_path / "server.key",
                    "--tls-client-ca", tmp_path / "ca.pem"])
    try:
        path = write(tmp_path, "pass.yaml", PASSING)
        tls = ["--target", f"127.0.0.1:{port}", "--tls", "--ca", tmp_path / "ca.pem",
               "--sni", "localhost"]
        run_tool(*tls, "--cert", tmp_path / "client.pem", "--key", tmp_path / "client.key",
                 path, expect_rc=0)
        done = run_tool(*tls, "--json", "-", "-q", path, expect_rc=1)
        assert json.loads(done.stdout)["scenarios"][0]["status"] in ("error", "failed")
    finally:
        code = proc.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert code == 0, proc.tail(80)
