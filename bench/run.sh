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
# Servers, in this order: libextproc, go-grpc (grpc-go with no SDK), go-wrossmorrow and
# go-getyourguide (the two Go SDKs), python (the Python SDK). python and go-grpc come from
# bench/peers/install.sh. The Go SDK peers are binaries built outside this project
# (bench/peers/README.md): BENCH_PEER_GO_WROSSMORROW=/path/to/binary and
# BENCH_PEER_GO_GETYOURGUIDE=/path/to/binary; a peer whose variable is unset is skipped, and
# the run says so (on stderr and in the report). Loopback only; every run is bounded.
#
# First, the differential fuzz tests of the direct decoder and encoder (tests/unit/test_decode.c,
# test_encode.c) run far longer than in the test suite: FUZZ_INPUTS generated messages each
# (default 1,000,000, with their mutants; about a minute), on a seed of the clock, printed.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_POINT=${1:-5}
CONCURRENCY=(1 4 16 64 256)
OUT=build-rel/bench-sdk.json

scripts/setup.sh
cmake -S . -B build-rel -DCMAKE_BUILD_TYPE=Release -DEXTPROC_TESTS=OFF >/dev/null
cmake --build build-rel -j2 >/dev/null
bench/peers/install.sh >/dev/null

# The direct decoder and encoder against protobuf-c, longer than the suite runs them.
FUZZ_INPUTS=${FUZZ_INPUTS:-1000000}
FUZZ_SEED=$(date +%s)
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-fuzz -j2 --target test_decode test_encode >/dev/null
echo "bench: differential fuzz, $FUZZ_INPUTS messages each, seed $FUZZ_SEED" >&2
EXTPROC_DECODE_FUZZ_INPUTS=$FUZZ_INPUTS EXTPROC_DECODE_FUZZ_SEED=$FUZZ_SEED \
  build-fuzz/tests/test_decode 2>&1 | grep -E '^decode fuzz|PASSED|FAILED' >&2
EXTPROC_ENCODE_FUZZ_INPUTS=$FUZZ_INPUTS EXTPROC_ENCODE_FUZZ_SEED=$FUZZ_SEED \
  build-fuzz/tests/test_encode 2>&1 | grep -E '^encode fuzz|PASSED|FAILED' >&2

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

# A Go SDK peer runs only when its binary is given (start.sh would refuse it otherwise).
peer_binary_var() { # NAME -> the variable start.sh reads, or nothing for the installed peers
  case "$1" in
  go-wrossmorrow | go-getyourguide) echo "BENCH_PEER_$(echo "$1" | tr '[:lower:]-' '[:upper:]_')" ;;
  esac
}

: >"$RESULTS/skipped.txt"
: >"$RESULTS/binaries.txt"
for server in libextproc go-grpc go-wrossmorrow go-getyourguide python; do
  var=$(peer_binary_var "$server")
  if [ -n "$var" ]; then
    if [ -z "${!var:-}" ] || [ ! -x "${!var}" ]; then
      reason="$var is unset"
      [ -z "${!var:-}" ] || reason="$var=${!var} is not executable"
      reason="$reason (bench/peers/README.md says how to build it)"
      echo "bench: skipped $server: $reason" >&2
      printf '%s\t%s\n' "$server" "$reason" >>"$RESULTS/skipped.txt"
      continue
    fi
    printf '%s\t%s\n' "$server" "${!var}" >>"$RESULTS/binaries.txt"
  fi
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
import glob, json, os, re, shutil, subprocess, sys
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
doc["skipped"] = dict(line.rstrip("\n").split("\t", 1)
                     for line in open(f"{results}/skipped.txt") if line.strip())
# Which SDK and dependency versions each Go SDK binary was built with, as Go recorded them.
doc["peer_builds"] = {}
for line in open(f"{results}/binaries.txt"):
    if not line.strip():
        continue
    server, binary = line.rstrip("\n").split("\t", 1)
    info = {"binary": binary}
    if shutil.which("go"):
        built = subprocess.run(["go", "version", "-m", binary], capture_output=True, text=True)
        wanted = r"go1\.|extproc|grpc\s|control-plane|protobuf\s|=>"
        info["go_version_m"] = [l.strip() for l in built.stdout.splitlines()
                                if re.search(wanted, l)]
    doc["peer_builds"][server] = info
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
