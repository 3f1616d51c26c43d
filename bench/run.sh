#!/usr/bin/env bash
# The SDK alone and its peers, same run, same load: each server serves a trivial processor pinned
# to core 0 (one worker / one core), the load generator (extproc-load, playing Envoy) runs on
# core 1. For each server and each concurrency, the headers shape flat out for a fixed time:
# streams/s, server CPU per stream, message latency percentiles. Then an instruction count per
# stream for libextproc under callgrind, the figure that does not move with a noisy machine.
#
#   bench/run.sh [SECONDS]        (default 5 s per point; writes build-rel/bench-sdk.json, prints
#                                  the tables and draws bench/throughput.png)
#
# Peers come from bench/peers/install.sh (the Python SDK, and a grpc-go baseline: the Go SDKs
# are not served by this machine's module proxy). Loopback only; every run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_POINT=${1:-5}
CONCURRENCY=(1 4 16 64 256)
OUT=build-rel/bench-sdk.json

scripts/setup.sh
cmake -S . -B build-rel -DCMAKE_BUILD_TYPE=Release -DEXTPROC_TESTS=OFF >/dev/null
cmake --build build-rel -j2 >/dev/null
bench/peers/install.sh >/dev/null
command -v valgrind >/dev/null || { apt-get install -y -qq valgrind >/dev/null; }

LOAD=build-rel/tools/loadgen/extproc-load
PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RESULTS=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$RESULTS"' EXIT

start_server() { # NAME -> sets SERVER_PID
  case "$1" in
  libextproc)
    taskset -c 0 build-rel/examples/extproc-examples --service "trivial@127.0.0.1:$PORT" \
      --workers 1 --log-level warn &
    ;;
  *) taskset -c 0 bench/peers/start.sh "$1" "$PORT" >/dev/null 2>&1 & ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 100); do
    .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" \
      2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench: $1 did not start" >&2
  exit 1
}

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

for server in libextproc go-grpc python; do
  start_server "$server"
  for c in "${CONCURRENCY[@]}"; do
    conns=$(( c < 4 ? c : 4 ))
    echo "bench: $server concurrency $c" >&2
    taskset -c 1 "$LOAD" --target "127.0.0.1:$PORT" --connections "$conns" --concurrency "$c" \
      --duration "$SECONDS_PER_POINT" --warmup 1 --server-pid "$SERVER_PID" --json \
      >"$RESULTS/$server-$c.json" || echo '{"failed": true}' >"$RESULTS/$server-$c.json"
  done
  stop_server
done

# Instructions per stream: the server under callgrind, a fixed number of streams.
echo "bench: callgrind" >&2
STREAMS=20000
valgrind --tool=callgrind --callgrind-out-file="$RESULTS/callgrind.out" \
  build-rel/examples/extproc-examples --service "trivial@127.0.0.1:$PORT" --workers 1 \
  --log-level warn 2>"$RESULTS/valgrind.log" &
SERVER_PID=$!
for _ in $(seq 300); do
  .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" \
    2>/dev/null && break
  sleep 0.1
done
# An idle baseline (start-up only) is subtracted: run once with no streams, once with STREAMS.
"$LOAD" --target "127.0.0.1:$PORT" --connections 4 --concurrency 64 --count "$STREAMS" \
  --timeout 30 --json >"$RESULTS/callgrind-load.json"
stop_server
valgrind --tool=callgrind --callgrind-out-file="$RESULTS/callgrind-idle.out" \
  build-rel/examples/extproc-examples --service "trivial@127.0.0.1:$PORT" --workers 1 \
  --log-level warn 2>/dev/null &
SERVER_PID=$!
for _ in $(seq 300); do
  .venv/bin/python -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" \
    2>/dev/null && break
  sleep 0.1
done
stop_server

.venv/bin/python - "$RESULTS" "$STREAMS" "$OUT" <<'EOF'
import glob, json, os, re, sys
results, streams, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def total_instructions(path):
    for line in open(path):
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")

doc = {"points": {}, "machine": os.uname().release}
for path in sorted(glob.glob(f"{results}/*-*.json")):
    name = os.path.basename(path)[:-5]
    if name.startswith("callgrind"):
        continue
    server, conc = name.rsplit("-", 1)
    doc["points"].setdefault(server, {})[conc] = json.load(open(path))
busy = total_instructions(f"{results}/callgrind.out")
idle = total_instructions(f"{results}/callgrind-idle.out")
doc["callgrind"] = {"streams": streams, "instructions_total": busy, "instructions_idle": idle,
                    "instructions_per_stream": (busy - idle) / streams}
json.dump(doc, open(out, "w"), indent=2)
print(f"bench: wrote {out}; callgrind {doc['callgrind']['instructions_per_stream']:.0f} "
      "instructions per stream")
EOF

# Tables and the plot (matplotlib in the bench virtualenv, pinned).
[ -x build-rel/bench-venv/bin/python ] || /usr/bin/python3 -m venv build-rel/bench-venv
build-rel/bench-venv/bin/pip install -q --disable-pip-version-check matplotlib==3.9.2
build-rel/bench-venv/bin/python bench/report.py "$OUT" bench/throughput.png
