#!/usr/bin/env bash
# Large request bodies through Envoy and one ext_proc filter: what passing a body through a
# processor (or rewriting it chunk by chunk) costs Envoy and the processor, per request and per
# MiB, against the same Envoy with the filter disabled.
#
#   h2load --h1 -d BODY ──POST──▶ Envoy 1.40 ──ext_proc (gRPC, h2c)──▶ processor
#                                   └──HTTP/1.1──▶ nginx (reads the whole body, then 200)
#
#   bench/envoy/bodies.sh         (2 to 3 minutes; prints the table, writes
#                                  build-rel/bench-envoy-bodies.json)
#
# One Envoy (--concurrency 1), three listeners, each with one ext_proc filter sending the request
# headers and the request body (response headers, bodies and trailers SKIP, so only the request
# body is measured; failure_mode_allow false, so a failing processor shows as an error):
#   streamed  request_body_mode STREAMED; a 1 MiB body
#   duplex    FULL_DUPLEX_STREAMED, request_trailer_mode SEND (Envoy 1.40 refuses the mode
#             without it); a 1 MiB body
#   buffered  BUFFERED; a 10 MiB body, and a 1 MiB one. Envoy buffers the whole body before it
#             sends it, up to the listener's per_connection_buffer_limit_bytes (default 1 MiB,
#             over which it answers 413): raised to 32 MiB here. The body then goes to the
#             processor as one gRPC message, and a rewritten body comes back as one: the
#             processor must accept 10 MiB messages (libextproc: 16 MiB by default; grpc-go
#             servers: 4 MiB, so the Go peers cannot serve it), and Envoy's gRPC client gets
#             max_receive_message_length 32 MiB for the replacement.
# message_timeout is 5 s (Envoy's default 200 ms is meant for headers; a 10 MiB body on a busy
# 2-core machine can take longer), and the routes' timeout 60 s.
# Every listener has a /no-ext-procs route with the filter disabled: the baseline, measured with
# the 1 MiB and the 10 MiB body. Another route, /check, sends to tools/echo_upstream.py instead
# of nginx: before each row one POST there shows what the upstream received, which must be the
# body (pass-through) or its ASCII uppercase (rewrite), byte for byte; a processor that cannot
# serve a row (no 200, or the wrong body) is reported as such and the row is not measured.
#
# Processors, each pinned like Envoy (below) and started afresh with a fresh Envoy:
#   libextproc body-pass and body-rewrite (examples/bodies.c, --workers 1), every row;
#   the Go peers of bench/peers/ (their trivial processors answer every body message with an
#   empty reply of its type, i.e. pass the body through) in the pass-through rows: go-grpc
#   (bench/peers/install.sh) and the two Go SDKs (BENCH_PEER_GO_WROSSMORROW,
#   BENCH_PEER_GO_GETYOURGUIDE name their binaries); one that is not available is skipped with a
#   message. In FULL_DUPLEX_STREAMED a pass-through must send each chunk back as a
#   streamed_response, which they never do, and BUFFERED 10 MiB exceeds their receive limit:
#   the check before each row shows what Envoy makes of that.
#
# Figures per row, over BENCH_DURATION s (default 5) after BENCH_WARMUP s (default 2) that are
# not counted: requests/s and body MB/s from h2load (-c BENCH_CONNECTIONS, default 8, for 1 MiB;
# BENCH_BUFFERED_CONNECTIONS, default 4, for 10 MiB; every request must be a 2xx); CPU time of
# Envoy and of the processor (all threads, /proc/PID/task/*/schedstat) over the measured run, per
# request and per MiB of body; the processor's peak RSS over the measured run (VmHWM, reset
# through /proc/PID/clear_refs first) and its idle RSS before; Envoy's ext_proc counters over the
# run (messages per request, failures, timeouts).
#
# BENCH_CLIENT=h2 makes h2load speak HTTP/2 (cleartext) to Envoy instead of HTTP/1.1: the
# processor then gets FULL_DUPLEX_STREAMED bodies in 16 KiB chunks instead of a few large ones
# (the "ext_proc msgs/request" column shows which).
#
# Pinning (taskset), as bench/envoy/run.sh does for throughput: Envoy and the processor on core 0
# (BENCH_ENVOY_CPU, BENCH_PROC_CPU), nginx and h2load on core 1 (BENCH_UPSTREAM_CPU,
# BENCH_LOAD_CPU). BENCH_KEEP=1 keeps the temp dir (configs, logs, raw results).
# Loopback addresses only; every run is bounded (timeout); every process started here is stopped
# on exit. Not part of the test suite; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-5}
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-8}
BUFFERED_CONNECTIONS=${BENCH_BUFFERED_CONNECTIONS:-4}
ENVOY_CPU=${BENCH_ENVOY_CPU:-0}
PROC_CPU=${BENCH_PROC_CPU:-0}
UPSTREAM_CPU=${BENCH_UPSTREAM_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
if [ "$(nproc)" -lt 2 ]; then ENVOY_CPU=0 PROC_CPU=0 UPSTREAM_CPU=0 LOAD_CPU=0; fi
# The client's protocol decides the chunks a body reaches the processor in: over HTTP/1.1 Envoy
# hands the filter what each socket read brought (hundreds of KiB when the client writes a whole
# body at once), over HTTP/2 one DATA frame each (16 KiB). That shows in FULL_DUPLEX_STREAMED;
# in STREAMED, Envoy holds what arrives until the headers' reply and sends it as one chunk, so a
# fast client's 1 MiB body goes in one or two messages over either protocol.
case "${BENCH_CLIENT:-h1}" in
h1) CLIENT_FLAGS=(--h1) ;;
h2) CLIENT_FLAGS=() ;;
*) echo "bench-bodies: BENCH_CLIENT must be h1 or h2" >&2; exit 2 ;;
esac
STARTUP_TIMEOUT=20          # seconds for any server to come up
CHECK_TIMEOUT=20            # seconds for one checking POST (10 MiB through the echo upstream)
MIB=1048576
BUFFER_LIMIT=$((32 * MIB))  # Envoy's listener buffer and gRPC receive limit: > 10 MiB + framing
OUT_JSON=$ROOT/build-rel/bench-envoy-bodies.json
RUNNER=$ROOT/build-rel/examples/extproc-examples
ENVOY=$ROOT/.venv/bin/envoy
PEERS_DIR=${BENCH_PEERS_DIR:-$ROOT/build/bench-peers}

