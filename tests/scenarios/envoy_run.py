"""Runs extproc-test scenario files (docs/scenarios.md) as real HTTP through a real Envoy.

`extproc-test` plays Envoy's side of ext_proc itself; this module is the check on it: the same
scenario files, played by an HTTP/1.1 client through an Envoy whose ext_proc filter is
configured as each scenario says, to a scripted upstream answering as each scenario says. The
same `expect.upstream` and `expect.client` must then hold. Python standard library and PyYAML;
nothing here depends on pytest (tests/e2e/test_scenarios_envoy.py drives it).

The pieces, in the order a run uses them:
  load_file()     a scenario file, `defaults` applied and every key checked, as Scenario objects;
  plan()          the listeners one Envoy needs for a set of files: one per distinct filter
                  setting per service (Listener), each scenario assigned to one;
  Envoy           that Envoy: a bootstrap with the clusters, the listeners in a file read through
                  LDS (so a listener Envoy refuses is refused alone, with Envoy's reason, and
                  the rest still serve), an access log of every request;
  Upstream        the scripted HTTP/1.1 upstream, in this process: it records what arrives and
                  answers with the current scenario's `response`;
  run()           one scenario: a warm-up request (so Envoy's pool to the upstream holds an
                  idle connection, whatever the scenario before did), then the client's request
                  through the scenario's listener; what the upstream saw and what the client
                  got, as an outcome dict;
  check()         the scenario's expectations against an outcome (run()'s, or extproc-test's
                  --json one): a list of problems; compare() where two outcomes differ.
  play()          run() and check(), with Envoy's access log line when it is needed.

Scenarios run one at a time per Envoy (the upstream serves "the current scenario"), so nothing
has to be added to a request to route it: the processor sees exactly the scenario's request,
plus what Envoy itself adds (x-forwarded-proto, x-request-id when absent, transfer-encoding).

What HTTP/1 cannot carry is approximated, not faked: an empty body chunk between others cannot
be sent in chunked coding and is left out; chunks are written apart (at least MIN_GAP_S, or the
scenario's pause_ms) so Envoy hands each to the processor as its own message. Envoy's HTTP/1
codec ends every request body with one more, empty, end_of_stream message: a STREAMED
processor sees one message more than the chunks written.
"""

import copy
import http
import http.client
import json
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# ---------------------------------------------------------------- the format (docs/scenarios.md)

TOP_KEYS = {"scenarios", "defaults", "service"}
SCENARIO_KEYS = {
    "name", "processing_mode", "allow_mode_override", "failure_mode_allow", "observability_mode",
    "message_timeout_ms", "max_message_timeout_ms", "request_attributes", "response_attributes",
    "metadata_context", "request", "response", "pause_ms", "fault", "expect", "golden", "envoy",
}
HEADER_MODES = {"DEFAULT", "SEND", "SKIP"}
BODY_MODES = {"NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED"}
MODE_FIELDS = {
    "request_header_mode": HEADER_MODES, "response_header_mode": HEADER_MODES,
    "request_body_mode": BODY_MODES, "response_body_mode": BODY_MODES,
    "request_trailer_mode": HEADER_MODES, "response_trailer_mode": HEADER_MODES,
}
MESSAGE_KEYS = {"headers", "body", "trailers"}
EXPECT_KEYS = {"upstream", "client", "dynamic_metadata", "mode_override", "grpc_status",
               "keeps_serving", "envoy_says"}
UPSTREAM_EXPECT_KEYS = {"headers", "body", "trailers"}
CLIENT_EXPECT_KEYS = {"status", "headers", "body", "trailers"}
# Judgment codes (expect.envoy_says) are the tool's to know; here only their form is checked.
JUDGMENT_CODE = re.compile(r"[a-z][a-z0-9_]*")
FAULTS_WITH_COUNT = {"cancel_after", "reset_connection_after", "oversize", "silent_ms"}
REQUEST_PSEUDO = {":method", ":path", ":authority", ":scheme"}
RESPONSE_PSEUDO = {":status"}
# Keys whose subtrees hold header values, bodies and the like: every scalar there is kept as
# written (a body `1.50` is "1.50", a header value `true` is "true").
TEXT_KEYS = {"headers", "trailers", "body", "request_attributes", "response_attributes",
             "metadata_context"}

DEFAULT_MESSAGE_TIMEOUT_MS = 200
ENVOY_DEFAULT_BUFFER = 1024 * 1024  # per_connection_buffer_limit_bytes when unset
MIN_GAP_S = 0.04  # between the pieces of a chunked body, so Envoy sees each chunk alone
CLIENT_TIMEOUT_S = 15.0
HANG_WAIT_S = 2.0  # how long a scenario expecting `client: none` waits for nothing to come
ROUTE_TIMEOUT = "12s"


class ScenarioError(Exception):
    """A scenario file that does not follow docs/scenarios.md, or cannot be loaded."""


def _yaml_tree(node, constructor, text=False):
    """A composed YAML node as Python values. Scalars under TEXT_KEYS stay the text written
    (`1.50` stays "1.50", `true` stays "true"), null stays None; elsewhere the usual YAML
    types. Duplicate keys are an error instead of the last one silently winning."""
    if isinstance(node, yaml.ScalarNode):
        if text:
            return None if node.tag == "tag:yaml.org,2002:null" else node.value
        return constructor.construct_object(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return [_yaml_tree(n, constructor, text) for n in node.value]
    constructor.flatten_mapping(node)  # `<<` merge keys
    out = {}
    for key_node, value_node in node.value:
        key = _yaml_tree(key_node, constructor, text)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise ScenarioError(f"line {key_node.start_mark.line + 1}: unusable key")
        if key in out:
            raise ScenarioError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        out[key] = _yaml_tree(value_node, constructor, text or key in TEXT_KEYS)
    return out


def _load_yaml(path):
    try:
        node = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError) as e:
        raise ScenarioError(f"{path}: {e}") from None
    if node is None:
        raise ScenarioError(f"{path}: empty file")
    try:
        return _yaml_tree(node, yaml.constructor.SafeConstructor())
    except ScenarioError as e:
        raise ScenarioError(f"{path}: {e}") from None


@dataclass
class Message:
    """A request or response as the scenario writes it."""
    headers: list  # [(name, value)], pseudo-headers included, as written
    chunks: list  # [bytes]
    trailers: list  # [(name, value)]
    has_body: bool

    def header(self, name):
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    @property
    def body(self):
        return b"".join(self.chunks)


