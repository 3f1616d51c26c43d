#!/usr/bin/env bash
# Sets up and starts the two "foreign" ext_proc servers (not written with libextproc) that
# extproc-test is pointed at, to check its judgments against servers that are not ours:
#
#   python   the Python SDK this project started from (PyPI envoy-extproc-sdk, protos from
#            xds-protos) serving its trivial processor: the benchmark peer of the same name
#            (bench/peers/python, pinned in bench/peers/python/requirements.txt, installed in
#            build/bench-peers/python-venv by bench/peers/install.sh). It writes header
#            mutations with HeaderValue.value only.
#   grpc-go  tests/foreign/grpc-go: a processor on grpc-go and go-control-plane, correct by
#            default, misbehaving as its request header x-misbehave asks (see its main.go),
#            built into build/foreign/grpc-go-extproc.
#
# Usage:
#   scripts/foreign_servers.sh setup                    install both; safe to rerun, only
#                                                       missing or outdated work is done
#   scripts/foreign_servers.sh start python|grpc-go PORT
#                                                       run one on 127.0.0.1:PORT in the
#                                                       foreground (exec: its PID is the
#                                                       server's; SIGTERM stops it)
#
# Needs python3 >= 3.10 (with venv) and Go (found on PATH, else /usr/local/go/bin/go; or set GO).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$REPO/bench/peers"
GO_DIR="$REPO/tests/foreign/grpc-go"
GO_BIN="$REPO/build/foreign/grpc-go-extproc"

say() { echo "foreign_servers: $*" >&2; }
die() { say "$*"; exit 1; }

go_tool() {
    if [[ -n "${GO:-}" ]]; then echo "$GO"
    elif command -v go >/dev/null 2>&1; then command -v go
    elif [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go
    else die "Go not found: install it or set GO"
    fi
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
        "$PEERS/install.sh" python >&2
        setup_go
        ;;
    start)
        [[ $# -eq 3 ]] || die "usage: $0 start python|grpc-go PORT"
        port="$3"
        [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number: $port"
        case "$2" in
            python) exec "$PEERS/start.sh" python "$port" ;;
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
