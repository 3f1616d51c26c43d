#!/usr/bin/env bash
# Memory per idle HTTP/2 connection and per idle ext_proc stream, and what RSS comes back to after
# a burst of either: the processor's RSS with 5,000 idle connections, then with 10,000 streams
# open at once.
#
# The client is a small Python one: tools/loadgen's extproc-load (C) has no way yet to hold
# streams open (it ends each stream after its last reply); this script says so when it gains one.
#
# Starts build-rel/examples/extproc-examples --service trivial --workers 1 on a free loopback
# port, then bench/envoy/hold_streams.py (Python, the `h2` package in a scratch venv under
# build-rel/):
#  1. opens BENCH_IDLE_CONNECTIONS (default 5,000; 0 skips this) cleartext HTTP/2 connections as
#     Envoy keeps them between requests: preface and SETTINGS exchanged both ways, one ext_proc
#     stream each answered and reset (BENCH_CONN_STREAM=0: none), then all held idle; then
#     closes them;
#  2. opens BENCH_STREAMS (default 10,000) streams over BENCH_CONNECTIONS (default 4) HTTP/2
#     connections. Each stream sends request_headers as Envoy does (a curl GET's headers,
#     end_of_stream false), gets the processor's reply, and is then held open: not ended, not
#     reset, as while Envoy waits for the upstream. Then the connections close; then the same
#     again on new connections (is the first round's memory reused?).
# VmRSS is read from /proc:
#   idle          the server listening, no connection
#   conns_open    the idle connections held (after BENCH_HOLD s, default 3: the processor
#                 gives an idle connection's session pages back after 1 s to 2 s)
#   conns_closed  BENCH_SETTLE s (default 2.5) after they closed
#   connected     the 4 connections set up, no stream
#   open          every stream answered and held (after BENCH_HOLD s)
#   closed        BENCH_SETTLE s after the client closed its connections
#   open_round2, closed_round2   the same again
# and  bytes per idle connection = (conns_open − idle) / connections,   target ≤ 4 KiB;
#      bytes per idle stream     = (open − connected) / streams,        target ≤ 2.5 KiB;
#      after a burst, closed and conns_closed ≤ 2 × idle.
# 5,000 connections need as many descriptors in the processor and in the client: the script
# raises the soft open-file limit (`ulimit -n`) to the hard one and stops if that is too low.
#
# Prints a markdown table and writes build-rel/bench-memory.json. Loopback only; bounded in time
# (about a minute, most of it the Python client). Not part of the test suite. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

STREAMS=${BENCH_STREAMS:-10000}
CONNECTIONS=${BENCH_CONNECTIONS:-4}
HOLD=${BENCH_HOLD:-3}
SETTLE=${BENCH_SETTLE:-2.5}
IDLE_CONNECTIONS=${BENCH_IDLE_CONNECTIONS:-5000}
CONN_STREAM=${BENCH_CONN_STREAM:-1}
RUNNER=$ROOT/build-rel/examples/extproc-examples
VENV=$ROOT/build-rel/bench-venv
OUT_JSON=$ROOT/build-rel/bench-memory.json
TARGET_STREAM_BYTES=2560
TARGET_CONNECTION_BYTES=4096
TARGET_AFTER_BURST=2 # × idle RSS

log() { echo "bench: $*" >&2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-memory.XXXXXX")
SERVER_PID=
cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "$rc" -eq 0 ] && [ -z "${BENCH_KEEP:-}" ]; then rm -rf "$TMP"; else log "logs kept in $TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

scripts/setup.sh
log "building the Release build in build-rel"
if ! { cmake -S . -B build-rel -DCMAKE_BUILD_TYPE=Release -DEXTPROC_TESTS=OFF &&
       cmake --build build-rel -j2; } >"$TMP/build.log" 2>&1; then
  tail -n 40 "$TMP/build.log" >&2
  exit 1
fi
if ! "$VENV/bin/python" -c 'import h2' 2>/dev/null; then
  log "creating $VENV (the h2 package)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'h2>=4,<5'
fi

LOADGEN=$ROOT/build-rel/tools/loadgen/extproc-load
if [ -x "$LOADGEN" ] && "$LOADGEN" --help 2>&1 | grep -qi -- '--hold'; then
  log "note: $LOADGEN now has a --hold option; this script could use it instead"
fi