@dataclass
class Scenario:
    file: Path
    name: str
    service: str  # the file's `service`, or None
    keys: dict  # the scenario's keys, defaults applied
    request: Message
    response: Message
    expect: dict  # normalized: see _expectations()
    settings: dict  # the filter settings (listener key), see _settings()
    skip: str = None  # `envoy: {skip: why}`
    listener: str = None  # set by plan()
    differs: dict = None  # `envoy: {differs: {"1.36": how}}`: minor release -> how it differs

    @property
    def pause_s(self):
        return self.keys.get("pause_ms", 0) / 1000.0

    def mode(self, field_name):
        return (self.keys.get("processing_mode") or {}).get(field_name)


@dataclass
class ScenarioFile:
    path: Path
    service: str
    scenarios: list


def _fail(where, message):
    raise ScenarioError(f"{where}: {message}")


def _check_keys(where, value, allowed, what):
    if not isinstance(value, dict):
        _fail(where, f"{what} must be a mapping, not {type(value).__name__}")
    unknown = sorted(str(k) for k in set(value) - allowed)
    if unknown:
        _fail(where, f"unknown {what} key(s) {', '.join(unknown)} (allowed: "
                     f"{', '.join(sorted(allowed))})")


def _int(where, value, what, minimum=0):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(where, f"{what} must be an integer >= {minimum}, not {value!r}")
    return value


def _bool(where, value, what):
    if not isinstance(value, bool):
        _fail(where, f"{what} must be true or false, not {value!r}")
    return value


def _pairs(where, value, what, allow_null=False):
    """A headers/trailers value, a mapping or a list of [name, value] pairs, as a list of
    (name, value); values are text (None only where allow_null)."""
    if value is None:
        return []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = []
        for item in value:
            if not isinstance(item, list) or len(item) != 2:
                _fail(where, f"{what}: each list item must be a [name, value] pair, not {item!r}")
            items.append(tuple(item))
    else:
        _fail(where, f"{what} must be a mapping or a list of [name, value] pairs")
    out = []
    for name, v in items:
        if not isinstance(name, str) or not name:
            _fail(where, f"{what}: a header name must be a non-empty string, not {name!r}")
        if v is None and not allow_null:
            _fail(where, f"{what}: {name} has no value")
        if v is not None and not isinstance(v, (str, list)):
            _fail(where, f"{what}: {name}: a value must be a string")
        if isinstance(v, list) and not allow_null:
            _fail(where, f"{what}: {name}: a list of values is for expectations only; "
                         "write repeated headers as [name, value] pairs")
        out.append((name, v))
    return out


