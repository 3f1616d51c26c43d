"""Fixtures for Envoy-in-the-loop tests: a real Envoy, the echo upstream and a processor.

Everything listens on free loopback ports (or unix sockets) and is stopped afterwards.
  stack  the trivial processor alone (tests/e2e/envoy-trivial.yaml), once per module and per
         transport ("tcp", "unix"), so every test using it runs against both;
  chain  the demo itself: deploy/envoy.yaml with its addresses rewritten and the six example
         processors, so the tests exercise the very file the demo uses (its use-case listener
         and processors are tested in test_usecase_chain_envoy.py).

Environment:
  EXTPROC_EXAMPLES  processor runner binary (default: build/examples/extproc-examples)
  ENVOY             Envoy binary (default: .venv/bin/envoy, else `envoy` on PATH)
  EXTPROC_WORKERS   event-loop threads per processor runner (--workers; default: one per CPU)
  EXTPROC_TEST      extproc-test binary (default: tools/extproc-test/extproc-test beside the
                    runner's build)
A missing binary is a test error, not a skip: these tests must never pass by running nothing.
"""

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENVOY_TEMPLATE = REPO / "deploy" / "envoy.yaml"
TRIVIAL_TEMPLATE = REPO / "tests" / "e2e" / "envoy-trivial.yaml"
ECHO_SCRIPT = REPO / "tools" / "echo_upstream.py"
STARTUP_TIMEOUT = 20.0  # seconds; Envoy alone usually needs about one
LOG_TAIL_LINES = 40

_base_ids = itertools.count()


# ---------------------------------------------------------------- binaries and config


def runner_binary():
    path = Path(os.environ.get("EXTPROC_EXAMPLES", "build/examples/extproc-examples"))
    if not path.is_absolute():
        path = REPO / path
    if not os.access(path, os.X_OK):
        pytest.fail(f"processor runner not found or not executable: {path} "
                    "(build it, or point EXTPROC_EXAMPLES at it)", pytrace=False)
    return str(path)


@contextlib.contextmanager
def environment(values=None, **more):
    """os.environ with `values` (a dict) and `more` set, for the processes started inside (they
    inherit it), restored afterwards."""
    values = {**(values or {}), **more}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tool_binary(env_var, *parts):
    """A program of the runner's build (env_var, or parts below the build directory that holds
    the runner), failing the test when it is not there."""
    path = os.environ.get(env_var)
    if path:
        path = Path(path)
    else:
        runner = Path(os.environ.get("EXTPROC_EXAMPLES", "build/examples/extproc-examples"))
        path = runner.parent.parent.joinpath(*parts)
    if not path.is_absolute():
        path = REPO / path
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path.name} not found or not executable: {path} "
                    f"(build it, or point {env_var} at it)", pytrace=False)
    return str(path)


def extproc_test_binary():
    return tool_binary("EXTPROC_TEST", "tools", "extproc-test", "extproc-test")


def envoy_binary():
    path = os.environ.get("ENVOY") or REPO / ".venv" / "bin" / "envoy"
    if os.access(path, os.X_OK):
        return str(path)
    found = shutil.which("envoy")
    if not found:
        pytest.fail("envoy not found: run scripts/setup.sh or set ENVOY", pytrace=False)
    return found


USECASE_LISTENER = "socket_address: { address: 0.0.0.0, port_value: 8081 }"
PROCESSOR_PORT = re.compile(r"socket_address: \{ address: 127\.0\.0\.1, port_value: (5\d{4}) \}")


def template_processor_ports(template):
    """The demo processor ports (50051...) a template's clusters point at."""
    return {int(p) for p in PROCESSOR_PORT.findall(Path(template).read_text())}


def envoy_config(template, listen_port, admin_port, echo_port, processors, usecase_port=None):
    """An Envoy config file's text with its demo addresses replaced.

    processors maps each processor's demo port (50051...) to ("tcp", port) or ("unix", path).
    usecase_port replaces the demo's second listener (8081, deploy/envoy.yaml's use cases).
    Each demo value must occur exactly once, so an edit to the template that would make the
    rewrite silently miss fails here instead.
    """
    text = Path(template).read_text()
    replacements = [
        # The listener binds loopback only in tests: nothing outside should reach it.
        ("socket_address: { address: 0.0.0.0, port_value: 8080 }",
         f"socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }}"),
        ("port_value: 9901 }", f"port_value: {admin_port} }}"),
        ("port_value: 8000 }", f"port_value: {echo_port} }}"),
    ]
    if usecase_port is not None:
        replacements.append((USECASE_LISTENER, f"socket_address: {{ address: 127.0.0.1, "
                                               f"port_value: {usecase_port} }}"))
    for demo_port, (kind, where) in processors.items():
        replacements.append((
            f"socket_address: {{ address: 127.0.0.1, port_value: {demo_port} }}",
            f"pipe: {{ path: {where} }}" if kind == "unix"
            else f"socket_address: {{ address: 127.0.0.1, port_value: {where} }}"))
    for old, new in replacements:
        count = text.count(old)
        assert count == 1, f"{template}: expected {old!r} once, found it {count} times"
        text = text.replace(old, new)
    assert "address: 0.0.0.0" not in text, f"{template}: a listener left on every interface"
    return text


