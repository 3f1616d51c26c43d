"""Every scenario file (scenarios/**/*.yaml, docs/scenarios.md) played through real Envoy, in
every release tests/scenarios/envoy-versions.txt lists.

extproc-test plays Envoy's side of ext_proc itself; these tests keep it honest. One runner
(extproc-examples) serves every example processor the files name (their `service`;
`foreign:NAME` is started by scripts/foreign_servers.sh), and for each Envoy release one Envoy,
configured by tests/scenarios/envoy_run.py with a listener per distinct filter setting,
forwards to a scripted upstream in this process. Each scenario is one test,
`FILE::NAME::RELEASE` (select with -k; pytest cannot take such an id on its command line): its
request goes through that release's Envoy, and what the upstream received and the client got
must meet the scenario's `expect.upstream` and `expect.client` (and `expect.dynamic_metadata`,
read from Envoy's access log). Scenarios marked `envoy: {skip: ...}` are reported as skipped
with their reason; a file that does not load, a fault scenario without such a mark, a filter
setting Envoy refuses, a service that did not start and a release not installed
(scripts/setup_envoy_versions.sh) are failures. The scenarios record what older releases do
otherwise, as the scenarios record it (`envoy: {differs: ...}`; expected failures).

All the Envoys start together and stay up for the module; a scenario is played through every
release at once (each Envoy has its own upstream), one scenario after another.

Each file is also played by extproc-test against the same processor (test_tool: every
scenario must pass, those marked `envoy: {skip}` included), and on the release the tool models
(TOOL_MODELS), each scenario's test checks the tool's outcome against the expectations and
against what Envoy did: any difference fails.

Environment (besides conftest.py's EXTPROC_EXAMPLES and EXTPROC_WORKERS):
  EXTPROC_SCENARIOS  scenario files or directories to run instead of scenarios/, separated
                     by ':'
"""

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import (REPO, can_connect, environment, extproc_test_binary, free_ports,
                      runner_binary, start, start_processor, wait_until)

sys.path.insert(0, str(REPO / "tests" / "scenarios"))
import envoy_run  # noqa: E402

SCENARIO_DIR = REPO / "scenarios"
VERSIONS_FILE = REPO / "tests" / "scenarios" / "envoy-versions.txt"
ENVOY_VENVS = REPO / ".venv-envoy"
# `service: foreign:NAME` names a server that is not ours, started by this script.
FOREIGN_PREFIX = "foreign:"
FOREIGN_SCRIPT = REPO / "scripts" / "foreign_servers.sh"
# The Envoy release extproc-test's judgments describe.
TOOL_MODELS = "1.40"


# ---------------------------------------------------------------- extproc-test
#
# run_tool() runs the tool on one scenario file against the processor the file names, listening
# at target_address ("127.0.0.1:PORT"), and returns its parsed `--json` report; tool_outcome()
# picks one scenario's outcome out of that report, in envoy_run.run()'s shape ({upstream:
# {reached, headers, body, trailers}, client: {status, headers, body, trailers}}).