def _chunk(where, value, what):
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and set(value) == {"repeat", "bytes"}:
        size = value["bytes"]
        size = int(size) if isinstance(size, str) and size.isdigit() else size
        text, size = value["repeat"], _int(where, size, f"{what} bytes")
        if not isinstance(text, str) or not text:
            _fail(where, f"{what}: repeat must be a non-empty string")
        unit = text.encode()
        return (unit * (size // len(unit) + 1))[:size]
    _fail(where, f"{what}: a chunk is a string or {{repeat: TEXT, bytes: N}}, not {value!r}")


def _body(where, value, what):
    if value is None:
        return []
    if isinstance(value, list):
        return [_chunk(where, v, what) for v in value]
    return [_chunk(where, value, what)]


def _message(where, value, what, pseudo, defaults):
    _check_keys(where, value if value is not None else {}, MESSAGE_KEYS, what)
    value = value or {}
    headers = _pairs(where, value.get("headers"), f"{what}.headers")
    for name, _ in headers:
        if name.startswith(":") and name not in pseudo:
            _fail(where, f"{what}.headers: unknown pseudo-header {name} "
                         f"(allowed: {', '.join(sorted(pseudo))})")
    written = {n for n, _ in headers}
    headers = [(n, v) for n, v in defaults if n not in written] + headers
    trailers = _pairs(where, value.get("trailers"), f"{what}.trailers")
    if any(n.startswith(":") for n, _ in trailers):
        _fail(where, f"{what}.trailers: pseudo-headers cannot be trailers")
    return Message(headers, _body(where, value.get("body"), f"{what}.body"), trailers,
                   "body" in value)


def _expected_headers(where, value, what):
    """Expectation headers: {lower-case name: None (absent) or [values, in order]}."""
    out = {}
    pairs = _pairs(where, value, what, allow_null=True)
    grouped = isinstance(value, list)
    for name, v in pairs:
        key = name.lower()
        if isinstance(v, list):
            if not all(isinstance(x, str) for x in v):
                _fail(where, f"{what}: {name}: every listed value must be a string")
            values = list(v)
        else:
            values = None if v is None else [v]
        if grouped and key in out:  # [name, value] pairs: a name repeated lists its values
            if values is None or out[key] is None:
                _fail(where, f"{what}: {name} is both absent and present")
            out[key] = out[key] + values
        elif key in out:
            _fail(where, f"{what}: {name} named twice")
        else:
            out[key] = values
    return out


def _expectations(where, expect):
    """expect as {upstream: None | "none" | {...}, client: None | "none" | {...},
    dynamic_metadata}."""
    _check_keys(where, expect, EXPECT_KEYS, "expect")
    out = {"upstream": None, "client": None, "dynamic_metadata": None}
    up = expect.get("upstream")
    if up == "none":
        out["upstream"] = "none"
    elif up is not None:
        _check_keys(where, up, UPSTREAM_EXPECT_KEYS, "expect.upstream")
        out["upstream"] = {
            "headers": _expected_headers(where, up.get("headers"), "expect.upstream.headers"),
            "trailers": _expected_headers(where, up.get("trailers"), "expect.upstream.trailers"),
            "body": b"".join(_body(where, up["body"], "expect.upstream.body"))
            if "body" in up else None,
        }
    client = expect.get("client")
    if client == "none":
        out["client"] = "none"
    elif client is not None:
        _check_keys(where, client, CLIENT_EXPECT_KEYS, "expect.client")
        status = client.get("status")
        if status is not None:
            if isinstance(status, str) and status.isdigit():
                status = int(status)
            _int(where, status, "expect.client.status", 100)
        out["client"] = {
            "status": status,
            "headers": _expected_headers(where, client.get("headers"), "expect.client.headers"),
            "trailers": _expected_headers(where, client.get("trailers"),
                                          "expect.client.trailers"),
            "body": b"".join(_body(where, client["body"], "expect.client.body"))
            if "body" in client else None,
        }
    dm = expect.get("dynamic_metadata")
    if dm is not None:
        if not isinstance(dm, dict) or not all(isinstance(v, dict) for v in dm.values()):
            _fail(where, "expect.dynamic_metadata must be {namespace: {key: value}}")
        out["dynamic_metadata"] = dm
    if "mode_override" in expect:
        mo = expect["mode_override"]
        _check_keys(where, mo, set(MODE_FIELDS), "expect.mode_override")
        for k, v in mo.items():
            if v not in MODE_FIELDS[k]:
                _fail(where, f"expect.mode_override.{k}: unknown mode {v!r}")
    if "grpc_status" in expect:
        _int(where, expect["grpc_status"], "expect.grpc_status", -1)
    if "keeps_serving" in expect:
        _bool(where, expect["keeps_serving"], "expect.keeps_serving")
    says = expect.get("envoy_says", [])
    if not isinstance(says, list) or not all(
            isinstance(s, str) and JUDGMENT_CODE.fullmatch(s) for s in says):
        _fail(where, "expect.envoy_says must be a list of judgment codes")
    return out


def _settings(where, keys, request, response):
    """The filter settings a scenario needs: the part of a listener's identity it decides."""
    pm = keys.get("processing_mode") or {}
    _check_keys(where, pm, set(MODE_FIELDS), "processing_mode")
    for k, v in pm.items():
        if v not in MODE_FIELDS[k]:
            _fail(where, f"processing_mode.{k}: unknown mode {v!r} (allowed: "
                         f"{', '.join(sorted(MODE_FIELDS[k]))})")
    attrs = {}
    for key in ("request_attributes", "response_attributes"):
        value = keys.get(key) or {}
        if not isinstance(value, dict):
            _fail(where, f"{key} must be a mapping {{attribute: value}}")
        attrs[key] = sorted(value)
    metadata = keys.get("metadata_context") or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
            for v in metadata.values()):
        _fail(where, "metadata_context must be {namespace: {key: string}}")
    override = keys.get("allow_mode_override", False)

    def buffered(direction, message):
        mode = pm.get(f"{direction}_body_mode", "NONE")
        return (mode == "BUFFERED" or override) and len(message.body) > ENVOY_DEFAULT_BUFFER

    return {
        "processing_mode": {k: pm[k] for k in sorted(pm)},
        "allow_mode_override": _bool(where, override, "allow_mode_override"),
        "failure_mode_allow": _bool(where, keys.get("failure_mode_allow", False),
                                    "failure_mode_allow"),
        "observability_mode": _bool(where, keys.get("observability_mode", False),
                                    "observability_mode"),
        "message_timeout_ms": _int(where, keys.get("message_timeout_ms",
                                                   DEFAULT_MESSAGE_TIMEOUT_MS),
                                   "message_timeout_ms", 1),
        "max_message_timeout_ms": _int(where, keys.get("max_message_timeout_ms", 0),
                                       "max_message_timeout_ms"),
        **attrs,
        "metadata_context": {ns: dict(sorted(v.items())) for ns, v in sorted(metadata.items())},
        # Bodies over Envoy's default buffer, buffered whole: the listener needs a larger one.
        "large_buffer": buffered("request", request) or buffered("response", response),
    }


def _scenario(path, service, raw, defaults, index):
    where = f"{path}: scenarios[{index}]"
    if not isinstance(raw, dict):
        _fail(where, "a scenario must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        _fail(where, "name is required (a non-empty string)")
    where = f"{path}: scenario {name!r}"
    _check_keys(where, raw, SCENARIO_KEYS, "scenario")
    keys = {**defaults, **raw}
    request = _message(where, keys.get("request"), "request", REQUEST_PSEUDO,
                       [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                        (":authority", "localhost")])
    response = _message(where, keys.get("response"), "response", RESPONSE_PSEUDO,
                        [(":status", "200")])
    if not re.fullmatch(r"[1-5][0-9][0-9]", response.header(":status") or ""):
        _fail(where, f"response :status must be a 3-digit code, not "
                     f"{response.header(':status')!r}")
    if keys.get("pause_ms") is not None:
        _int(where, keys["pause_ms"], "pause_ms")
    fault = keys.get("fault")
    if fault is not None and fault != "malformed":
        if not (isinstance(fault, dict) and len(fault) == 1
                and next(iter(fault)) in FAULTS_WITH_COUNT):
            _fail(where, f"fault must be malformed or one of "
                         f"{{{', '.join(sorted(FAULTS_WITH_COUNT))}: N}}, not {fault!r}")
        _int(where, next(iter(fault.values())), f"fault {next(iter(fault))}")
    golden = keys.get("golden")
    if golden is not None and not isinstance(golden, str):
        _fail(where, "golden must be a file name")
    envoy = keys.get("envoy", "same")
    skip, differs = None, {}
    if envoy != "same":
        if not (isinstance(envoy, dict) and envoy and set(envoy) <= {"skip", "differs"}
                and isinstance(envoy.get("skip", "-"), str) and envoy.get("skip", "-")
                and isinstance(envoy.get("differs", {}), dict)
                and all(isinstance(k, str) and re.fullmatch(r"\d+\.\d+", k)
                        and isinstance(w, str) and w
                        for k, w in envoy.get("differs", {}).items())):
            _fail(where, "envoy must be `same`, or {skip: \"why\"} and/or "
                         f"{{differs: {{\"1.36\": \"how\"}}}}, not {envoy!r}")
        skip = envoy.get("skip")
        differs = envoy.get("differs", {})
    expect = _expectations(where, keys.get("expect") or {})
    settings = _settings(where, keys, request, response)
    return Scenario(Path(path), name, service, keys, request, response, expect, settings, skip,
                    differs=differs)


def load_file(path):
    """A scenario file as a ScenarioFile; ScenarioError says what is wrong with it."""
    doc = _load_yaml(path)
    _check_keys(str(path), doc, TOP_KEYS, "top-level")
    service = doc.get("service")
    if service is not None and (not isinstance(service, str) or not service):
        _fail(path, "service must be a processor's name")
    defaults = doc.get("defaults") or {}
    _check_keys(f"{path}: defaults", defaults, SCENARIO_KEYS - {"name"}, "defaults")
    raw = doc.get("scenarios")
    if not isinstance(raw, list) or not raw:
        _fail(path, "scenarios must be a non-empty list")
    scenarios = [_scenario(path, service, s, defaults, i) for i, s in enumerate(raw)]
    names = [s.name for s in scenarios]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        _fail(path, f"scenario names must be unique; repeated: {', '.join(dupes)}")
    return ScenarioFile(Path(path), service, scenarios)


def envoy_obstacle(scenario):
    """Why the scenario cannot be played through Envoy over HTTP/1 (a scenario error unless it
    says `envoy: {skip: ...}`), or None."""
    if scenario.service is None:
        return "the file names no `service`: nothing to point Envoy's ext_proc filter at"
    if scenario.keys.get("fault") is not None:
        return ("a fault can only be injected by extproc-test: give the scenario "
                "`envoy: {skip: \"why\"}`")
    for what, message in (("request", scenario.request), ("response", scenario.response)):
        length = message.header("content-length")
        if length is None:
            continue
        if message.trailers:
            return f"{what}: trailers need chunked coding, but content-length is given"
        if not length.isdigit() or int(length) != len(message.body):
            return (f"{what}: content-length {length} but the body has {len(message.body)} "
                    "bytes: HTTP/1 cannot send that")
    return None


# ---------------------------------------------------------------- listeners and Envoy's config


@dataclass
class Listener:
    name: str
    service: str
    settings: dict
    scenarios: list = field(default_factory=list)

    @property
    def receiving_namespaces(self):
        return sorted({ns for s in self.scenarios for ns in (s.expect["dynamic_metadata"] or {})})

    @property
    def buffer_limit(self):
        if not self.settings["large_buffer"]:
            return None
        largest = max(max(len(s.request.body), len(s.response.body)) for s in self.scenarios)
        return max(16 * 1024 * 1024, 2 * largest)


def plan(files):
    """The listeners the scenarios of `files` (ScenarioFile) need: one per service and distinct
    filter setting, in order of first use. Sets each runnable scenario's `listener`."""
    listeners = {}
    for f in files:
        for s in f.scenarios:
            if s.skip or envoy_obstacle(s):
                continue
            key = (s.service, json.dumps(s.settings, sort_keys=True))
            if key not in listeners:
                safe = re.sub(r"[^A-Za-z0-9_.-]", "_", s.service)
                listeners[key] = Listener(f"s{len(listeners):02d}-{safe}", s.service, s.settings)
            listeners[key].scenarios.append(s)
            s.listener = listeners[key].name
    return list(listeners.values())


TYPES = "type.googleapis.com/envoy."
EXT_PROC = TYPES + "extensions.filters.http.ext_proc.v3.ExternalProcessor"
SET_METADATA = TYPES + "extensions.filters.http.set_metadata.v3.Config"
HCM = TYPES + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = TYPES + "extensions.filters.http.router.v3.Router"
FILE_LOG = TYPES + "extensions.access_loggers.file.v3.FileAccessLog"
LISTENER = TYPES + "config.listener.v3.Listener"
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS = TYPES + "extensions.upstreams.http.v3.HttpProtocolOptions"
UPSTREAM_CLUSTER = "upstream"
# A listener without ext_proc. Before each scenario a request through it leaves an idle
# connection in Envoy's pool to the upstream, so every scenario starts alike: a request Envoy
# lets go upstream is written there at once, not only once a new connection is up (which an
# immediate response may overtake). With one worker (--concurrency 1) there is one pool.
WARM_LISTENER = "warm-up"
WARM_PATH = "/envoy-run-warm-up"


def _service_cluster(service):
    return f"service-{service}"


def _socket(host, port):
    return {"socket_address": {"address": host, "port_value": port}}


def _cluster(name, address, http2):
    options = {"http2_protocol_options": {}} if http2 else {
        # HTTP/1 trailers are dropped unless enabled, on this side as on the listeners'.
        "http_protocol_options": {"enable_trailers": True}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {HTTP_OPTIONS_KEY: {
            "@type": HTTP_OPTIONS, "explicit_http_config": options}},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": _socket(*address)}}]}]},
    }


def _access_log_format(listener):
    """One JSON line per request: the client's source port (to find the line), the outcome as
    Envoy saw it (for failure reports) and every dynamic metadata value a scenario expects."""
    fmt = {"listener": listener.name, "port": "%DOWNSTREAM_REMOTE_PORT%",
           "status": "%RESPONSE_CODE%", "flags": "%RESPONSE_FLAGS%",
           "details": "%RESPONSE_CODE_DETAILS%"}
    for ns, key in metadata_keys(listener):
        fmt[f"metadata {ns} {key}"] = f"%DYNAMIC_METADATA({ns}:{key})%"
    return fmt


def metadata_keys(listener):
    """(namespace, key) pairs the listener's scenarios expect in dynamic metadata, as far as an
    access log command can name them (neither may contain ':' or ')')."""
    keys = set()
    for s in listener.scenarios:
        for ns, values in (s.expect["dynamic_metadata"] or {}).items():
            for key in values:
                if re.fullmatch(r"[^:()%]+", f"{ns}{key}"):
                    keys.add((ns, key))
    return sorted(keys)


def ext_proc_filter(listener):
    st = listener.settings
    config = {
        "@type": EXT_PROC,
        "grpc_service": {"envoy_grpc": {"cluster_name": _service_cluster(listener.service)}},
        "failure_mode_allow": st["failure_mode_allow"],
        "allow_mode_override": st["allow_mode_override"],
        "observability_mode": st["observability_mode"],
        "message_timeout": f"{st['message_timeout_ms'] / 1000:.3f}s",
        "processing_mode": st["processing_mode"],  # as the scenario writes it, nothing added
    }
    if st["max_message_timeout_ms"]:
        config["max_message_timeout"] = f"{st['max_message_timeout_ms'] / 1000:.3f}s"
    if st["request_attributes"]:
        config["request_attributes"] = st["request_attributes"]
    if st["response_attributes"]:
        config["response_attributes"] = st["response_attributes"]
    metadata = {}
    if st["metadata_context"]:
        metadata["forwarding_namespaces"] = {"untyped": sorted(st["metadata_context"])}
    if listener.receiving_namespaces:
        metadata["receiving_namespaces"] = {"untyped": listener.receiving_namespaces}
    if metadata:
        config["metadata_options"] = metadata
    return {"name": "envoy.filters.http.ext_proc", "typed_config": config}


def listener_config(listener, port, access_log):
    filters = []
    if listener.settings["metadata_context"]:
        # The metadata_context a scenario sends: set as dynamic metadata before ext_proc, which
        # forwards those namespaces (metadata_options.forwarding_namespaces).
        filters.append({"name": "envoy.filters.http.set_metadata", "typed_config": {
            "@type": SET_METADATA,
            "metadata": [{"metadata_namespace": ns, "value": values}
                         for ns, values in listener.settings["metadata_context"].items()]}})
    filters.append(ext_proc_filter(listener))
    # No x-envoy-* headers of the router's own: neither side of a scenario expects them.
    filters.append({"name": "envoy.filters.http.router",
                    "typed_config": {"@type": ROUTER, "suppress_envoy_headers": True}})
    config = {
        "@type": LISTENER,
        "name": listener.name,
        "address": _socket("127.0.0.1", port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM,
                "stat_prefix": listener.name.replace("-", "_"),
                # A scenario's own x-request-id reaches the processor and the upstream as sent.
                "preserve_external_request_id": True,
                # The upstream's server header (or none) reaches the client as sent.
                "server_header_transformation": "PASS_THROUGH",
                "http_protocol_options": {"enable_trailers": True},
                "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                    "@type": FILE_LOG, "path": str(access_log),
                    "log_format": {"json_format": _access_log_format(listener)}}}],
                "route_config": {"name": "all", "virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {
                        "cluster": UPSTREAM_CLUSTER, "timeout": ROUTE_TIMEOUT}}]}]},
                "http_filters": filters,
            },
        }]}],
    }
    if listener.buffer_limit:
        config["per_connection_buffer_limit_bytes"] = listener.buffer_limit
    return config


