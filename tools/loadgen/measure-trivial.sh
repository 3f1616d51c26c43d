#!/usr/bin/env bash
# Measures the trivial processor alone on one core, driven by extproc-load on another: a
# Release build, the server pinned with --workers 1, the load pinned beside it. Prints
# extproc-load's report (add --json for the machine-readable one).
#
#   tools/loadgen/measure-trivial.sh [extproc-load options...]
#
# Defaults: headers shape, flat out, 64 streams over 4 connections, 10 s. Options given here
# come after the defaults and win. Environment: BUILD (default build-rel), SERVER_CPU (0),
# LOAD_CPU (1).
set -euo pipefail
cd "$(dirname "$0")/../.."

build=${BUILD:-build-rel}
server_cpu=${SERVER_CPU:-0}
load_cpu=${LOAD_CPU:-1}

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DEXTPROC_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target extproc-examples extproc-load >/dev/null

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c "$server_cpu" "$build/examples/extproc-examples" \
  --service "trivial@127.0.0.1:$port" --workers 1 --log-level warn &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT

for _ in $(seq 100); do # up to 5 s for the listener
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || { echo "measure-trivial: the server exited" >&2; exit 1; }
  sleep 0.05
done

taskset -c "$load_cpu" "$build/tools/loadgen/extproc-load" --target "127.0.0.1:$port" \
  --server-pid "$server" --shape headers --concurrency 64 --connections 4 --duration 10 "$@"