def run_tool(file, target_address):
    """extproc-test's report on `file` (a Path) played against target_address."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        # Exit status 1 only says a scenario failed; the report tells which and why.
        done = subprocess.run([extproc_test_binary(), "--target", target_address, "--json",
                               out.name, "--quiet", str(file)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode not in (0, 1):
            pytest.fail(f"extproc-test on {file} exited with {done.returncode}:\n"
                        f"{done.stderr}", pytrace=False)
        return json.loads(Path(out.name).read_text())


def tool_outcome(report, scenario_name):
    """The outcome the report gives for scenario_name (None if the tool did not play it)."""
    for entry in report.get("scenarios", []):
        if entry.get("name") == scenario_name:
            return entry.get("outcome")
    return None


# ---------------------------------------------------------------- known differences
#
# The scenarios describe Envoy 1.40, which extproc-test models. Where an older release behaves
# otherwise, the scenario says so (`envoy: {differs: {"1.36": how}}`) and that release's test is
# expected to fail. Strict: one that passes fails, so a difference that no longer holds is
# noticed.
def known_difference(scenario, version):
    return (scenario.differs or {}).get(_minor(version))


# ---------------------------------------------------------------- the cases


def _versions():
    versions = []
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            versions.append(line)
    return versions


def _scenario_files():
    spec = os.environ.get("EXTPROC_SCENARIOS")
    roots = [Path(p) for p in spec.split(":") if p] if spec else [SCENARIO_DIR]
    files = []
    for root in roots:
        files += sorted(root.glob("**/*.yaml")) if root.is_dir() else [root]
    return files


def _label(path):
    try:
        return str(path.resolve().relative_to(SCENARIO_DIR))
    except ValueError:
        return str(path)


def _minor(version):
    return ".".join(version.split(".")[:2])


@dataclass
class Case:
    id: str
    file: Path
    scenario: object = None  # envoy_run.Scenario
    version: str = None
    error: str = None  # the file does not load


VERSIONS = _versions()
LOADED = {}  # path -> ScenarioFile
CASES = []
for _path in _scenario_files():
    try:
        LOADED[_path] = envoy_run.load_file(_path)
    except envoy_run.ScenarioError as e:
        CASES.append(Case(f"{_label(_path)}::(does not load)", _path, error=str(e)))
        continue
    for _s in LOADED[_path].scenarios:
        for _v in VERSIONS:
            CASES.append(Case(f"{_label(_path)}::{_s.name}::{_minor(_v)}", _path, _s, _v))
if not VERSIONS:
    CASES.append(Case("(no Envoy release)", VERSIONS_FILE,
                      error=f"{VERSIONS_FILE} lists no Envoy release"))
if not LOADED and not CASES:
    CASES.append(Case("(no scenario file)", SCENARIO_DIR, error="no scenario file found"))
LISTENERS = envoy_run.plan(LOADED.values())


# ---------------------------------------------------------------- the bench


@dataclass
class Release:
    version: str
    envoy: envoy_run.Envoy = None
    upstream: envoy_run.Upstream = None
    broken: str = None  # why this release cannot run anything


@dataclass
class Bench:
    services: dict = field(default_factory=dict)  # service -> "127.0.0.1:PORT"
    broken_services: dict = field(default_factory=dict)  # service -> why it is not running
    releases: dict = field(default_factory=dict)  # version -> Release
    selected: dict = field(default_factory=dict)  # (file, name) -> versions this run plays
    results: dict = field(default_factory=dict)  # (file, name) -> {version: (outcome, problems)}
    tool_reports: dict = field(default_factory=dict)  # file -> run_tool()'s report

    def tool_report(self, scenario):
        if scenario.file not in self.tool_reports:
            self.tool_reports[scenario.file] = run_tool(scenario.file,
                                                        self.services[scenario.service])
        return self.tool_reports[scenario.file]

    def play(self, scenario, version):
        """(outcome, problems) of the scenario through `version`'s Envoy. The first call for a
        scenario plays it through every selected release at once, each Envoy with its own
        upstream, so the releases cost the time of one."""
        key = (scenario.file, scenario.name)
        if key not in self.results:
            versions = [v for v in self.selected.get(key, {version}) | {version}
                        if not self.releases[v].broken
                        and scenario.listener not in self.releases[v].envoy.refused]

            def one(v):
                try:
                    return envoy_run.play(scenario, self.releases[v].envoy,
                                          self.releases[v].upstream)
                except Exception as e:  # reported by that release's test
                    return e

            with concurrent.futures.ThreadPoolExecutor(len(versions)) as pool:
                self.results[key] = dict(zip(versions, pool.map(one, versions)))
        result = self.results[key].pop(version)
        if isinstance(result, Exception):
            raise result
        return result


def _envoy_binary(version):
    """The Envoy of `version`, from scripts/setup_envoy_versions.sh's virtualenvs; a string
    saying what is wrong instead when it is missing or another release."""
    binary = ENVOY_VENVS / _minor(version) / "bin" / "envoy"
    if not os.access(binary, os.X_OK):
        return None, (f"Envoy {version} is not installed ({binary} is missing): run "
                      "scripts/setup_envoy_versions.sh")
    try:
        found = envoy_run.envoy_version(str(binary))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return None, f"{binary}: {e}"
    if found != version:
        return None, (f"{binary} is Envoy {found}, not {version}: run "
                      "scripts/setup_envoy_versions.sh")
    return str(binary), None


def _runner_services():
    """The short names of the services extproc-examples serves, from its --help (None when
    that cannot be read: then every name is tried)."""
    try:
        out = subprocess.run([runner_binary(), "--help"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout + out.stderr
    if "\nservices (" not in text:
        return None
    listing = text.split("\nservices (", 1)[1].splitlines()[1:]
    return {m.group(1) for line in listing if (m := re.match(r"\s+\S+\s+(\S+)\s", line))}


# The use-case processors (README.md "Use cases") read their settings from the environment
# when the runner starts. A file naming one gets the runner started with these (a file's
# comments say what its scenarios rely on): auth, the test-only key material committed beside
# scenarios/usecases/auth.yaml; idempotency, a redis-server of the bench's own on a free
# loopback port (no persistence: every run starts empty) and a Redis deadline below the
# message_timeout_ms its scenarios set; access-log, a log file in the log directory (scenarios
# cannot see it).
USECASE_DIR = SCENARIO_DIR / "usecases"
AUTH_ENV = {
    "EXTPROC_AUTH_HS256_SECRET_FILE": str(USECASE_DIR / "auth-hs256.secret"),
    "EXTPROC_AUTH_JWKS_FILE": str(USECASE_DIR / "auth-jwks.json"),
    "EXTPROC_AUTH_API_KEYS_FILE": str(USECASE_DIR / "auth-api-keys.txt"),
    "EXTPROC_AUTH_ISSUER": "https://issuer.test",
    "EXTPROC_AUTH_AUDIENCE": "orders-api",
    "EXTPROC_AUTH_REQUIRED_SCOPE": "read",
    "EXTPROC_AUTH_FORWARD_CLAIMS": "sub:x-auth-subject,scope:x-auth-scope,email:x-auth-email",
    "EXTPROC_AUTH_RELOAD_INTERVAL": "0",
}
IDEMPOTENCY_ENV = {"EXTPROC_IDEMPOTENCY_TIMEOUT": "500ms", "EXTPROC_IDEMPOTENCY_TTL": "1h"}
ACCESS_LOG_ENV = {"EXTPROC_ACCESS_LOG_BODY_CAP": "1KiB"}
# A scenario file's state, if it needs any: FILE.seed.yml beside FILE.yaml, played once by
# extproc-test against FILE's service before anything else plays (it must pass). The
# idempotency scenarios replay responses stored this way: see scenarios/usecases/idempotency.yaml.
SEED_SUFFIX = ".seed.yml"


def _start_redis(log_dir):
    """A redis-server on a free loopback port, keeping nothing on disk: (proc, address)."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        pytest.fail("redis-server not found (apt-get install redis-server)", pytrace=False)
    port = free_ports(1)[0]
    proc = start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(log_dir), "--daemonize", "no"],
                 log_dir)
    try:
        wait_until(f"redis-server on 127.0.0.1:{port}", lambda: can_connect(("127.0.0.1", port)),
                   [proc])
    except pytest.fail.Exception:
        proc.stop()
        raise
    return proc, f"127.0.0.1:{port}"