def warm_listener_config(port):
    return {
        "@type": LISTENER,
        "name": WARM_LISTENER,
        "address": _socket("127.0.0.1", port),
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM,
                "stat_prefix": "warm_up",
                "route_config": {"name": "all", "virtual_hosts": [{
                    "name": "all", "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {
                        "cluster": UPSTREAM_CLUSTER, "timeout": ROUTE_TIMEOUT}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router",
                                  "typed_config": {"@type": ROUTER}}],
            },
        }]}],
    }


def envoy_config(listeners, ports, admin_port, upstream, services, access_log, lds_path):
    """Envoy's bootstrap (a dict) and its listeners (an LDS DiscoveryResponse dict).

    ports: {listener name: port}, WARM_LISTENER's included; upstream: (host, port) of the
    scripted upstream; services: {service: (host, port)} of the processors; the listeners file
    is read from lds_path.
    """
    missing = sorted({l.service for l in listeners} - set(services))
    if missing:
        raise ValueError(f"no address for service(s) {', '.join(missing)}")
    clusters = [_cluster(UPSTREAM_CLUSTER, upstream, http2=False)]
    clusters += [_cluster(_service_cluster(name), services[name], http2=True)
                 for name in sorted({l.service for l in listeners})]
    bootstrap = {
        "node": {"id": "scenarios", "cluster": "scenarios"},
        "admin": {"address": _socket("127.0.0.1", admin_port)},
        "static_resources": {"clusters": clusters},
        # Listeners through LDS, so Envoy refuses a bad one alone (and names it) instead of
        # refusing to start.
        "dynamic_resources": {"lds_config": {"resource_api_version": "V3",
                                             "path_config_source": {"path": str(lds_path)}}},
    }
    lds = {"version_info": "1", "resources": [warm_listener_config(ports[WARM_LISTENER])] + [
        listener_config(l, ports[l.name], access_log) for l in listeners]}
    return bootstrap, lds


