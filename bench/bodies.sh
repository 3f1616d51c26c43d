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
#
# The Go peers in the same run (bench/peers/): go-grpc (grpc-go with no SDK, from
# bench/peers/install.sh) and the two Go SDKs (binaries named by BENCH_PEER_GO_WROSSMORROW and
# BENCH_PEER_GO_GETYOURGUIDE), each pinned and started afresh per row like libextproc, under the
# same load, in the pass-through rows they can serve: their trivial processors answer every body
# message with an empty reply of its type, which passes the body through unchanged in STREAMED
# and BUFFERED. They cannot serve FULL_DUPLEX_STREAMED (a pass-through must send each chunk back
# as a streamed_response; they never do, so the body never ends) and are not run there. Rows:
# STREAMED 1 MiB, BUFFERED 10 MiB (grpc-go's default 4 MiB receive limit refuses it: the table
# says so from the run's own errors) and BUFFERED 1 MiB (under that limit, so BUFFERED is
# compared too; libextproc runs it as well). A peer that is not available is skipped with a
# message (SKIP_PEERS=1 skips them all). The second table gives each server's figures and
# libextproc's ratio to the faster Go SDK, taken on each figure separately.
#
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
  # No drain delay: nothing watches its health here, and each row would wait 3 s for it.
  taskset -c 0 "$@" "$RUNNER" --service "$processor@127.0.0.1:$PORT" --workers 1 \
    --log-level warn --drain-delay 0 &
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

load_row() { # SHAPE EXPECT BODY CONCURRENCY JSON: the measured load against the running server
  local shape=$1 expect=$2 body=$3 concurrency=$4 json=$5
  local connections=$((concurrency < 4 ? concurrency : 4))
  taskset -c 1 "$LOAD" --target "127.0.0.1:$PORT" --shape "$shape" --body-bytes "$body" \
    --chunk-bytes "$CHUNK_BYTES" --expect-body "$expect" --concurrency "$concurrency" \
    --connections "$connections" --duration "$SECONDS_PER_ROW" --warmup 1 --timeout 30 \
    --server-pid "$SERVER_PID" --json >"$json" ||
    echo "bodies: extproc-load exited with $? (see $json)" >&2
}

for row in "${ROWS[@]}"; do
  read -r name shape processor expect body concurrency <<<"$row"
  echo "bodies: $name" >&2
  start_server "$processor"
  load_row "$shape" "$expect" "$body" "$concurrency" "$OUT/$name.json"
  stop_server
done

# ---- the Go peers, in the pass-through rows they can serve (see the header)

# name shape body-bytes concurrency; libextproc runs the rows it has not run above.
PEER_ROWS=(
  "streamed-pass streamed 1048576 $CONCURRENCY"
  "buffered-pass buffered 10485760 $BUFFERED_CONCURRENCY"
  "buffered-pass-1m buffered 1048576 $BUFFERED_CONCURRENCY"
)
PEERS=(go-grpc go-wrossmorrow go-getyourguide)
PEERS_DIR=${BENCH_PEERS_DIR:-build/bench-peers}
mkdir -p "$OUT/peers"
: >"$OUT/peers/skipped.tsv"

peer_missing() { # NAME: why the peer cannot run here (bench/peers/missing.sh), nothing when it can
  BENCH_PEERS_DIR="$PEERS_DIR" bench/peers/missing.sh "$1" || true
}

start_peer() { # NAME: like start_server, through bench/peers/start.sh (which execs the peer)
  taskset -c 0 bench/peers/start.sh "$1" "$PORT" >>"$OUT/peers/$1.log" 2>&1 &
  SERVER_PID=$!
  wait_listening
}

for row in "${PEER_ROWS[@]}"; do
  read -r name shape body concurrency <<<"$row"
  [ -f "$OUT/$name.json" ] && continue
  echo "bodies: $name (libextproc)" >&2
  start_server body-pass
  load_row "$shape" same "$body" "$concurrency" "$OUT/$name.json"
  stop_server
done
for peer in "${PEERS[@]}"; do
  reason=$(peer_missing "$peer")
  [ "${SKIP_PEERS:-0}" = 1 ] && reason="SKIP_PEERS=1"
  if [ -n "$reason" ]; then
    echo "bodies: skipped $peer: $reason" >&2
    printf '%s\t%s\n' "$peer" "$reason" >>"$OUT/peers/skipped.tsv"
    continue
  fi
  for row in "${PEER_ROWS[@]}"; do
    read -r name shape body concurrency <<<"$row"
    echo "bodies: $name ($peer)" >&2
    start_peer "$peer"
    load_row "$shape" same "$body" "$concurrency" "$OUT/peers/$peer-$name.json"
    stop_server
  done
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

# ---- libextproc and the Go peers, pass-through rows

ROWS = [("streamed-pass", "STREAMED 1 MiB"), ("buffered-pass", "BUFFERED 10 MiB"),
        ("buffered-pass-1m", "BUFFERED 1 MiB")]