def _runner_env(b, log_dir, services, procs):
    """The environment the use-case processors among `services` need (see AUTH_ENV); starts
    Redis for idempotency (appended to procs), or marks idempotency broken without it."""
    env = {}
    if "auth" in services:
        env.update(AUTH_ENV)
    if "access-log" in services:
        env.update(ACCESS_LOG_ENV, EXTPROC_ACCESS_LOG_PATH=str(log_dir / "access-log.jsonl"))
    if "idempotency" in services:
        try:
            redis, address = _start_redis(log_dir)
            procs.append(redis)
            env.update(IDEMPOTENCY_ENV, EXTPROC_IDEMPOTENCY_REDIS=address)
        except pytest.fail.Exception as e:
            b.broken_services["idempotency"] = f"its Redis did not start: {e}"
    return env


def _seed(b):
    """Plays each loaded file's seed (SEED_SUFFIX), if it has one and its service runs; a seed
    that does not pass marks the service broken, with why."""
    for path, f in sorted(LOADED.items()):
        seed = path.with_name(path.stem + SEED_SUFFIX)
        if not seed.exists() or f.service not in b.services:
            continue
        try:
            report = run_tool(seed, b.services[f.service])
        except pytest.fail.Exception as e:
            report = {"scenarios": [{"name": "(the file)", "status": "error",
                                     "failures": [str(e)]}]}
        bad = [f"{r['name']}: {r['status']}: " + "; ".join(r.get("failures", []))
               for r in report.get("scenarios", []) if r.get("status") != "passed"]
        if bad or not report.get("scenarios"):
            b.broken_services[f.service] = (f"its seed {seed} did not pass:\n" +
                                            "\n".join(bad or ["no scenario played"]))
            b.services.pop(f.service)