log() { echo "bench-bodies: $*" >&2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-envoy-bodies.XXXXXX")
RESULTS=$TMP/results
LOGS=$TMP/logs
mkdir -p "$RESULTS" "$LOGS"

PIDS=() # the servers this script started and has not stopped yet
stop_pids() { # PID...: SIGTERM, then SIGKILL after 5 s; each is reaped and forgotten
  local pid p keep
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true # still our unreaped child: the pid is not reused
    wait "$pid" 2>/dev/null || true
    keep=()
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
  done
}
cleanup() {
  local rc=$?
  stop_pids "${PIDS[@]}"
  if [ "$rc" -eq 0 ] && [ -z "${BENCH_KEEP:-}" ]; then
    rm -rf "$TMP"
  else
    log "configs, logs and raw results kept in $TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- what it needs

[ -x "$ENVOY" ] || scripts/setup.sh
log "building the Release build in build-rel"
if ! { cmake -S . -B build-rel -DCMAKE_BUILD_TYPE=Release -DEXTPROC_TESTS=OFF &&
       cmake --build build-rel -j2 --target extproc-examples; } >"$LOGS/build.log" 2>&1; then
  tail -n 40 "$LOGS/build.log" >&2
  exit 1
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
missing=()
[ -x "$NGINX" ] || missing+=(nginx-light)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  log "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
command -v taskset >/dev/null || { log "taskset (util-linux) is missing"; exit 1; }

# ---------------------------------------------------------------- helpers

free_ports() { # N: N distinct free loopback ports, held together while chosen
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

LAST_PID=
start_bg() { # CPU LOG CMD...: starts CMD pinned to CPU, in the background; its command is kept
  local cpu=$1 logf=$2
  shift 2
  printf '%s\n' "taskset -c $cpu $*" >>"$RESULTS/commands.txt"
  taskset -c "$cpu" "$@" >"$logf" 2>&1 </dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
envoy_ready() { [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/ready")" = 200 ]; }

wait_for() { # WHAT PID LOG CHECK...: polls CHECK until it succeeds; fails if PID dies
  local what=$1 pid=$2 logf=$3
  shift 3
  local deadline=$((SECONDS + STARTUP_TIMEOUT))
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$what exited while starting:"
      tail -n 30 "$logf" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out after ${STARTUP_TIMEOUT}s waiting for $what:"
      tail -n 30 "$logf" >&2
      exit 1
    fi
    sleep 0.1
  done
}

cpu_ns() { # PID: nanoseconds on CPU so far, all threads
  local f total=0 ns
  for f in /proc/"$1"/task/*/schedstat; do
    read -r ns _ <"$f" 2>/dev/null && total=$((total + ns))
  done
  echo "$total"
}

status_kib() { # PID FIELD: a VmRSS/VmHWM line of /proc/PID/status, in KiB
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

extproc_stats() { # ADMIN_PORT OUT: Envoy's ext_proc counters, NAME VALUE per line
  curl -s -m 5 "http://127.0.0.1:$1/stats?filter=ext_proc&usedonly" |
    sed -n 's/^http\.[a-z_]*\.ext_proc\.\([a-z_.]*\): \([0-9]*\)$/\1 \2/p' >"$2"
}

# ---------------------------------------------------------------- bodies, nginx, the echo upstream

# Lowercase letters and digits, so that the rewrite (ASCII uppercase) changes most bytes.
python3 - "$TMP" <<'EOF'
import sys
line = b"the quick brown fox jumps over the lazy dog 0123456789\n"
for name, size in (("body-1m", 1 << 20), ("body-10m", 10 << 20)):
    data = (line * (size // len(line) + 1))[:size]
    open(f"{sys.argv[1]}/{name}", "wb").write(data)
    open(f"{sys.argv[1]}/{name}.upper", "wb").write(data.upper())
EOF

read -r NGINX_PORT ECHO_PORT <<<"$(free_ports 2)"
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
# The benchmark's upstream: reads every request body to its end, then answers 200. nginx answers
# a plain "return 200" before reading the body (it discards it afterwards), and Envoy resets a
# request whose response ended before its body was sent: the mirror module (mirror_request_body)
# reads the whole body before the content phase, where the static and index modules answer
# 403/404 (an empty root), turned into a fixed 200 by error_page. The body stays in memory
# (client_body_buffer_size).
daemon off;
master_process off;
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_max_body_size 0;
  client_body_buffer_size 16m;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $TMP/nginx/empty;
    location / {
      mirror /read-body;
      mirror_request_body on;
      error_page 403 404 405 =200 @ok;
    }
    location = /read-body { internal; return 204; }
    location @ok { default_type text/plain; return 200 "body read\n"; }
  }
}
EOF
mkdir -p "$TMP/nginx/empty"
start_bg "$UPSTREAM_CPU" "$LOGS/nginx.log" \
  "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log"
NGINX_PID=$LAST_PID
wait_for nginx "$NGINX_PID" "$LOGS/nginx.log" tcp_open "$NGINX_PORT"
start_bg "$UPSTREAM_CPU" "$LOGS/echo.log" python3 tools/echo_upstream.py --port "$ECHO_PORT"
ECHO_PID=$LAST_PID
wait_for "echo upstream" "$ECHO_PID" "$LOGS/echo.log" tcp_open "$ECHO_PORT"

# ---------------------------------------------------------------- Envoy's configuration

read -r L_STREAMED L_DUPLEX L_BUFFERED ADMIN PROC_PORT <<<"$(free_ports 5)"

listener() { # NAME PORT BODY_MODE TRAILER_MODE BUFFER_LIMIT(or empty)
  cat <<EOF
  - name: $1
    address:
      socket_address: { address: 127.0.0.1, port_value: $2 }
$([ -n "$5" ] && echo "    per_connection_buffer_limit_bytes: $5")
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          route_config:
            name: $1
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: /no-ext-procs }
                route: { cluster: upstream, timeout: 60s }
                typed_per_filter_config:
                  ext_proc.bodies:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    disabled: true
              - match: { prefix: /check }
                route: { cluster: echo, timeout: 60s }
              - match: { prefix: / }
                route: { cluster: upstream, timeout: 60s }
          http_filters:
          - name: ext_proc.bodies
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: { cluster_name: processor, max_receive_message_length: $BUFFER_LIMIT }
              stat_prefix: $1
              failure_mode_allow: false
              message_timeout: 5s
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SKIP
                request_body_mode: $3
                response_body_mode: NONE
                request_trailer_mode: $4
                response_trailer_mode: SKIP
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
}

cluster() { # NAME PORT [h2]
  cat <<EOF
  - name: $1
    type: STATIC
    connect_timeout: 1s
$([ "${3:-}" = h2 ] && cat <<'H2'
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
H2
)
    load_assignment:
      cluster_name: $1
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } }
EOF
}

ENVOY_YAML=$TMP/envoy-bodies.yaml
{
  echo "# bench/envoy/bodies.sh: one ext_proc filter per listener, request bodies only."
  echo "admin:"
  echo "  address:"
  echo "    socket_address: { address: 127.0.0.1, port_value: $ADMIN }"
  echo "static_resources:"
  echo "  listeners:"
  listener streamed "$L_STREAMED" STREAMED SKIP ""
  listener duplex "$L_DUPLEX" FULL_DUPLEX_STREAMED SEND ""
  listener buffered "$L_BUFFERED" BUFFERED SKIP "$BUFFER_LIMIT"
  echo "  clusters:"
  cluster upstream "$NGINX_PORT"
  cluster echo "$ECHO_PORT"
  cluster processor "$PROC_PORT" h2
} >"$ENVOY_YAML"

# ---------------------------------------------------------------- measuring

printf 'name\tprocessor\tcase\tbody_bytes\tconnections\toutcome\n' >"$RESULTS/rows.tsv"

# The upstream must receive the body (same) or its ASCII uppercase (upper), byte for byte: one
# POST to /check, answered by the echo upstream with what it received. Prints why not, if not.
check_body() { # LISTENER_PORT BODY EXPECT
  local port=$1 body=$2 expect=$3 code want=$TMP/$2
  [ "$expect" = upper ] && want=$TMP/$2.upper
  extproc_stats "$ADMIN" "$TMP/check.before"
  code=$(curl -s -m "$CHECK_TIMEOUT" -o "$TMP/check.json" -w '%{http_code}' \
    -H 'content-type: application/octet-stream' --data-binary "@$TMP/$body" \
    "http://127.0.0.1:$port/check" || true)
  if [ "$code" != 200 ]; then
    extproc_stats "$ADMIN" "$TMP/check.after"
    # The counters that moved (stream_msgs_*, streams_failed, message_timeouts, ...) say why.
    echo "HTTP ${code:-000} from Envoy, body '$(head -c 100 "$TMP/check.json" 2>/dev/null |
      tr -d '\n')'; ext_proc counters: $(awk 'NR == FNR { was[$1] = $2; next }
      $2 != was[$1] { printf "%s%s +%d", sep, $1, $2 - was[$1]; sep = ", " }' \
      "$TMP/check.before" "$TMP/check.after")"
    return
  fi
  python3 - "$TMP/check.json" "$want" <<'PYEOF'
import json, sys
got = json.load(open(sys.argv[1]))["body"].encode()
want = open(sys.argv[2], "rb").read()
if got != want:
    at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    print(f"the upstream received {len(got)} bytes, not the {len(want)} expected "
          f"(first difference at byte {at})")
PYEOF
}

snapshot() { # PROC_PID ENVOY_PID: "envoy=NS processor=NS nginx=NS"
  echo "envoy=$(cpu_ns "$2") processor=$(cpu_ns "$1") nginx=$(cpu_ns "$NGINX_PID")"
}

# measure NAME PROCESSOR CASE LISTENER_PORT PATH BODY CONNECTIONS PROC_PID ENVOY_PID
measure() {
  local name=$1 processor=$2 case=$3 port=$4 path=$5 body=$6 conns=$7 proc=$8 envoy=$9
  local url=http://127.0.0.1:$port$path
  local h2=(taskset -c "$LOAD_CPU" h2load "${CLIENT_FLAGS[@]}" -c "$conns" -m 1 -t 1
            -d "$TMP/$body" -H 'content-type: application/octet-stream')
  log "$name: h2load -c$conns POST $body $url (${WARMUP}s warm-up, ${DURATION}s measured)"
  timeout $((WARMUP + 60)) "${h2[@]}" -D "$WARMUP" "$url" >"$LOGS/$name-warmup.txt" 2>&1 || true
  printf '%s\n' "${h2[*]} -D $DURATION $url" >>"$RESULTS/commands.txt"
  echo "idle_rss_kib=$(status_kib "$proc" VmRSS)" >"$RESULTS/$name.mem"
  echo 5 >"/proc/$proc/clear_refs" # VmHWM := VmRSS, so the peak is this run's
  extproc_stats "$ADMIN" "$RESULTS/$name.stats-before"
  snapshot "$proc" "$envoy" >"$RESULTS/$name.cpu"
  timeout $((DURATION + 60)) "${h2[@]}" -D "$DURATION" "$url" >"$RESULTS/$name.h2load" 2>&1 || {
    log "$name: h2load failed:"; tail -n 5 "$RESULTS/$name.h2load" >&2; }
  snapshot "$proc" "$envoy" >>"$RESULTS/$name.cpu"
  extproc_stats "$ADMIN" "$RESULTS/$name.stats-after"
  echo "peak_rss_kib=$(status_kib "$proc" VmHWM)" >>"$RESULTS/$name.mem"
  printf '%s\t%s\t%s\t%s\t%s\tmeasured\n' "$name" "$processor" "$case" \
    "$(stat -c %s "$TMP/$body")" "$conns" >>"$RESULTS/rows.tsv"
}

# The cases: NAME LISTENER BODY CONNECTIONS. Every processor runs each its kind can serve.
CASES=(
  "streamed-1m $L_STREAMED body-1m $CONNECTIONS"
  "duplex-1m $L_DUPLEX body-1m $CONNECTIONS"
  "buffered-10m $L_BUFFERED body-10m $BUFFERED_CONNECTIONS"
  "buffered-1m $L_BUFFERED body-1m $CONNECTIONS"
)

# run_processor LABEL EXPECT BASELINE(yes|no) CMD...: the processor on PROC_PORT and a fresh
# Envoy; each case checked, then measured; the baseline rows too when asked (the processor idle).
run_processor() {
  local label=$1 expect=$2 baseline=$3
  shift 3
  log "== processor $label"
  start_bg "$PROC_CPU" "$LOGS/$label.log" "$@"
  local proc=$LAST_PID
  wait_for "$label" "$proc" "$LOGS/$label.log" tcp_open "$PROC_PORT"
  start_bg "$ENVOY_CPU" "$LOGS/envoy-$label.log" \
    "$ENVOY" -c "$ENVOY_YAML" --concurrency 1 --disable-hot-restart --log-level warn
  local envoy=$LAST_PID
  wait_for envoy "$envoy" "$LOGS/envoy-$label.log" envoy_ready "$ADMIN"
  if [ "$baseline" = yes ]; then
    measure baseline-1m none baseline-1m "$L_STREAMED" /no-ext-procs body-1m "$CONNECTIONS" \
      "$proc" "$envoy"
    measure baseline-10m none baseline-10m "$L_BUFFERED" /no-ext-procs body-10m \
      "$BUFFERED_CONNECTIONS" "$proc" "$envoy"
  fi
  local row case port body conns why
  for row in "${CASES[@]}"; do
    read -r case port body conns <<<"$row"
    why=$(check_body "$port" "$body" "$expect")
    if [ -n "$why" ]; then
      log "$label cannot serve $case: $why"
      printf '%s\t%s\t%s\t%s\t%s\tcannot serve it: %s\n' "$label-$case" "$label" "$case" \
        "$(stat -c %s "$TMP/$body")" "$conns" "$why" >>"$RESULTS/rows.tsv"
      continue
    fi
    measure "$label-$case" "$label" "$case" "$port" /upload "$body" "$conns" "$proc" "$envoy"
  done
  curl -s -m 5 "http://127.0.0.1:$ADMIN/stats?filter=ext_proc" >"$RESULTS/$label-extproc-stats.txt"
  stop_pids "$envoy" "$proc"
}

: >"$RESULTS/skipped.tsv"
peer_missing() { # NAME: why the peer cannot run here (bench/peers/missing.sh), nothing when it can
  BENCH_PEERS_DIR="$PEERS_DIR" bench/peers/missing.sh "$1" || true
}

run_processor body-pass same yes \
  "$RUNNER" --service "body-pass@127.0.0.1:$PROC_PORT" --workers 1 --log-level warn \
  --drain-delay 0 --grace-period 1
run_processor body-rewrite upper no \
  "$RUNNER" --service "body-rewrite@127.0.0.1:$PROC_PORT" --workers 1 --log-level warn \
  --drain-delay 0 --grace-period 1
for peer in go-grpc go-wrossmorrow go-getyourguide; do
  why=$(peer_missing "$peer")
  if [ -n "$why" ]; then
    log "skipped $peer: $why"
    printf '%s\t%s\n' "$peer" "$why" >>"$RESULTS/skipped.tsv"
    continue
  fi
  run_processor "$peer" same no env BENCH_PEERS_DIR="$PEERS_DIR" bench/peers/start.sh "$peer" "$PROC_PORT"
done
stop_pids "$NGINX_PID" "$ECHO_PID"

# ---------------------------------------------------------------- report

{
  printf 'envoy\t%s\n' "$("$ENVOY" --version 2>&1 | grep -o 'version: .*' | sed 's/^version: //')"
  printf 'nginx\t%s\n' "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
  printf 'h2load\t%s\n' "$(h2load --version 2>&1 | head -n 1)"
  printf 'libextproc\t%s\n' "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(
    git diff --quiet HEAD -- src include examples CMakeLists.txt 2>/dev/null || echo ' (modified)')"
  printf 'kernel\t%s\n' "$(uname -sr)"
  printf 'cpu\t%s\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores)"
} >"$RESULTS/versions.tsv"
{
  printf 'duration_s\t%s\n' "$DURATION"
  printf 'warmup_s\t%s\n' "$WARMUP"
  printf 'client\t%s\n' "${BENCH_CLIENT:-h1}"
  printf 'connections\t%s\n' "$CONNECTIONS"
  printf 'buffered_connections\t%s\n' "$BUFFERED_CONNECTIONS"
  printf 'cpu_envoy\t%s\n' "$ENVOY_CPU"
  printf 'cpu_processor\t%s\n' "$PROC_CPU"
  printf 'cpu_nginx\t%s\n' "$UPSTREAM_CPU"
  printf 'cpu_h2load\t%s\n' "$LOAD_CPU"
} >"$RESULTS/settings.tsv"
mkdir -p build-rel/bench-envoy-bodies
cp "$ENVOY_YAML" "$TMP/nginx/nginx.conf" build-rel/bench-envoy-bodies/
python3 bench/envoy/bodies_report.py "$RESULTS" "$OUT_JSON"
log "wrote $OUT_JSON"
