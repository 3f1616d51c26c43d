"""Wire compatibility of proto/ with Envoy's official protos (from the pinned envoy-types crate).

Every message, enum and service that our Envoy .proto files declare is compared with the
official declaration of the same full name; the comparison reports every difference.
"""

import copy
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUR_FILES = [
    "envoy/service/ext_proc/v3/external_processor.proto",
    "envoy/config/core/v3/base.proto",
    "envoy/type/v3/http_status.proto",
    "envoy/extensions/filters/http/ext_proc/v3/processing_mode.proto",
]
# Include roots inside the crate's proto/ directory.
OFFICIAL_ROOTS = ["data-plane-api", "xds", "protoc-gen-validate", "googleapis"]
WELL_KNOWN = "/usr/include"  # google/protobuf/*.proto from Debian's libprotobuf-dev
PROTOC = os.environ.get("PROTOC", "/usr/bin/protoc")
ROOTS = ["envoy.service.ext_proc.v3.ProcessingRequest", "envoy.service.ext_proc.v3.ProcessingResponse"]

FDP = descriptor_pb2.FieldDescriptorProto


def compile_set(includes, files, out):
    args = [PROTOC, *(f"-I{i}" for i in includes), "--include_imports", f"--descriptor_set_out={out}", *files]
    run = subprocess.run(args, capture_output=True, text=True)
    assert run.returncode == 0, f"{' '.join(args)} failed:\n{run.stderr}"
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(Path(out).read_bytes())
    return fds


def index(fds, only_files=None):
    """Maps full name -> (kind, file, proto) for every message, enum and service, nested included."""
    found = {}

    def walk(prefix, file, messages, enums):
        for e in enums:
            found[prefix + e.name] = ("enum", file, e)
        for m in messages:
            found[prefix + m.name] = ("message", file, m)
            walk(prefix + m.name + ".", file, m.nested_type, m.enum_type)

    for f in fds.file:
        if only_files is None or f.name in only_files:
            prefix = f.package + "." if f.package else ""
            walk(prefix, f, f.message_type, f.enum_type)
            for s in f.service:
                found[prefix + s.name] = ("service", f, s)
    return found


def field_shape(msg, f):
    return {
        "number": f.number,
        "type": FDP.Type.Name(f.type),
        "type_name": f.type_name,
        "label": FDP.Label.Name(f.label),
        "oneof": msg.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None,
        "proto3_optional": f.proto3_optional,
        "packed": f.options.packed if f.options.HasField("packed") else None,
    }


def method_shape(m):
    return {"input": m.input_type, "output": m.output_type,
            "client_streaming": m.client_streaming, "server_streaming": m.server_streaming}


def diff_named(where, what, ours, theirs):
    """Compares two {name: {attribute: value}} dicts."""
    out = []
    for name in sorted(theirs.keys() - ours.keys()):
        out.append(f"{where}: {what} {name!r} missing from ours")
    for name in sorted(ours.keys() - theirs.keys()):
        out.append(f"{where}: {what} {name!r} not in official")
    for name in sorted(ours.keys() & theirs.keys()):
        a, b = ours[name], theirs[name]
        for key in a:
            if a[key] != b[key]:
                out.append(f"{where}: {what} {name!r} {key}: ours={a[key]!r} official={b[key]!r}")
    return out


def compare(ours_fds, official_fds):
    """Returns a list of human-readable differences for everything declared in OUR_FILES."""
    ours, official = index(ours_fds, OUR_FILES), index(official_fds)
    problems = []
    for name, (kind, file, decl) in sorted(ours.items()):
        if name not in official:
            problems.append(f"{name}: {kind} not in official")
            continue
        okind, ofile, odecl = official[name]
        if kind != okind:
            problems.append(f"{name}: ours is a {kind}, official is a {okind}")
            continue
        if (file.package, file.syntax) != (ofile.package, ofile.syntax):
            problems.append(f"{name}: package/syntax ours={file.package}/{file.syntax} "
                            f"official={ofile.package}/{ofile.syntax}")
        if kind == "message":
            if decl.options.map_entry != odecl.options.map_entry:
                problems.append(f"{name}: map_entry ours={decl.options.map_entry} official={odecl.options.map_entry}")
            problems += diff_named(name, "field", {f.name: field_shape(decl, f) for f in decl.field},
                                   {f.name: field_shape(odecl, f) for f in odecl.field})
        elif kind == "enum":
            problems += diff_named(name, "value", {v.name: {"number": v.number} for v in decl.value},
                                   {v.name: {"number": v.number} for v in odecl.value})
        else:
            problems += diff_named(name, "method", {m.name: method_shape(m) for m in decl.method},
                                   {m.name: method_shape(m) for m in odecl.method})
    return problems


def missing_types(ours_fds, official_fds):
    """Types that official ProcessingRequest/Response reach (google.protobuf.* aside) but we do not declare."""
    ours, official = index(ours_fds, OUR_FILES), index(official_fds)
    seen, todo = set(), list(ROOTS)
    while todo:
        name = todo.pop()
        if name in seen or name.startswith("google.protobuf."):
            continue
        seen.add(name)
        kind, _, decl = official[name]
        if kind == "message":
            todo += [f.type_name.lstrip(".") for f in decl.field if f.type_name]
    return sorted(seen - ours.keys())


@pytest.fixture(scope="module")
def descriptor_sets(tmp_path_factory):
    cache = os.environ.get("EXTPROC_PROTO_CACHE", os.path.join(tempfile.gettempdir(), "libextproc-official-protos"))
    fetch = subprocess.run([str(HERE / "fetch_official.sh"), cache], capture_output=True, text=True)
    assert fetch.returncode == 0, f"fetch_official.sh failed:\n{fetch.stderr}"
    root = fetch.stdout.strip().splitlines()[-1]
    tmp = tmp_path_factory.mktemp("fds")
    ours = compile_set([REPO / "proto", WELL_KNOWN], OUR_FILES, tmp / "ours.pb")
    official = compile_set([*(Path(root) / r for r in OFFICIAL_ROOTS), WELL_KNOWN], OUR_FILES, tmp / "official.pb")
    return ours, official


def test_declarations_match_official(descriptor_sets):
    problems = compare(*descriptor_sets)
    assert not problems, "differences from the official protos:\n" + "\n".join(problems)


def test_nothing_reachable_is_missing(descriptor_sets):
    missing = missing_types(*descriptor_sets)
    assert not missing, "types reachable from ProcessingRequest/Response that we do not declare:\n" + "\n".join(missing)


def test_checker_can_fail(descriptor_sets):
    ours, official = descriptor_sets
    broken = copy.deepcopy(ours)
    file = next(f for f in broken.file if f.name == OUR_FILES[0])
    request = next(m for m in file.message_type if m.name == "ProcessingRequest")
    next(f for f in request.field if f.name == "request_headers").number = 99
    status = next(m for m in file.message_type if m.name == "CommonResponse").enum_type[0]
    status.value[1].number = 7
    file.message_type.remove(next(m for m in file.message_type if m.name == "GrpcStatus"))

    problems = compare(broken, official)
    assert any("ProcessingRequest: field 'request_headers' number: ours=99 official=2" in p for p in problems)
    assert any("ResponseStatus: value 'CONTINUE_AND_REPLACE' number: ours=7" in p for p in problems)
    assert missing_types(broken, official) == ["envoy.service.ext_proc.v3.GrpcStatus"]
