#!/usr/bin/env bash
# Sets up and starts the two "foreign" ext_proc servers (not written with libextproc) that
# extproc-test is pointed at, to check its judgments against servers that are not ours:
#
#   python   tests/foreign/python-sdk/serve.py: the Python SDK this project started from (PyPI
#            envoy-extproc-sdk, protos from xds-protos), in the virtualenv .venv-foreign-python/
#            with the exact versions of tests/foreign/python-sdk/requirements.txt. It writes
#            header mutations with HeaderValue.value only.
#   grpc-go  tests/foreign/grpc-go: a processor on grpc-go and go-control-plane, correct by
#            default, misbehaving as its request header x-misbehave asks (see its main.go),
#            built into build/foreign/grpc-go-extproc.
#
# Usage:
#   scripts/foreign_servers.sh setup                    install both; safe to rerun, only
#                                                       missing or outdated work is done
#   scripts/foreign_servers.sh start python|grpc-go PORT
#                                                       run one on 127.0.0.1:PORT in the
#                                                       foreground (exec; the first stdout line
#                                                       is "listening on 127.0.0.1:PORT")
#
# Needs python3 (with venv) and Go (found on PATH, else /usr/local/go/bin/go; or set GO).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv-foreign-python"
PY_DIR="$REPO/tests/foreign/python-sdk"
GO_DIR="$REPO/tests/foreign/grpc-go"
GO_BIN="$REPO/build/foreign/grpc-go-extproc"
STAMP="$VENV/.requirements.txt"   # the requirements the virtualenv was last installed from

say() { echo "foreign_servers: $*" >&2; }
die() { say "$*"; exit 1; }

go_tool() {
    if [[ -n "${GO:-}" ]]; then echo "$GO"
    elif command -v go >/dev/null 2>&1; then command -v go
    elif [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go
    else die "Go not found: install it or set GO"
    fi
}

setup_python() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "creating $VENV"
        python3 -m venv "$VENV"
    fi
    if cmp -s "$PY_DIR/requirements.txt" "$STAMP"; then
        say "python: up to date"
        return
    fi
    say "python: installing $PY_DIR/requirements.txt"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$PY_DIR/requirements.txt"
    # Importing the SDK proves the shims in serve.py still hold with what was installed.
    "$VENV/bin/python" - "$PY_DIR/serve.py" <<'EOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("foreign_serve", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
EOF
    cp "$PY_DIR/requirements.txt" "$STAMP"
}

setup_go() {
    local newest
    newest="$(find "$GO_DIR" -type f -newer "$GO_BIN" -print -quit 2>/dev/null || true)"
    if [[ -x "$GO_BIN" && -z "$newest" ]]; then
        say "grpc-go: up to date"
        return
    fi
    say "grpc-go: building $GO_BIN"
    mkdir -p "$(dirname "$GO_BIN")"
    local go need have
    go="$(go_tool)"
    # go.mod's `go` line is the oldest Go that builds it; an older one cannot fetch a newer
    # toolchain by itself (Debian 12's golang-go is 1.19), so say so plainly.
    need="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$GO_DIR/go.mod")"
    have="$("$go" env GOVERSION | sed 's/^go//')"
    [[ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" == "$need" ]] ||
        die "grpc-go needs Go $need or later; $go is $have (set GO to a newer one)"
    (cd "$GO_DIR" && "$go" build -o "$GO_BIN" .)
}

case "${1:-}" in
    setup)
        setup_python
        setup_go
        ;;
    start)
        [[ $# -eq 3 ]] || die "usage: $0 start python|grpc-go PORT"
        port="$3"
        [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number: $port"
        case "$2" in
            python)
                [[ -x "$VENV/bin/python" ]] || die "run '$0 setup' first"
                exec "$VENV/bin/python" "$PY_DIR/serve.py" --port "$port"
                ;;
            grpc-go)
                [[ -x "$GO_BIN" ]] || die "run '$0 setup' first"
                exec "$GO_BIN" --addr "127.0.0.1:$port"
                ;;
            *) die "unknown server '$2' (python or grpc-go)" ;;
        esac
        ;;
    *)
        die "usage: $0 setup | start python|grpc-go PORT"
        ;;
esac
