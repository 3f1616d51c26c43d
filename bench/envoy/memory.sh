#!/usr/bin/env bash
# Memory per idle ext_proc stream: the processor's RSS with 10,000 streams open at once.
#
# The client is a small Python one: tools/loadgen's extproc-load (C) has no way yet to hold
# streams open (it ends each stream after its last reply); this script says so when it gains one.
#
# Starts build-rel/examples/extproc-examples --service trivial --workers 1 on a free loopback
# port, then bench/envoy/hold_streams.py (Python, the `h2` package in a scratch venv under
# build-rel/) opens BENCH_STREAMS (default 10,000) streams over BENCH_CONNECTIONS (default 4)
# HTTP/2 connections. Each stream sends request_headers as Envoy does (a curl GET's headers,
# end_of_stream false), gets the processor's reply, and is then held open: not ended, not reset,
# as while Envoy waits for the upstream. VmRSS is read from /proc:
#   idle       the server listening, no connection
#   connected  the connections set up, no stream
#   open       every stream answered and held (after BENCH_HOLD s, default 2)
#   closed     after the client closed its connections
#   then open and closed again, on new connections: is the first round's memory reused?
# and  bytes per idle stream = (RSS open − RSS idle) / streams.  Target: ≤ 4 KiB.
#
# Prints a markdown table and writes build-rel/bench-memory.json. Loopback only; bounded in time.
# Not part of the test suite. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

STREAMS=${BENCH_STREAMS:-10000}
CONNECTIONS=${BENCH_CONNECTIONS:-4}
HOLD=${BENCH_HOLD:-2}
RUNNER=$ROOT/build-rel/examples/extproc-examples
VENV=$ROOT/build-rel/bench-venv
OUT_JSON=$ROOT/build-rel/bench-memory.json
TARGET_BYTES=4096

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
            --timeout 120 --json "$TMP/result.json")
log "holding $STREAMS streams over $CONNECTIONS connections"
timeout 180 "${CLIENT_CMD[@]}" >"$TMP/client.log" 2>&1 || {
  log "the client failed:"
  cat "$TMP/client.log" >&2
  exit 1
}
kill -0 "$SERVER_PID" 2>/dev/null || { log "the processor died"; cat "$TMP/processor.log" >&2; exit 1; }

python3 - "$TMP/result.json" "$OUT_JSON" "$TARGET_BYTES" \
  "$(printf '%q ' "${SERVER_CMD[@]}" | sed "s| *\$||; s|$ROOT/||g")" \
  "$(printf '%q ' "${CLIENT_CMD[@]}" | sed "s| *\$||; s|$ROOT/||g")" \
  "$("$VENV/bin/python" -c 'import h2; print(h2.__version__)')" \
  "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'EOF'
import datetime, json, sys
src, out, target, server_cmd, client_cmd, h2_version, rev = sys.argv[1:]
r = json.load(open(src))
r.update({
    "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "target_bytes_per_stream": int(target),
    "within_target": r["bytes_per_stream"] <= int(target),
    "commands": {"processor": server_cmd, "client": client_cmd},
    "versions": {"libextproc": rev, "h2": h2_version},
})
json.dump(r, open(out, "w"), indent=2)
mib = lambda b: f"{b / 1048576:.1f} MiB"
print(f"## Processor RSS with {r['streams']} idle ext_proc streams "
      f"({r['connections']} HTTP/2 connections)\n")
print("| point | VmRSS | RssAnon | threads |")
print("|---|---:|---:|---:|")
for point in ("idle", "connected", "open", "closed", "open_round2", "closed_round2"):
    p = r[point]
    print(f"| {point} | {mib(p['VmRSS'])} | {mib(p['RssAnon'])} | {p['Threads']} |")
print()
print(f"- bytes per idle stream, (open − idle) / streams: **{r['bytes_per_stream']:.0f} B** "
      f"(target ≤ {target} B: {'met' if r['within_target'] else 'NOT met'})")
print(f"- over the connected baseline, (open − connected) / streams: "
      f"{r['bytes_per_stream_over_connected']:.0f} B; anonymous memory only: "
      f"{r['anon_bytes_per_stream']:.0f} B")
print(f"- streams answered {r['answered']}, ended by the processor {r['ended_by_processor']}, "
      f"opened and answered in {r['open_seconds']} s")
growth = r["open_round2"]["VmRSS"] - r["open"]["VmRSS"]
if growth < (r["open"]["VmRSS"] - r["idle"]["VmRSS"]) / 10:
    print(f"- after the connections close RSS stays at {mib(r['closed']['VmRSS'])} (the allocator "
          f"keeps freed memory); a second round of {r['streams']} streams reuses it: "
          f"{mib(r['open_round2']['VmRSS'])}, {growth / 1024:+.0f} KiB")
else:
    print(f"- WARNING: a second round of streams grew RSS by {growth / 1024:.0f} KiB to "
          f"{mib(r['open_round2']['VmRSS'])}: the memory of closed streams is not reused")
print(f"\n```\n{server_cmd}\n{client_cmd}\n```")
print(f"libextproc {rev}, h2 {h2_version}")
EOF
log "wrote $OUT_JSON"
