#!/usr/bin/env bash
# Large bodies through libextproc alone: for each body shape of extproc-load, the processor that
# passes every chunk through (body-pass) and the one that rewrites every chunk to the same size
# (body-rewrite), the server pinned to core 0 with one worker, the load generator on core 1
# playing Envoy. Shapes: a 1 MiB request body in STREAMED and in FULL_DUPLEX_STREAMED chunks of
# 16 KiB (Envoy's buffer slice), and a 10 MiB BUFFERED body. Every body reply is checked byte for
# byte (--expect-body). The server is started afresh for each row, so its idle and peak RSS are
# its own.
#
#   bench/bodies.sh [SECONDS]     (default 3 s per row after 1 s of warm-up; prints the table,
#                                  keeps each row's extproc-load JSON in build-rel/bench-bodies/)
#
# Environment: CONCURRENCY (streamed and duplex rows, default 16), BUFFERED_CONCURRENCY (default
# 4), CHUNK_BYTES (default 16384), CALLGRIND=1 to add the instructions per MiB of the STREAMED
# pass-through row under callgrind (a figure a noisy machine does not move; about a minute).
#
# Columns: body MB/s is request body bytes sent per second of the measured time (what the
# processor took in); out MB/s the body bytes the replies sent on (rewritten chunks, streamed
# pieces); GB/s per core = body MB/s / the server's core fraction (its CPU time over the same
# period), i.e. the rate one fully busy core would sustain; peak RSS is VmHWM since the measured
# period began, KiB/stream the growth from the idle server to that peak per concurrent stream.
# Loopback only; every run is bounded (extproc-load's hard timeout), and every process started
# here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_ROW=${1:-3}
CONCURRENCY=${CONCURRENCY:-16}
BUFFERED_CONCURRENCY=${BUFFERED_CONCURRENCY:-4}
CHUNK_BYTES=${CHUNK_BYTES:-16384}
BUILD=build-rel
OUT=$BUILD/bench-bodies
LOAD=$BUILD/tools/loadgen/extproc-load
RUNNER=$BUILD/examples/extproc-examples
CALLGRIND_STREAMS=200 # 200 MiB of STREAMED body under callgrind

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DEXTPROC_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target extproc-examples extproc-load >/dev/null
rm -rf "$OUT"
mkdir -p "$OUT"

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
trap stop_server EXIT

wait_listening() { # up to 30 s (callgrind starts slowly)
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "bodies: the server exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "bodies: the server did not listen on $PORT" >&2
  exit 1
}

start_server() { # PROCESSOR [WRAPPER...]
  local processor=$1
  shift
  taskset -c 0 "$@" "$RUNNER" --service "$processor@127.0.0.1:$PORT" --workers 1 \
    --log-level warn &
  SERVER_PID=$!
  wait_listening
}

# name shape processor expectation body-bytes concurrency
ROWS=(
  "streamed-pass streamed body-pass same 1048576 $CONCURRENCY"
  "streamed-rewrite streamed body-rewrite upper 1048576 $CONCURRENCY"
  "duplex-pass duplex body-pass same 1048576 $CONCURRENCY"
  "duplex-rewrite duplex body-rewrite upper 1048576 $CONCURRENCY"
  "buffered-pass buffered body-pass same 10485760 $BUFFERED_CONCURRENCY"
  "buffered-rewrite buffered body-rewrite upper 10485760 $BUFFERED_CONCURRENCY"
)

for row in "${ROWS[@]}"; do
  read -r name shape processor expect body concurrency <<<"$row"
  echo "bodies: $name" >&2
  start_server "$processor"
  connections=$((concurrency < 4 ? concurrency : 4))
  taskset -c 1 "$LOAD" --target "127.0.0.1:$PORT" --shape "$shape" --body-bytes "$body" \
    --chunk-bytes "$CHUNK_BYTES" --expect-body "$expect" --concurrency "$concurrency" \
    --connections "$connections" --duration "$SECONDS_PER_ROW" --warmup 1 --timeout 30 \
    --server-pid "$SERVER_PID" --json >"$OUT/$name.json" ||
    echo "bodies: $name: extproc-load exited with $? (see $OUT/$name.json)" >&2
  stop_server
done

if [ "${CALLGRIND:-0}" = 1 ]; then
  # Instructions per MiB of STREAMED pass-through: the server under callgrind serving a fixed
  # number of streams, less an idle run (start-up and shutdown only).
  command -v valgrind >/dev/null || { echo "bodies: CALLGRIND=1 needs valgrind" >&2; exit 1; }
  for run in idle load; do
    echo "bodies: callgrind ($run)" >&2
    start_server body-pass valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$run" \
      --log-file="$OUT/valgrind.$run.log"
    if [ "$run" = load ]; then
      taskset -c 1 "$LOAD" --target "127.0.0.1:$PORT" --shape streamed --chunk-bytes "$CHUNK_BYTES" \
        --expect-body same --concurrency 4 --count "$CALLGRIND_STREAMS" --timeout 60 \
        --json >"$OUT/callgrind-load.json"
    fi
    stop_server
  done
fi

python3 - "$OUT" "$SECONDS_PER_ROW" <<'EOF'
import json, pathlib, re, sys

out, seconds = pathlib.Path(sys.argv[1]), sys.argv[2]
print(f"\nlibextproc, bodies: server on core 0 (one worker), extproc-load on core 1, "
      f"{seconds} s per row after 1 s of warm-up\n")
head = ("| row | concurrency | streams/s | body MB/s | out MB/s | server core % | "
        "µs/stream | µs/MiB | GB/s per core | client core % | peak RSS MiB | KiB/stream |")
print(head)
print("|" + "---|" * (head.count("|") - 1))
for name in ["streamed-pass", "streamed-rewrite", "duplex-pass", "duplex-rewrite",
             "buffered-pass", "buffered-rewrite"]:
    path = out / f"{name}.json"
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"| {name} | failed: no report |")
        continue
    s = r.get("server", {})
    core = s.get("cpu_percent", 0) / 100
    per_core = r["body_bytes_sent_per_s"] / core / 1e9 if core else 0
    errors = r["errors"]["total"]
    print(f"| {name}{' (' + str(errors) + ' errors)' if errors else ''} | {r['concurrency']} | "
          f"{r['streams_per_s']:,.1f} | {r['body_bytes_sent_per_s'] / 1e6:,.1f} | "
          f"{r['body_bytes_received_per_s'] / 1e6:,.1f} | {s.get('cpu_percent', 0):.1f} | "
          f"{s.get('cpu_us_per_stream', 0):,.1f} | {s.get('cpu_us_per_mib', 0):,.1f} | "
          f"{per_core:.3f} | {r['client']['cpu_percent']:.1f} | "
          f"{s.get('peak_rss_kib', 0) / 1024:.1f} | {s.get('peak_growth_per_stream_kib', 0):,.1f} |")

def total_ir(path):
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"(?:summary|totals):\s+(\d+)", line)
        if m:
            return int(m.group(1))
    return None

idle, load = out / "callgrind.idle", out / "callgrind.load"
if idle.exists() and load.exists():
    report = json.loads((out / "callgrind-load.json").read_text())
    mib = report["body_bytes_sent"] / (1 << 20)
    ir = total_ir(load) - total_ir(idle)
    print(f"\ncallgrind, STREAMED pass-through: {ir / mib:,.0f} instructions per MiB "
          f"({ir / report['streams']:,.0f} per 1 MiB stream; {report['streams']} streams, "
          f"errors {report['errors']['total']})")
EOF