SDKS = ["go-wrossmorrow", "go-getyourguide"]
GRPC_CODES = {1: "CANCELLED", 2: "UNKNOWN", 4: "DEADLINE_EXCEEDED", 8: "RESOURCE_EXHAUSTED",
              12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE"}

def figures(path):
    """A row's comparable figures, or {"failed": why} when the server did not serve it."""
    try:
        r = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"failed": "no report"}
    if r["streams"] == 0 or r["errors"]["total"] > r["streams"]:
        first = r.get("first_error", "?")
        m = re.search(r"grpc-status (\d+)", first)
        if m and int(m.group(1)) in GRPC_CODES:
            first += f" ({GRPC_CODES[int(m.group(1))]})"
        return {"failed": f"{r['errors']['total']} of {r['streams_started']} streams failed; "
                          f"first: {first}"}
    s = r.get("server", {})
    core = s.get("cpu_percent", 0) / 100
    return {"streams_per_s": r["streams_per_s"], "errors": r["errors"]["total"],
            "body_mb_per_s": r["body_bytes_sent_per_s"] / 1e6,
            "gb_per_s_per_core": r["body_bytes_sent_per_s"] / core / 1e9 if core else 0,
            "server_core_percent": s.get("cpu_percent", 0),
            "cpu_us_per_mib": s.get("cpu_us_per_mib", 0),
            "peak_rss_mib": s.get("peak_rss_kib", 0) / 1024,
            "kib_per_stream": s.get("peak_growth_per_stream_kib", 0),
            "concurrency": r["concurrency"]}

skipped = dict(line.split("\t", 1) for line in
               (out / "peers" / "skipped.tsv").read_text().splitlines() if line.strip())
servers = ["libextproc"] + [p for p in ["go-grpc"] + SDKS if p not in skipped]
table = {}
for row, _ in ROWS:
    table[row] = {"libextproc": figures(out / f"{row}.json")}
    for peer in servers[1:]:
        table[row][peer] = figures(out / "peers" / f"{peer}-{row}.json")

print("\nPass-through, libextproc (body-pass) and the Go peers (trivial processors: empty body "
      "replies), same load and pinning; FULL_DUPLEX_STREAMED is left out for the peers (they "
      "never send a streamed_response)\n")
head = ("| row | server | streams/s | body MB/s | server core % | GB/s per core | µs/MiB | "
        "peak RSS MiB | KiB/stream |")
print(head)
print("|" + "---|" * (head.count("|") - 1))
for row, label in ROWS:
    for server in servers:
        f = table[row][server]
        if "failed" in f:
            print(f"| {label} | {server} | cannot serve it: {f['failed']} | | | | | | |")
            continue
        errors = f" ({f['errors']} errors)" if f["errors"] else ""
        print(f"| {label} | {server}{errors} | {f['streams_per_s']:,.1f} | "
              f"{f['body_mb_per_s']:,.1f} | {f['server_core_percent']:.1f} | "
              f"{f['gb_per_s_per_core']:.3f} | {f['cpu_us_per_mib']:,.1f} | "
              f"{f['peak_rss_mib']:.1f} | {f['kib_per_stream']:,.1f} |")

print("\nlibextproc's ratio to the faster Go SDK (each figure's own faster SDK)\n")
print("| row | GB/s per core: libextproc / best SDK | ratio | µs/MiB: libextproc / best SDK | ratio |")
print("|---|---|---:|---|---:|")
ratios = {}
for row, label in ROWS:
    mine = table[row]["libextproc"]
    sdks = {p: table[row][p] for p in SDKS if p in table[row] and "failed" not in table[row][p]}
    if "failed" in mine or not sdks:
        why = "libextproc failed" if "failed" in mine else "no Go SDK served it"
        print(f"| {label} | {why} | | | |")
        continue
    best_rate = max(sdks, key=lambda p: sdks[p]["gb_per_s_per_core"])
    best_cpu = min(sdks, key=lambda p: sdks[p]["cpu_us_per_mib"] or float("inf"))
    rate = mine["gb_per_s_per_core"] / sdks[best_rate]["gb_per_s_per_core"]
    cpu = sdks[best_cpu]["cpu_us_per_mib"] / mine["cpu_us_per_mib"]
    ratios[row] = {"gb_per_s_per_core": rate, "faster_sdk_rate": best_rate,
                   "cpu_us_per_mib": cpu, "faster_sdk_cpu": best_cpu}
    print(f"| {label} | {mine['gb_per_s_per_core']:.3f} / {sdks[best_rate]['gb_per_s_per_core']:.3f}"
          f" ({best_rate}) | {rate:.1f}× | {mine['cpu_us_per_mib']:,.1f} / "
          f"{sdks[best_cpu]['cpu_us_per_mib']:,.1f} ({best_cpu}) | {cpu:.1f}× |")
for peer, why in skipped.items():
    print(f"\nskipped {peer}: {why}")
(out / "comparison.json").write_text(json.dumps(
    {"seconds_per_row": float(seconds), "rows": table, "ratio_to_faster_sdk": ratios,
     "skipped": skipped}, indent=2) + "\n")

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
