#!/usr/bin/env bash
# Run one benchmark peer in the foreground on 127.0.0.1:PORT (cleartext HTTP/2 gRPC), serving a
# trivial ext_proc processor: x-extra-request-id := x-request-id on request and response headers.
#
#   bench/peers/start.sh NAME PORT       NAME: python | go-grpc | go-wrossmorrow | go-getyourguide
#
# The script execs the server, so its PID is the server's: `taskset -c 1 bench/peers/start.sh
# go-grpc 50051 & pid=$!` pins and tracks the server itself. SIGTERM/SIGINT stop it. Install
# python and go-grpc first with bench/peers/install.sh (same BENCH_PEERS_DIR). The two Go SDK
# peers are binaries built outside this project (bench/peers/README.md says what they must do
# and from which commit): BENCH_PEER_GO_WROSSMORROW and BENCH_PEER_GO_GETYOURGUIDE name them,
# and the script runs `BINARY PORT`. Exit 2: bad usage; 3: not installed, or variable unset.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${BENCH_PEERS_DIR:-$REPO/build/bench-peers}"

usage() {
    echo "usage: $0 NAME PORT   (NAME: python | go-grpc | go-wrossmorrow | go-getyourguide)" >&2
    exit 2
}
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
    # Third-party SDK peers: this project ships neither their code nor a recipe to build them,
    # only the name of the variable that points at a binary built elsewhere.
    var="BENCH_PEER_$(echo "$name" | tr '[:lower:]-' '[:upper:]_')"
    bin="${!var:-}"
    if [[ -z "$bin" ]]; then
        echo "$0: $name: $var is unset; set it to a binary built from that SDK as" \
            "bench/peers/README.md describes (run as: BINARY PORT)" >&2
        exit 3
    fi
    [[ -x "$bin" ]] || { echo "$0: $name: $var=$bin is not an executable file" >&2; exit 3; }
    exec "$bin" "$port"
    ;;
*)
    usage
    ;;
esac
