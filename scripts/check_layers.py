#!/usr/bin/env python3
"""Fails when a file under src/ (or the tree given as argument) includes from a layer above
its own.

The layers, bottom to top (see README "Layout"): each may include from itself and the layers
listed for it, and everything may include the public headers (extproc/), the generated protobuf
headers and system headers.
"""
import pathlib
import re
import sys

ALLOWED = {
    "base": {"base"},
    "engine": {"base", "engine"},
    "api": {"base", "engine", "api"},
    "transport": {"base", "engine", "transport"},
    "server": {"base", "engine", "api", "transport", "server"},
    "testing": {"base", "engine", "api", "testing"},  # beside the server, on engine + API
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def main() -> int:
    default = pathlib.Path(__file__).resolve().parent.parent / "src"
    root = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default
    errors = []
    for path in sorted(root.rglob("*.[ch]")):
        layer = path.relative_to(root).parts[0]
        if layer not in ALLOWED:
            errors.append(f"{path}: folder '{layer}' is not a known layer")
            continue
        for target in INCLUDE.findall(path.read_text()):
            top = target.split("/")[0]
            if top in ALLOWED and top not in ALLOWED[layer]:
                errors.append(f"{path.relative_to(root.parent)}: {layer}/ includes \"{target}\" "
                              f"from the {top}/ layer above it")
    for e in errors:
        print(e)
    if not errors:
        print("layers: every include under src/ points down")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