# ---------------------------------------------------------------- Envoy, the process


def envoy_version(binary):
    """The release an Envoy binary reports, e.g. "1.40.0"."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    m = re.search(r"/(\d+\.\d+\.\d+)/", out.stdout + out.stderr)
    if not m:
        raise RuntimeError(f"{binary} --version: no release in {out.stdout + out.stderr!r}")
    return m.group(1)


def _can_connect(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _admin(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


class EnvoyError(Exception):
    pass


class Envoy:
    """One Envoy serving `listeners`; start(), then wait_ready(), then stop().

    After wait_ready(), `refused` maps each listener Envoy would not take to its reason."""

    def __init__(self, binary, work_dir, listeners, ports, admin_port, upstream, services):
        self.binary, self.work_dir = binary, Path(work_dir)
        self.listeners, self.ports, self.admin_port = listeners, ports, admin_port
        self.access_log = self.work_dir / "access.log"
        self.log = self.work_dir / "envoy.log"
        self.config = self.work_dir / "envoy.json"
        self.lds = self.work_dir / "listeners.json"
        bootstrap, lds = envoy_config(listeners, ports, admin_port, upstream, services,
                                      self.access_log, self.lds)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.lds.write_text(json.dumps(lds, indent=1) + "\n")
        self.config.write_text(json.dumps(bootstrap, indent=1) + "\n")
        self.popen, self.refused = None, {}

    def start(self):
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                [self.binary, "-c", str(self.config), "--disable-hot-restart",
                 "--concurrency", "1", "--log-level", "warn",
                 # Access log lines reach the file within 50 ms instead of Envoy's 10 s.
                 "--file-flush-interval-msec", "50"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def log_tail(self, lines=30):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"

    def _active(self):
        status, text = _admin(self.admin_port, "/listeners?format=json")
        if status != 200:
            return None
        return {l["name"] for l in json.loads(text).get("listener_statuses", [])}

    def wait_ready(self, timeout=30.0, settle=2.0):
        """Waits until Envoy is ready and every listener it took is bound. A listener that is
        still not active `settle` seconds after Envoy became ready (or as soon as Envoy logs a
        rejection) counts as refused."""
        deadline = time.monotonic() + timeout
        names = {l.name for l in self.listeners} | {WARM_LISTENER}
        ready_since = None
        while True:
            if self.popen.poll() is not None:
                raise EnvoyError(f"Envoy exited with {self.popen.returncode} while starting "
                                 f"({self.config}):\n{self.log_tail()}")
            try:
                ready = _admin(self.admin_port, "/ready")[0] == 200
                active = self._active() if ready else None
            except OSError:
                ready, active = False, None
            if ready and active is not None:
                ready_since = ready_since or time.monotonic()
                settled = active >= names or time.monotonic() - ready_since > settle or \
                    "rejected" in self.log.read_text(errors="replace")
                if settled and all(_can_connect(self.ports[n]) for n in active & names):
                    self.refused = self._refusals(names - active)
                    if WARM_LISTENER in self.refused:
                        raise EnvoyError(f"Envoy refused its warm-up listener: "
                                         f"{self.refused[WARM_LISTENER]}")
                    return self
            if time.monotonic() > deadline:
                raise EnvoyError(f"Envoy not ready after {timeout}s ({self.config}):\n"
                                 f"{self.log_tail()}")
            time.sleep(0.05)

    def _refusals(self, names):
        """Envoy's reason for each refused listener, from its log: 1.40 writes "lds: listener
        'NAME' config rejected: WHY" per listener, every release "...listener(s) NAME: WHY"."""
        text = self.log.read_text(errors="replace")
        reasons = {}
        for name in names:
            m = re.search(rf"listener '{re.escape(name)}' config rejected: (.*)", text)
            if not m:
                m = re.search(rf"(?:listener\(s\) |, |\n){re.escape(name)}: (.*)", text)
            reasons[name] = m.group(1).strip() if m else \
                f"Envoy did not take this listener; its log ends:\n{self.log_tail()}"
        return reasons

    def stop(self):
        if self.popen and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode if self.popen else None

    def access_log_entry(self, client_port, listener, timeout=3.0):
        """The access log line of the request the client sent from client_port, as a dict, or
        None if it has not appeared within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                lines = self.access_log.read_text(errors="replace").splitlines()
            except FileNotFoundError:
                lines = []
            for line in reversed(lines):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if str(entry.get("port")) == str(client_port) and \
                        entry.get("listener") == listener:
                    return entry
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)


# ---------------------------------------------------------------- the scripted upstream


@dataclass
class Arrival:
    """A request as the upstream received it."""
    method: str
    path: str
    headers: list  # [(lower-case name, value)]
    body: bytearray = field(default_factory=bytearray)
    trailers: list = field(default_factory=list)
    complete: bool = False  # the whole request, body and trailers, arrived
    ended: bool = False  # complete, or the connection ended first
    error: str = None


def _read_line(rfile):
    line = rfile.readline(65537)
    if not line:
        raise ConnectionError("connection closed")
    return line


def _read_fields(rfile):
    fields = []
    while (line := _read_line(rfile)) not in (b"\r\n", b"\n"):
        name, _, value = line.decode("latin-1").partition(":")
        fields.append((name.strip().lower(), value.strip(" \t\r\n")))
    return fields


def _chunked_pieces(chunks, trailers, last_with_end):
    """The writes of a chunked body: one per chunk (empty chunks cannot be sent), the last
    chunk together with the end (unless last_with_end is False) and the trailers."""
    ending = b"0\r\n" + b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in trailers) + \
        b"\r\n"
    pieces = [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c]
    if pieces and last_with_end:
        pieces[-1] += ending
    else:
        pieces.append(ending)
    return pieces


def _gap(scenario, direction):
    """Seconds between the writes of a body: pause_ms, and at least MIN_GAP_S when chunk
    boundaries matter to the processor (a body mode that streams, or one a mode override may
    turn streaming)."""
    mode = scenario.mode(f"{direction}_body_mode") or "NONE"
    streams = mode in ("STREAMED", "FULL_DUPLEX_STREAMED", "BUFFERED_PARTIAL") or \
        scenario.settings["allow_mode_override"]
    return max(scenario.pause_s, MIN_GAP_S if streams else 0.0)


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        upstream = self.server.upstream
        while True:
            try:
                request_line = self.rfile.readline(65537)
            except OSError:
                return
            if not request_line:
                return
            if request_line in (b"\r\n", b"\n"):
                continue
            arrival = None
            try:
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                arrival = Arrival(method, path, _read_fields(self.rfile))
                script = upstream._arrived(arrival)
                self._read_body(arrival)
                arrival.complete = True
                upstream._ended(arrival)
                if not self._respond(script):
                    return
            except (OSError, ValueError) as e:
                if arrival is not None:
                    arrival.error = f"{type(e).__name__}: {e}"
                    upstream._ended(arrival)
                return

    def _read_body(self, arrival):
        headers = dict(arrival.headers)
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int(_read_line(self.rfile).split(b";", 1)[0].strip(), 16)
                if size == 0:
                    break
                data = self.rfile.read(size)
                if len(data) < size:
                    raise ConnectionError("connection closed inside a chunk")
                arrival.body += data
                _read_line(self.rfile)
            arrival.trailers = _read_fields(self.rfile)
        elif headers.get("content-length"):
            size = int(headers["content-length"])
            while len(arrival.body) < size:
                data = self.rfile.read1(size - len(arrival.body))
                if not data:
                    raise ConnectionError("connection closed inside the body")
                arrival.body += data

    def _respond(self, script):
        """Writes the scenario's response; False when the connection is to be closed."""
        if script is None:  # between scenarios: a warm-up (or a straggler), kept alive
            self.wfile.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            return True
        message, gap = script
        status = int(message.header(":status"))
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
        headers = [(n, v) for n, v in message.headers if not n.startswith(":")]
        names = {n.lower() for n, _ in headers}
        bodiless = status < 200 or status in (204, 304)
        chunked = not bodiless and "content-length" not in names and \
            (message.has_body or message.trailers)
        if chunked and "transfer-encoding" not in names:
            headers.append(("transfer-encoding", "chunked"))
        elif not bodiless and not chunked and "content-length" not in names:
            headers.append(("content-length", "0"))
        head = f"HTTP/1.1 {status} {reason}\r\n" + \
            "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
        self.wfile.write(head.encode("latin-1"))
        if bodiless:
            return True
        if chunked:
            pieces = _chunked_pieces(message.chunks, message.trailers,
                                     last_with_end=not (message.trailers and gap > MIN_GAP_S))
        else:
            pieces = [c for c in message.chunks if c]
        for piece in pieces:
            time.sleep(gap)
            self.wfile.write(piece)
            self.wfile.flush()
        return True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class Upstream:
    """The scripted upstream: HTTP/1.1 on a loopback port of its own, one thread per
    connection. begin(scenario) sets the response every request gets until end(), which
    returns the requests that arrived meanwhile (Arrival)."""

    def __init__(self):
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        self.address = self._server.server_address[:2]
        self._cond = threading.Condition()
        self._script, self._arrivals = None, []
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"upstream-{self.address[1]}")
        self._thread.start()

    def _arrived(self, arrival):
        with self._cond:
            self._arrivals.append(arrival)
            return self._script

    def _ended(self, arrival):
        with self._cond:
            arrival.ended = True
            self._cond.notify_all()

    def begin(self, scenario):
        with self._cond:
            self._script = (scenario.response, _gap(scenario, "response"))
            self._arrivals = []

    def end(self, timeout=2.0):
        """The arrivals of the scenario, after waiting up to timeout for each to end (a
        request cut short by an immediate response ends when Envoy drops the connection)."""
        with self._cond:
            self._cond.wait_for(lambda: all(a.ended for a in self._arrivals), timeout)
            arrivals, self._arrivals, self._script = self._arrivals, [], None
            return arrivals

    def close(self):
        self._server.shutdown()
        self._server.server_close()