def _start_services(b, log_dir, sock_dir, services):
    """Starts what serves `services`: one runner for the example processors, and
    scripts/foreign_servers.sh for each `foreign:NAME`. Fills b.services and
    b.broken_services; returns the processes started."""
    procs = []
    foreign = [s for s in services if s.startswith(FOREIGN_PREFIX)]
    ours = [s for s in services if s not in foreign]
    known = _runner_services()
    for s in ours:
        if known is not None and s not in known:
            b.broken_services[s] = (f"the runner serves no service {s!r} (extproc-examples "
                                    f"--help lists {', '.join(sorted(known))})")
    env = _runner_env(b, log_dir, ours, procs)
    ours = [s for s in ours if s not in b.broken_services]
    if ours:
        try:
            with environment(env):  # the runner inherits it
                runner, addresses = start_processor(log_dir, "tcp", sock_dir, ours,
                                                    name="runner")
            procs.append(runner)
            b.services.update({s: f"127.0.0.1:{port}" for s, (_, port) in zip(ours, addresses)})
        except pytest.fail.Exception as e:
            b.broken_services.update({s: f"the runner did not start: {e}" for s in ours})
    for s in foreign:
        name = s[len(FOREIGN_PREFIX):]
        port = free_ports(1)[0]
        proc = start(f"foreign-{name}", ["bash", str(FOREIGN_SCRIPT), "start", name, str(port)],
                     log_dir)
        procs.append(proc)
        try:
            wait_until(f"{s} on 127.0.0.1:{port}", lambda: can_connect(("127.0.0.1", port)),
                       [proc])
            b.services[s] = f"127.0.0.1:{port}"
        except pytest.fail.Exception as e:
            b.broken_services[s] = f"{s} did not start ({FOREIGN_SCRIPT} setup?): {e}"
    return procs