_handed_out = set()  # every port free_ports() has returned in this test run


def free_ports(n):
    """n distinct free loopback ports, never one handed out before in this run.

    A port is only free until someone binds it, and two of our servers bound to one port would
    not even fail: Envoy and our processor both use SO_REUSEPORT, and the kernel would split the
    traffic between them. So each port chosen here is chosen once."""
    chosen, held = [], []
    try:
        while len(chosen) < n:
            s = socket.socket()
            held.append(s)  # held until all are chosen, so the kernel picks new ones
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                chosen.append(port)
        return chosen
    finally:
        for s in held:
            s.close()


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines=LOG_TAIL_LINES):
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as e:
            text = [f"(no log: {e})"]
        return f"--- {self.name} (pid {self.popen.pid}, rc {self.popen.poll()}) {self.log}\n" + \
            "\n".join(text)

    def stop(self, sig=signal.SIGTERM, timeout=5.0):
        """Signals the process and waits; kills it if it lingers. Returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def start(name, argv, log_dir):
    log = Path(log_dir) / f"{name}.log"
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
    return Proc(name, popen, log)


def wait_until(what, ready, procs, timeout=STARTUP_TIMEOUT):
    """Polls ready() until true; fails early, with every log's tail, if a process dies."""
    deadline = time.monotonic() + timeout
    while True:
        dead = [p for p in procs if p.popen.poll() is not None]
        if dead:
            pytest.fail(f"{dead[0].name} exited while waiting for {what}\n" +
                        "\n".join(p.tail() for p in procs), pytrace=False)
        if ready():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n" +
                        "\n".join(p.tail() for p in procs), pytrace=False)
        time.sleep(0.05)


def can_connect(address):
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(0.5)
        try:
            s.connect(address)
            return True
        except OSError:
            return False


def envoy_ready(admin_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=0.5) as r:
            return r.status == 200
    except OSError:  # refused while starting, or 503 while initializing
        return False


def start_echo(log_dir, port):
    proc = start("echo", [sys.executable, str(ECHO_SCRIPT), "--port", str(port)], log_dir)
    wait_until("echo upstream", lambda: can_connect(("127.0.0.1", port)), [proc])
    return proc


def start_processor(log_dir, transport, sock_dir, services, name="processor", extra_args=()):
    """Starts one runner serving each of `services` (short names) on its own address: a free
    TCP port, or a unix socket in sock_dir.

    Returns (proc, addresses) with addresses[i] = ("tcp", port) or ("unix", path).
    """
    ports = free_ports(len(services))
    addresses, specs, probes = [], [], []
    for service, port in zip(services, ports):
        if transport == "unix":
            path = os.path.join(sock_dir, f"{service}.sock")
            addresses.append(("unix", path))
            specs.append(f"{service}@unix:{path}")
            probes.append(path)
        else:
            addresses.append(("tcp", port))
            specs.append(f"{service}@127.0.0.1:{port}")
            probes.append(("127.0.0.1", port))
    workers = os.environ.get("EXTPROC_WORKERS")
    if workers:
        extra_args = ["--workers", workers, *extra_args]
    if "--drain-delay" not in extra_args:
        # Stacks stop Envoy before the processor, so there is nothing to drain and no health
        # checker to wait for; tests of the drain (test_drain_envoy.py) choose their own.
        extra_args = ["--drain-delay", "0", *extra_args]
    proc = start(name, [runner_binary(), "--service", ",".join(specs), *extra_args], log_dir)
    wait_until(f"processor on {', '.join(specs)}",
               lambda: all(can_connect(p) for p in probes), [proc])
    return proc, addresses