# ---------------------------------------------------------------- the client


def _read_chunked(fp):
    body, trailers = bytearray(), []
    while True:
        line = _read_line(fp)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        data = fp.read(size)
        if len(data) < size:
            raise http.client.IncompleteRead(bytes(body) + data)
        body += data
        _read_line(fp)
    trailers = _read_fields(fp)
    return bytes(body), trailers


def send(port, scenario, timeout=CLIENT_TIMEOUT_S):
    """Sends the scenario's request to 127.0.0.1:port; returns what the client got:
    {status, headers [(name, value)] with :status first, body, trailers, error, port}."""
    req = scenario.request
    got = {"status": None, "headers": [], "body": b"", "trailers": [], "error": None,
           "port": None}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.connect()
        got["port"] = conn.sock.getsockname()[1]
        conn.putrequest(req.header(":method"), req.header(":path"),
                        skip_host=True, skip_accept_encoding=True)
        names = set()
        for name, value in req.headers:
            if name == ":authority":
                name = "host"
            elif name.startswith(":"):
                continue
            names.add(name.lower())
            conn.putheader(name, value)
        chunked = "content-length" not in names and (req.has_body or req.trailers)
        if chunked and "transfer-encoding" not in names:
            conn.putheader("transfer-encoding", "chunked")
        conn.endheaders()
        gap = _gap(scenario, "request")
        if chunked:
            pieces = _chunked_pieces(req.chunks, req.trailers,
                                     last_with_end=not (req.trailers and gap > MIN_GAP_S))
        else:
            pieces = [c for c in req.chunks if c]
        try:
            for piece in pieces:
                time.sleep(gap)
                conn.send(piece)
        except OSError as e:  # Envoy may answer (and close) before the body is all sent
            got["error"] = f"sending the request: {type(e).__name__}: {e}"
        resp = conn.getresponse()
        got["status"] = resp.status
        got["headers"] = [(":status", str(resp.status))] + \
            [(n.lower(), v) for n, v in resp.getheaders()]
        got["error"] = None
        try:
            if resp.chunked:
                got["body"], got["trailers"] = _read_chunked(resp.fp)
            else:
                got["body"] = resp.read()
        except http.client.IncompleteRead as e:
            got["body"] = e.partial
            got["error"] = "the response body was cut short"
    except (OSError, http.client.HTTPException) as e:
        got["error"] = f"{type(e).__name__}: {e}" + (f" ({got['error']})" if got["error"] else "")
    finally:
        conn.close()
    return got


