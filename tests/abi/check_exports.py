#!/usr/bin/env python3
"""The shared library's ABI, as a user's program meets it:
  - it exports only extproc_ functions (nothing internal, no protobuf-c generated code);
  - it exports exactly the functions the public headers declare with EXTPROC_API;
  - its SONAME is libextproc.so.<major>, the major version of include/extproc/version.h.

Usage: check_exports.py LIBEXTPROC_SO INCLUDE_DIR
"""
import pathlib
import re
import subprocess
import sys


def exported(lib):
    out = subprocess.run(["nm", "-D", "--defined-only", lib], check=True, capture_output=True,
                         text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def declared(include_dir):
    names = set()
    for header in pathlib.Path(include_dir, "extproc").glob("*.h"):
        text = header.read_text()
        # A declaration may wrap: take the first identifier followed by '(' after EXTPROC_API.
        for m in re.finditer(r"^EXTPROC_API\b[^(;]*?\b(extproc_\w+)\s*\(", text, re.MULTILINE):
            names.add(m.group(1))
    return names


def soname(lib):
    out = subprocess.run(["readelf", "-d", lib], check=True, capture_output=True, text=True).stdout
    m = re.search(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    return m.group(1) if m else None


def major(include_dir):
    text = pathlib.Path(include_dir, "extproc", "version.h").read_text()
    return int(re.search(r"#define EXTPROC_VERSION_MAJOR (\d+)", text).group(1))


def main():
    lib, include_dir = sys.argv[1], sys.argv[2]
    failures = []
    exports = exported(lib)
    foreign = sorted(s for s in exports if not s.startswith("extproc_"))
    if foreign:
        failures.append(f"{len(foreign)} exported symbols are not extproc_: {', '.join(foreign[:20])}")
    api = declared(include_dir)
    missing = sorted(api - exports)
    if missing:
        failures.append(f"declared with EXTPROC_API but not exported: {', '.join(missing)}")
    unlisted = sorted(s for s in exports - api if s.startswith("extproc_"))
    if unlisted:
        failures.append(f"exported but not declared with EXTPROC_API: {', '.join(unlisted)}")
    want = f"libextproc.so.{major(include_dir)}"
    if soname(lib) != want:
        failures.append(f"SONAME is {soname(lib)}, expected {want}")
    for f in failures:
        print("FAIL:", f)
    if not failures:
        print(f"{len(exports)} symbols exported, all extproc_ and all declared; SONAME {want}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