@pytest.fixture
def short_tmp_dir():
    # sun_path holds ~107 bytes and pytest's tmp dirs can be longer, so use a short /tmp dir.
    path = tempfile.mkdtemp(prefix="extproc-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- the stack


@dataclass
class Stack:
    transport: str
    port: int  # Envoy's listener
    admin_port: int
    echo_port: int
    log_dir: Path
    procs: list = field(default_factory=list)
    usecase_port: int = None  # the template's second listener (demo: 8081), if it has one

    def logs(self):
        return "\n".join(p.tail() for p in self.procs)


DEMO_SERVICES = ["trivial", "timer", "echo", "digest", "decorated", "context"]  # ports 50051...
USECASE_SERVICES = ["auth", "idempotency", "access-log"]  # ports 50057... in deploy/envoy.yaml


@contextlib.contextmanager
def running_stack(log_dir, template, services, transport="tcp", processor_args=()):
    """Echo upstream, one runner serving `services` (their demo ports are 50051, 50052, ... in
    this order) and Envoy configured from `template`; all stopped on exit. The template's
    processors not among `services` point at free ports nothing listens on (Envoy's health
    checks fail there), never at a running demo's; a second listener (8081) gets a free port,
    Stack.usecase_port."""
    sock_dir = tempfile.mkdtemp(prefix="extproc-")  # short path: see short_tmp_dir()
    listen_port, admin_port, echo_port = free_ports(3)
    s = Stack(transport, listen_port, admin_port, echo_port, Path(log_dir))
    if USECASE_LISTENER in Path(template).read_text():
        s.usecase_port = free_ports(1)[0]
    # A base id unique to this run lets several Envoys (and test runs) share the machine.
    base_id = os.getpid() * 10 + next(_base_ids) % 10
    try:
        s.procs.append(start_echo(log_dir, s.echo_port))
        processor, addresses = start_processor(log_dir, transport, sock_dir, services,
                                               extra_args=processor_args)
        s.procs.append(processor)
        demo_ports = {50051 + i: a for i, a in enumerate(addresses)}
        for port in sorted(template_processor_ports(template) - set(demo_ports)):
            demo_ports[port] = ("tcp", free_ports(1)[0])
        config = Path(log_dir) / "envoy.yaml"
        config.write_text(envoy_config(template, s.port, s.admin_port, s.echo_port, demo_ports,
                                       s.usecase_port))
        ready_ports = [s.port] + ([s.usecase_port] if s.usecase_port else [])
        s.procs.append(start("envoy", [
            envoy_binary(), "-c", str(config), "--base-id", str(base_id),
            "--log-level", "warn", "--concurrency", "2"], log_dir))
        wait_until("envoy /ready and its listeners",
                   lambda: envoy_ready(s.admin_port) and
                   all(can_connect(("127.0.0.1", p)) for p in ready_ports), s.procs)
        yield s
    finally:
        codes = {p.name: p.stop() for p in reversed(s.procs)}  # Envoy first: nothing calls
        shutil.rmtree(sock_dir, ignore_errors=True)             # the others while they stop
        # Envoy leaves its hot-restart shared memory behind; with a new base id per run these
        # would pile up in /dev/shm.
        Path(f"/dev/shm/envoy_shared_memory_{base_id * 10}").unlink(missing_ok=True)
    # After the load: a clean exit (under the sanitizers, also no leak and no error report).
    if codes.get("processor", 0) != 0:
        pytest.fail(f"processor exited with {codes['processor']}\n" +
                    next(p.tail(80) for p in s.procs if p.name == "processor"), pytrace=False)


@pytest.fixture(scope="module", params=["tcp", "unix"])
def stack(request, tmp_path_factory):
    """Envoy with the trivial processor alone (tests/e2e/envoy-trivial.yaml), over TCP and over
    a unix socket."""
    log_dir = tmp_path_factory.mktemp(f"e2e-{request.param}")
    with running_stack(log_dir, TRIVIAL_TEMPLATE, ["trivial"], request.param) as s:
        yield s


@pytest.fixture(scope="module")
def trivial_processors(tmp_path_factory):
    """The trivial processor on a loopback port and, from a second runner, on a unix socket.
    Yields {"tcp": (target, pid), "unix": (target, pid)}; after the module, both must exit
    cleanly (under the sanitizers: no leak, no error report) and must have logged no warning."""
    log_dir = tmp_path_factory.mktemp("trivial")
    sock_dir = tempfile.mkdtemp(prefix="extproc-")  # sun_path is short
    procs, targets = [], {}
    try:
        for transport in ("tcp", "unix"):
            proc, [(kind, where)] = start_processor(log_dir, transport, sock_dir, ["trivial"],
                                                    name=f"processor-{transport}")
            procs.append(proc)
            target = f"unix:{where}" if kind == "unix" else f"127.0.0.1:{where}"
            targets[transport] = (target, proc.popen.pid)
        yield targets
    finally:
        codes = {p.name: (p.stop(), p) for p in procs}
        shutil.rmtree(sock_dir, ignore_errors=True)
    for name, (code, proc) in codes.items():
        if code != 0:
            pytest.fail(f"{name} exited with {code}\n{proc.tail(80)}", pytrace=False)
        bad = [line for line in proc.log.read_text(errors="replace").splitlines()
               if " WARN " in line or " ERROR " in line]
        assert not bad, f"{name} logged:\n" + "\n".join(bad[:20])


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The demo: deploy/envoy.yaml with the six example processors chained."""
    log_dir = tmp_path_factory.mktemp("e2e-chain")
    with running_stack(log_dir, ENVOY_TEMPLATE, DEMO_SERVICES) as s:
        yield s