# ---------------------------------------------------------------- one scenario, end to end


def _text(body):
    return body.decode("utf-8", errors="surrogateescape")


def warm_up(envoy):
    """A request through the warm-up listener: afterwards Envoy's pool holds an idle
    connection to the upstream."""
    conn = http.client.HTTPConnection("127.0.0.1", envoy.ports[WARM_LISTENER], timeout=5)
    try:
        conn.request("GET", WARM_PATH)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 204:
            raise EnvoyError(f"the warm-up request got {resp.status}, not 204")
    finally:
        conn.close()


def run(scenario, envoy, upstream, timeout=CLIENT_TIMEOUT_S):
    """Plays the scenario through `envoy` (serving its listener) and `upstream` (that Envoy's
    upstream). Returns the observed outcome, in the shape docs/scenarios.md's expectations
    take: {upstream: {reached, headers, body, trailers}, client: {status, headers, body,
    trailers}}; headers and trailers are lists of [lower-case name, value] with the
    pseudo-headers first (the upstream's :authority is the Host it got), bodies text. Extra
    keys: upstream.requests (how many arrived), client.error, client.port."""
    if scenario.listener is None:
        raise ValueError(f"scenario {scenario.name!r} has no listener: plan() first")
    warm_up(envoy)
    if scenario.expect["client"] == "none":
        # Nothing may reach the client: waiting this long shows it, where the client's usual
        # patience would only make the test slow.
        timeout = min(timeout, max(HANG_WAIT_S,
                                   5 * scenario.settings["message_timeout_ms"] / 1000))
    upstream.begin(scenario)
    try:
        client = send(envoy.ports[scenario.listener], scenario, timeout)
    finally:
        arrivals = upstream.end()
    up = {"reached": bool(arrivals), "headers": [], "body": "", "trailers": [],
          "requests": len(arrivals)}
    if arrivals:
        a = arrivals[0]
        host = [v for n, v in a.headers if n == "host"]
        up["headers"] = [[":method", a.method], [":path", a.path], [":scheme", "http"]] + \
            [[":authority", h] for h in host] + [[n, v] for n, v in a.headers if n != "host"]
        up["body"] = _text(bytes(a.body))
        up["trailers"] = [[n, v] for n, v in a.trailers]
        if not a.complete:
            up["incomplete"] = a.error or "the request did not end"
    return {
        "upstream": up,
        "client": {"status": client["status"], "headers": [list(h) for h in client["headers"]],
                   "body": _text(client["body"]),
                   "trailers": [list(t) for t in client["trailers"]],
                   "error": client["error"], "port": client["port"]},
    }


def _shown(value, limit=120):
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v, limit) for v in value) + "]"
    if value is None:
        return "absent"
    text = value if isinstance(value, str) else _text(value)
    if len(text) > limit:
        return f"{text[:limit]!r}... ({len(text.encode('utf-8', 'surrogateescape'))} bytes)"
    return repr(text)


def _field_problems(where, expected, observed):
    have = {}
    for name, value in observed:
        have.setdefault(name.lower(), []).append(value)
    problems = []
    for name, want in expected.items():
        got = have.get(name, [])
        want = want or None  # an empty list of values: absent
        if want is None and got:
            problems.append(f"{where} {name}: expected absent, got {_shown(got)}")
        elif want is not None and got != want:
            problems.append(f"{where} {name}: expected {_shown(want if len(want) > 1 else want[0])}"
                            f", got {_shown(got) if got else 'absent'}")
    return problems


def _body_problem(where, expected, observed):
    if expected is None:
        return []
    got = observed.encode("utf-8", "surrogateescape")
    if got == expected:
        return []
    at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
              min(len(got), len(expected)))
    return [f"{where} body: expected {_shown(expected)}, got {_shown(got)} "
            f"(first difference at byte {at})"]


