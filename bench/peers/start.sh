#!/usr/bin/env bash
# Run one benchmark peer in the foreground on 127.0.0.1:PORT (cleartext HTTP/2 gRPC), serving a
# trivial ext_proc processor: x-extra-request-id := x-request-id on request and response headers.
#
#   bench/peers/start.sh NAME PORT       NAME: python | go-grpc
#
# The script execs the server, so its PID is the server's: `taskset -c 1 bench/peers/start.sh
# go-grpc 50051 & pid=$!` pins and tracks the server itself. SIGTERM/SIGINT stop it. Install
# first with bench/peers/install.sh (same BENCH_PEERS_DIR). Exit 2: bad usage; 3: not installed
# or not available on this machine.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${BENCH_PEERS_DIR:-$REPO/build/bench-peers}"

usage() { echo "usage: $0 NAME PORT   (NAME: python | go-grpc)" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
name="$1" port="$2"
[[ "$port" =~ ^[0-9]+$ ]] || usage

need() {
    if [[ ! -x "$1" ]]; then
        echo "$0: $name is not installed ($1 missing): run bench/peers/install.sh" >&2
        exit 3
    fi
}

case "$name" in
python)
    need "$OUT/python-venv/bin/python"
    # ddtrace (a hard dependency of the SDK) would otherwise try to reach a Datadog agent on
    # localhost:8126 and log the failures; the SDK's spans are still created with tracing off.
    exec env PYTHONPATH="$HERE/python" \
        DD_TRACE_ENABLED="${DD_TRACE_ENABLED:-false}" \
        DD_INSTRUMENTATION_TELEMETRY_ENABLED=false \
        DD_REMOTE_CONFIGURATION_ENABLED=false \
        "$OUT/python-venv/bin/python" "$HERE/python/trivial_peer.py" "$port"
    ;;
go-grpc)
    need "$OUT/go-grpc-peer"
    exec "$OUT/go-grpc-peer" "$port"
    ;;
go-wrossmorrow | go-getyourguide)
    echo "$0: $name is not available here: the Go module proxy this machine reaches refuses" \
        "that SDK's module (403 'This module version is not available'); see" \
        "bench/peers/README.md. go-grpc (grpc-go, no SDK) is the Go peer instead." >&2
    exit 3
    ;;
*)
    usage
    ;;
esac
