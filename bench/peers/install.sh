#!/usr/bin/env bash
# Install the benchmark peers (other ext_proc servers to measure libextproc against) into
# build/bench-peers/ (override with BENCH_PEERS_DIR): `install.sh [NAME...]`, all by default. Idempotent: run it again at any time; it
# reinstalls the Python virtualenv only when python/requirements.txt changed, and `go build`
# rebuilds only what changed. Nothing here is vendored: pip and go fetch the pinned versions.
#
#   python   envoy-extproc-sdk 0.1.1 (the Python SDK) in build/bench-peers/python-venv
#   go-grpc  grpc-go + go-control-plane with no SDK, build/bench-peers/go-grpc-peer
#
# Not installed by this script: go-wrossmorrow, go-getyourguide. The project ships no code or
# build recipe for third-party Go SDKs; bench/peers/README.md says what their peer binaries must
# do and start.sh runs them from BENCH_PEER_GO_WROSSMORROW / BENCH_PEER_GO_GETYOURGUIDE.
#
# Needs: python3 >= 3.10 (or PYTHON=...), go >= 1.26. Then: bench/peers/start.sh NAME PORT.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${BENCH_PEERS_DIR:-$REPO/build/bench-peers}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"

say() { printf 'bench-peers: %s\n' "$*"; }

# ---------------------------------------------------------------- python
install_python() {
    local venv="$OUT/python-venv" req="$HERE/python/requirements.txt" stamp want
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        say "python: $PYTHON is missing or older than 3.10 (xds-protos needs >= 3.10)" >&2
        return 1
    fi
    stamp="$venv/.requirements.sha256"
    want="$(sha256sum "$req" | cut -d' ' -f1)"
    if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        say "python: virtualenv up to date"
    else
        say "python: creating $venv"
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet -r "$req"
        echo "$want" >"$stamp"
    fi
    # The SDK imports cleanly (with the grpc_health_check shim from bench/peers/python).
    DD_TRACE_ENABLED=false DD_INSTRUMENTATION_TELEMETRY_ENABLED=false \
        PYTHONPATH="$HERE/python" "$venv/bin/python" -c \
        'import envoy_extproc_sdk, trivial_peer' >/dev/null
}

# ---------------------------------------------------------------- go
install_go() {
    local name="$1"
    (cd "$HERE/$name" && go build -trimpath -o "$OUT/$name-peer" .)
    say "$name: built"
}

# Only the peers named on the command line, or all of them.
wanted=("${@:-python go-grpc}")
for name in ${wanted[*]}; do
    case "$name" in
    python) install_python ;;
    go-grpc) install_go go-grpc ;;
    *) say "unknown peer '$name' (python, go-grpc)" >&2; exit 2 ;;
    esac
done

say "installed into $OUT (${wanted[*]}); start one with: $HERE/start.sh NAME PORT"