def normalize_outcome(outcome):
    """An outcome in run()'s shape with every key there, from run() or from another source
    (extproc-test's --json outcome leaves out empty trailers, and :status from the client's
    headers, and says client.reached where run() gives no status)."""
    up = dict(outcome.get("upstream") or {})
    client = dict(outcome.get("client") or {})
    up.setdefault("reached", False)
    client.setdefault("status", None)
    if client.get("reached") is False:
        client["status"] = None
    for side in (up, client):
        for key, empty in (("headers", []), ("trailers", []), ("body", "")):
            if side.get(key) is None:
                side[key] = empty
    client.setdefault("error", None)
    if client["status"] is not None and not any(n == ":status" for n, _ in client["headers"]):
        client["headers"] = [[":status", str(client["status"])]] + list(client["headers"])
    return {**outcome, "upstream": up, "client": client}


def check(scenario, outcome, access_log_entry=None):
    """The scenario's expectations that outcome (run()'s shape) fails, as sentences; empty when
    all hold. Only what Envoy lets a client and an upstream see is checked: upstream, client,
    and dynamic_metadata when access_log_entry (the request's access log line) is given."""
    outcome = normalize_outcome(outcome)
    problems = []
    want_up = scenario.expect["upstream"]
    up = outcome["upstream"]
    if want_up == "none":
        if up["reached"]:
            problems.append(f"upstream: expected never reached, but a request arrived "
                            f"({_shown(dict(up['headers']).get(':path'))})")
    elif want_up is not None:
        if not up["reached"]:
            problems.append("upstream: expected a request, none arrived")
        else:
            problems += _field_problems("upstream header", want_up["headers"], up["headers"])
            problems += _field_problems("upstream trailer", want_up["trailers"], up["trailers"])
            problems += _body_problem("upstream", want_up["body"], up["body"])
    want_client = scenario.expect["client"]
    client = outcome["client"]
    if want_client == "none":
        if client["status"] is not None:
            problems.append(f"client: expected no response, got status {client['status']} "
                            f"(body {_shown(client['body'])})")
    elif want_client is not None:
        if client["status"] is None:
            problems.append(f"client: no response ({client['error']})")
        else:
            if want_client["status"] is not None and client["status"] != want_client["status"]:
                problems.append(f"client status: expected {want_client['status']}, got "
                                f"{client['status']} (body {_shown(client['body'])})")
            problems += _field_problems("client header", want_client["headers"],
                                        client["headers"])
            problems += _field_problems("client trailer", want_client["trailers"],
                                        client["trailers"])
            problems += _body_problem("client", want_client["body"], client["body"])
            if client["error"]:
                problems.append(f"client: {client['error']}")
    want_md = scenario.expect["dynamic_metadata"]
    if want_md and access_log_entry is not None:
        for ns, values in want_md.items():
            for key, want in values.items():
                column = f"metadata {ns} {key}"
                if column not in access_log_entry:
                    continue  # not nameable in an access log command
                got = access_log_entry[column]
                if want is None:
                    if got is not None:
                        problems.append(f"dynamic_metadata {ns}:{key}: expected absent, got "
                                        f"{got!r}")
                elif got != want:
                    problems.append(f"dynamic_metadata {ns}:{key}: expected {want!r}, got "
                                    f"{'absent' if got is None else repr(got)}")
    return problems


def compare(scenario, a, b):
    """Where outcomes a and b (say extproc-test's and Envoy's) differ on what the scenario's
    expectations name: the upstream's being reached, the status, each named header and
    trailer, each body the expectations give. Sentences, "a ... / b ..."."""
    a, b = normalize_outcome(a), normalize_outcome(b)
    diffs = []

    def values(pairs, name):
        return [v for n, v in pairs or [] if n.lower() == name]

    def side(where, want, x, y):
        for kind in ("headers", "trailers"):
            for name in want[kind]:
                vx, vy = values(x.get(kind), name), values(y.get(kind), name)
                if vx != vy:
                    diffs.append(f"{where} {kind[:-1]} {name}: {_shown(vx)} / {_shown(vy)}")
        if want["body"] is not None and x.get("body") != y.get("body"):
            diffs.append(f"{where} body: {_shown(x.get('body'))} / {_shown(y.get('body'))}")

    want_up = scenario.expect["upstream"]
    if want_up is not None:
        ux, uy = a.get("upstream") or {}, b.get("upstream") or {}
        if bool(ux.get("reached")) != bool(uy.get("reached")):
            diffs.append(f"upstream reached: {bool(ux.get('reached'))} / "
                         f"{bool(uy.get('reached'))}")
        elif want_up != "none" and ux.get("reached"):
            side("upstream", want_up, ux, uy)
    want_client = scenario.expect["client"]
    if want_client is not None:
        cx, cy = a.get("client") or {}, b.get("client") or {}
        if cx.get("status") != cy.get("status"):
            diffs.append(f"client status: {cx.get('status')} / {cy.get('status')}")
        elif want_client != "none":
            side("client", want_client, cx, cy)
    return diffs


def play(scenario, envoy, upstream):
    """run() then check(), reading the access log when dynamic metadata is expected or
    something failed (its status, flags and details explain Envoy's side). Returns
    (outcome, problems); outcome["access_log"] holds the line when read."""
    outcome = run(scenario, envoy, upstream)
    entry = None
    if scenario.expect["dynamic_metadata"]:
        entry = envoy.access_log_entry(outcome["client"]["port"], scenario.listener)
        if entry is None:
            return outcome, ["dynamic_metadata: the request's access log line never appeared"]
    problems = check(scenario, outcome, entry)
    if problems and entry is None:
        entry = envoy.access_log_entry(outcome["client"]["port"], scenario.listener,
                                       timeout=1.0)
    outcome["access_log"] = entry
    return outcome, problems


def report(scenario, outcome, problems):
    """A failure's text: the problems, Envoy's view from the access log, the outcome."""
    lines = [f"{scenario.file}: {scenario.name!r} through Envoy (listener {scenario.listener}):"]
    lines += [f"  - {p}" for p in problems]
    log = outcome.get("access_log")
    if log:
        lines.append(f"  Envoy: status {log.get('status')}, flags {log.get('flags')}, details "
                     f"{log.get('details')}")
    shown = copy.deepcopy(outcome)
    for side in ("upstream", "client"):
        if len(shown[side]["body"]) > 2000:
            shown[side]["body"] = shown[side]["body"][:2000] + "..."
    lines.append("  outcome: " + json.dumps(shown, indent=2).replace("\n", "\n  "))
    return "\n".join(lines)