# Each idle connection takes a descriptor in the processor and one in the client, plus the
# processor's reserve (max_connections defaults to the limit less an eighth and 64).
NEED_FDS=$(( IDLE_CONNECTIONS + IDLE_CONNECTIONS / 4 + 256 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$NEED_FDS" ]; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -n)" -lt "$NEED_FDS" ]; then
    log "the open-file limit is $(ulimit -n) (hard $(ulimit -Hn)): $IDLE_CONNECTIONS idle" \
        "connections need about $NEED_FDS; lower BENCH_IDLE_CONNECTIONS or raise the hard limit"
    exit 1
  fi
fi

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SERVER_CMD=("$RUNNER" --service "trivial@127.0.0.1:$PORT" --workers 1 --grace-period 1 --drain-delay 0)
"${SERVER_CMD[@]}" >"$TMP/processor.log" 2>&1 </dev/null &
SERVER_PID=$!
for _ in $(seq 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/processor.log" >&2; exit 1; }
  sleep 0.1
done

CLIENT_CMD=("$VENV/bin/python" "$ROOT/bench/envoy/hold_streams.py" --port "$PORT"
            --pid "$SERVER_PID" --streams "$STREAMS" --connections "$CONNECTIONS" --hold "$HOLD"
            --settle "$SETTLE" --idle-connections "$IDLE_CONNECTIONS" --timeout 150
            --json "$TMP/result.json")
[ "$CONN_STREAM" = 1 ] || CLIENT_CMD+=(--no-conn-stream)
log "holding $IDLE_CONNECTIONS idle connections, then $STREAMS streams over $CONNECTIONS connections"
timeout 180 "${CLIENT_CMD[@]}" >"$TMP/client.log" 2>&1 || {
  log "the client failed:"
  cat "$TMP/client.log" >&2
  exit 1
}
kill -0 "$SERVER_PID" 2>/dev/null || { log "the processor died"; cat "$TMP/processor.log" >&2; exit 1; }

python3 - "$TMP/result.json" "$OUT_JSON" "$TARGET_STREAM_BYTES" "$TARGET_CONNECTION_BYTES" \
  "$TARGET_AFTER_BURST" \
  "$(printf '%q ' "${SERVER_CMD[@]}" | sed "s| *\$||; s|$ROOT/||g")" \
  "$(printf '%q ' "${CLIENT_CMD[@]}" | sed "s| *\$||; s|$ROOT/||g")" \
  "$("$VENV/bin/python" -c 'import h2; print(h2.__version__)')" \
  "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'EOF'
import datetime, json, sys
src, out, t_stream, t_conn, t_burst, server_cmd, client_cmd, h2_version, rev = sys.argv[1:]
t_stream, t_conn, t_burst = int(t_stream), int(t_conn), float(t_burst)
r = json.load(open(src))
idle = r["idle"]["VmRSS"]
checks = {"bytes_per_stream": r["bytes_per_stream"] <= t_stream,
          "after_stream_burst": max(r["closed"]["VmRSS"], r["closed_round2"]["VmRSS"])
                                <= t_burst * idle}
if r["idle_connections"]:
    checks["bytes_per_connection"] = r["bytes_per_connection"] <= t_conn
    checks["after_connection_burst"] = r["conns_closed"]["VmRSS"] <= t_burst * idle
r.update({
    "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "targets": {"bytes_per_stream": t_stream, "bytes_per_connection": t_conn,
                "after_burst_times_idle": t_burst},
    "within_target": checks,
    "commands": {"processor": server_cmd, "client": client_cmd},
    "versions": {"libextproc": rev, "h2": h2_version},
})
json.dump(r, open(out, "w"), indent=2)
mib = lambda b: f"{b / 1048576:.1f} MiB"
met = lambda key: "met" if checks[key] else "NOT met"
print(f"## Processor RSS: {r['idle_connections']} idle HTTP/2 connections, then "
      f"{r['streams']} idle ext_proc streams over {r['connections']} connections\n")
print("| point | VmRSS | RssAnon | × idle |")
print("|---|---:|---:|---:|")
points = ["idle"]
if r["idle_connections"]:
    points += ["conns_open", "conns_closed"]
points += ["connected", "open", "closed", "open_round2", "closed_round2"]
for point in points:
    p = r[point]
    print(f"| {point} | {mib(p['VmRSS'])} | {mib(p['RssAnon'])} | {p['VmRSS'] / idle:.2f} |")
print()
if r["idle_connections"]:
    with_stream = "one stream each, reset" if r["conn_stream"] else "no stream"
    print(f"- bytes per idle connection ({with_stream}), (conns_open − idle) / connections: "
          f"**{r['bytes_per_connection']:.0f} B** (target ≤ {t_conn} B: "
          f"{met('bytes_per_connection')}); anonymous memory only: "
          f"{r['anon_bytes_per_connection']:.0f} B; opened in {r['conns_open_seconds']} s")
    print(f"- after the connection burst: {mib(r['conns_closed']['VmRSS'])}, "
          f"{r['conns_closed']['VmRSS'] / idle:.2f}× idle (target ≤ {t_burst:g}×: "
          f"{met('after_connection_burst')})")
print(f"- bytes per idle stream, (open − connected) / streams: **{r['bytes_per_stream']:.0f} B** "
      f"(target ≤ {t_stream} B: {met('bytes_per_stream')}); over idle: "
      f"{r['bytes_per_stream_over_idle']:.0f} B; anonymous memory only: "
      f"{r['anon_bytes_per_stream']:.0f} B")
after = max(r["closed"]["VmRSS"], r["closed_round2"]["VmRSS"])
print(f"- after the stream bursts: up to {mib(after)}, {after / idle:.2f}× idle "
      f"(target ≤ {t_burst:g}×: {met('after_stream_burst')})")
print(f"- streams answered {r['answered']}, ended by the processor {r['ended_by_processor']}, "
      f"opened and answered in {r['open_seconds']} s")
growth = r["open_round2"]["VmRSS"] - r["open"]["VmRSS"]
if growth < (r["open"]["VmRSS"] - r["idle"]["VmRSS"]) / 10:
    print(f"- a second round of {r['streams']} streams: {mib(r['open_round2']['VmRSS'])}, "
          f"{growth / 1024:+.0f} KiB against the first: no leak")
else:
    print(f"- WARNING: a second round of streams grew RSS by {growth / 1024:.0f} KiB to "
          f"{mib(r['open_round2']['VmRSS'])}: the memory of closed streams is not reused")
print(f"\n```\n{server_cmd}\n{client_cmd}\n```")
print(f"libextproc {rev}, h2 {h2_version}")
EOF
log "wrote $OUT_JSON"