@pytest.fixture(scope="module")
def bench(request, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("scenarios")
    sock_dir = tempfile.mkdtemp(prefix="extproc-")
    b = Bench()
    for item in request.session.items:
        case = getattr(getattr(item, "callspec", None), "params", {}).get("case")
        if isinstance(case, Case) and case.scenario is not None:
            b.selected.setdefault((case.file, case.scenario.name), set()).add(case.version)
    procs = []
    try:
        # Upstreams bind their ports first, so free_ports() cannot hand one out again.
        for v in VERSIONS:
            b.releases[v] = Release(v, upstream=envoy_run.Upstream())
        procs = _start_services(b, log_dir, sock_dir, sorted({l.service for l in LISTENERS}))
        addresses = {s: ("127.0.0.1", int(a.rsplit(":", 1)[1])) for s, a in b.services.items()}
        _seed(b)
        for s in b.broken_services:  # Envoy needs a cluster all the same: nothing listens there
            addresses[s] = ("127.0.0.1", free_ports(1)[0])
        with concurrent.futures.ThreadPoolExecutor(len(VERSIONS) or 1) as pool:
            binaries = dict(zip(VERSIONS, pool.map(_envoy_binary, VERSIONS)))
        for v, r in b.releases.items():
            binary, r.broken = binaries[v]
            if r.broken or not LISTENERS:
                continue
            *ports, warm_port, admin_port = free_ports(len(LISTENERS) + 2)
            r.envoy = envoy_run.Envoy(
                binary, log_dir / f"envoy-{v}", LISTENERS,
                {envoy_run.WARM_LISTENER: warm_port, **{l.name: p for l, p in
                                                       zip(LISTENERS, ports)}},
                admin_port, r.upstream.address, addresses)
            r.envoy.start()
        for r in b.releases.values():  # all start at once; wait for each in turn
            if r.envoy:
                try:
                    r.envoy.wait_ready()
                except envoy_run.EnvoyError as e:
                    r.broken = str(e)
        yield b
    finally:
        for r in b.releases.values():
            if r.envoy:
                r.envoy.stop()
            if r.upstream:
                r.upstream.close()
        codes = {p.name: (p.stop(), p) for p in reversed(procs)}
        shutil.rmtree(sock_dir, ignore_errors=True)
    code, runner = codes.get("runner", (0, None))
    if code != 0:
        pytest.fail(f"the runner exited with {code}\n{runner.tail(80)}", pytrace=False)


# ---------------------------------------------------------------- the test


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scenario(request, bench, case):
    if case.error:
        pytest.fail(case.error, pytrace=False)
    s = case.scenario
    if s.skip:
        pytest.skip(f"envoy: skip: {s.skip}")
    obstacle = envoy_run.envoy_obstacle(s)
    if obstacle:
        pytest.fail(f"{case.id}: cannot run through Envoy: {obstacle}", pytrace=False)
    if s.service in bench.broken_services:
        pytest.fail(f"{case.id}: {bench.broken_services[s.service]}", pytrace=False)
    release = bench.releases[case.version]
    if release.broken:
        pytest.fail(release.broken, pytrace=False)
    if s.listener in release.envoy.refused:
        pytest.fail(f"{case.id}: Envoy {case.version} refused the filter configuration: "
                    f"{release.envoy.refused[s.listener]}\n(listener {s.listener} in "
                    f"{release.envoy.lds})", pytrace=False)

    why = known_difference(s, case.version)
    if why:
        request.applymarker(pytest.mark.xfail(reason=why, strict=True))

    outcome, problems = bench.play(s, case.version)

    if _minor(case.version) == TOOL_MODELS:
        tool = tool_outcome(bench.tool_report(s), s.name)
        if tool is None:
            problems.append("extproc-test: no outcome for this scenario in its report")
        else:
            problems += [f"extproc-test: {p}" for p in envoy_run.check(s, tool)]
            problems += [f"extproc-test and Envoy disagree: {p}"
                         for p in envoy_run.compare(s, tool, outcome)]
    if problems:
        pytest.fail(envoy_run.report(s, outcome, problems), pytrace=False)


@pytest.mark.parametrize("path", sorted(LOADED), ids=[_label(p) for p in sorted(LOADED)])
def test_tool(bench, path):
    """extproc-test passes every scenario of the file against its processor, including those
    only the tool can show (faults, hangs)."""
    service = LOADED[path].scenarios[0].service
    if service in bench.broken_services:
        pytest.fail(bench.broken_services[service], pytrace=False)
    report = bench.tool_report(LOADED[path].scenarios[0])
    bad = [f"{e['name']}: {e['status']}: " + "; ".join(e["failures"])
           for e in report["scenarios"] if e["status"] != "passed"]
    assert not bad, f"extproc-test on {path}:\n" + "\n".join(bad)
