#!/usr/bin/env bash
# Envoy-in-the-loop benchmark: what an ext_proc filter served by libextproc costs a request.
#
#   h2load, wrk ──HTTP/1.1──▶ Envoy ──ext_proc (gRPC, h2c)──▶ extproc-examples (Release)
#                               └──HTTP/1.1──▶ nginx (200 + a small fixed body, any path)
#
# Two Envoy configurations, each generated into a temp dir (printed with BENCH_KEEP=1):
#   one  ONE ext_proc filter, TrivialExtProcService: request and response headers SEND,
#        bodies NONE, trailers SKIP, failure_mode_allow false (a failure shows as a 500);
#   six  the demo's six-filter chain, deploy/envoy.yaml with its ports rewritten (bodies
#        BUFFERED, so each filter also sees the response body: 3 messages per filter).
# Both have a /no-ext-procs route that bypasses the filter(s): the same Envoy, listener,
# upstream and client, with the processor(s) left out. That is the baseline.
#
# Figures, each run lasting BENCH_DURATION s (default 10) after BENCH_WARMUP s (default 2) of
# warm-up that is not counted:
#   low load   h2load --h1 -c1 -m1 (closed loop, one request at a time): p50/p90/p99 of the
#              requests' own latencies, from h2load's per-request log. (Not wrk here: wrk adds
#              synthetic samples to correct for coordinated omission, so one stall of the VM
#              moves its p90 at one connection by milliseconds.)
#              Added latency per filter = (p50 on / − p50 on /no-ext-procs) ÷ number of filters.
#   throughput wrk -t1 -cBENCH_CONNECTIONS (default 32): requests/s, and filtered ÷ bypass.
#   CPU time   of Envoy, the processor and nginx per request, from /proc/PID/task/*/schedstat
#              over each measured run: what the processor itself (the SDK) costs, apart from
#              Envoy's side of ext_proc.
#
# CPU pinning (taskset; the servers are re-pinned between the two phases, never restarted).
# This machine is a 2-core VM where waking a process on the other core is slow, and slow by a
# different amount from run to run. Measured here with h2load at one connection: nginx alone
# answers in 11 µs (p50) on h2load's core and in 97 µs from the other core; through Envoy's
# bypass route, 61 µs with everything on one core and 250-420 µs spread over both. So:
#   low load    Envoy, processor, nginx and h2load all on core BENCH_LATENCY_CPU (default 0). With
#               one request in flight nothing runs at the same time, so they share nothing but
#               the core, and the figure is the work done, not the VM's cross-core wake-ups.
#   throughput  core 0: Envoy (--concurrency 1: one worker thread) and the processor
#               (--workers 1); core 1: nginx and wrk (BENCH_ENVOY_CPU, BENCH_PROC_CPU,
#               BENCH_UPSTREAM_CPU, BENCH_LOAD_CPU). Envoy↔processor is the chattiest link (2
#               messages per request with one filter, 18 with six), so it stays on one core; the
#               client and upstream, the same for both routes, get the other. On /no-ext-procs the
#               processor idles and Envoy has core 0 alone: the ratio therefore counts the
#               processor's CPU as part of what the filter costs, as with a sidecar processor.
#               (Envoy alone on core 0 and the rest on core 1 gave about the same ratio with
#               one filter, 0.53 vs 0.48, and a worse one with six, 0.10 vs 0.17.)
#
# Output: a markdown table on stdout (with the exact commands and versions), and the same as
# JSON in build-rel/bench-envoy.json; the generated configs are copied to build-rel/bench-envoy/. Loopback addresses only; every process is stopped at exit.
# Not part of the test suite. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
LATENCY_CPU=${BENCH_LATENCY_CPU:-0}
ENVOY_CPU=${BENCH_ENVOY_CPU:-0}
PROC_CPU=${BENCH_PROC_CPU:-0}
UPSTREAM_CPU=${BENCH_UPSTREAM_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
if [ "$(nproc)" -lt 2 ]; then LATENCY_CPU=0 ENVOY_CPU=0 PROC_CPU=0 UPSTREAM_CPU=0 LOAD_CPU=0; fi
STARTUP_TIMEOUT=20 # seconds for any server to come up
OUT_JSON=$ROOT/build-rel/bench-envoy.json
RUNNER=$ROOT/build-rel/examples/extproc-examples
ENVOY=$ROOT/.venv/bin/envoy

log() { echo "bench: $*" >&2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-envoy.XXXXXX")
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

scripts/setup.sh
log "building the Release build in build-rel"
if ! { cmake -S . -B build-rel -DCMAKE_BUILD_TYPE=Release -DEXTPROC_TESTS=OFF &&
       cmake --build build-rel -j2; } >"$LOGS/build.log" 2>&1; then
  tail -n 40 "$LOGS/build.log" >&2
  exit 1
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
missing=()
[ -x "$NGINX" ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  pkgs=()
  for p in "${missing[@]}"; do
    if [ "$p" = nginx ] && apt-cache show nginx-light >/dev/null 2>&1; then
      pkgs+=(nginx-light) # the smallest nginx build; it has all we use
    else
      pkgs+=("$p")
    fi
  done
  log "installing Debian packages: ${pkgs[*]}"
  # Note: on a machine that starts services, Debian's package starts the system nginx on
  # port 80. This script never uses it: it runs its own nginx, with its own config, below.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
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

shell_words() { # ARG...: one line a shell would split back into ARG..., repo paths relative
  local a out=()
  for a in "$@"; do
    a=${a//$ROOT\//}
    if [[ $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

record() { # LABEL CMD...: keeps the exact command for the report
  printf '%s\t%s\n' "$1" "$(shift; shell_words "$@")" >>"$RESULTS/commands.tsv"
}

LAST_PID=
start_bg() { # LABEL CPU LOG CMD...: starts CMD pinned to CPU, in the background
  local label=$1 cpu=$2 logf=$3
  shift 3
  record "$label" taskset -c "$cpu" "$@"
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

repin() { # LABEL CPU PID: moves every thread of PID to CPU
  record "$1" taskset -a -p -c "$2" "$3"
  taskset -a -p -c "$2" "$3" >/dev/null
}

cpu_ns() { # PID: nanoseconds on CPU so far, all threads
  local f total=0
  for f in /proc/"$1"/task/*/schedstat; do
    read -r ns _ <"$f" 2>/dev/null && total=$((total + ns))
  done
  echo "$total"
}

SERVER_PIDS=() # "envoy:PID processor:PID nginx:PID" of the configuration being measured
cpu_snapshot() {
  local entry
  for entry in "${SERVER_PIDS[@]}"; do printf '%s=%s ' "${entry%%:*}" "$(cpu_ns "${entry#*:}")"; done
}
cpu_json() { # BEFORE AFTER: {"envoy": ns, ...} spent between the two snapshots
  python3 - "$1" "$2" <<'PYEOF'
import json, sys
before, after = (dict(kv.split("=") for kv in s.split()) for s in sys.argv[1:3])
print(json.dumps({k: int(after[k]) - int(before[k]) for k in after}))
PYEOF
}

run_low_load() { # NAME URL: h2load, one request at a time, into $RESULTS/NAME.json
  local name=$1 url=$2
  local cmd=(taskset -c "$LATENCY_CPU" h2load --h1 -c1 -m1 -t1 -D "$DURATION"
             --log-file "$LOGS/$name.requests" "$url")
  log "$name: h2load -c1 $url (${WARMUP}s warm-up, ${DURATION}s measured)"
  # The warm-up is a run of its own (not h2load's --warm-up-time), so that the CPU time taken
  # around the measured run is that of the measured requests only.
  timeout $((WARMUP + 30)) taskset -c "$LATENCY_CPU" h2load --h1 -c1 -m1 -t1 -D "$WARMUP" \
    "$url" >"$LOGS/$name-warmup.txt" 2>&1
  record "$name" "${cmd[@]}"
  rm -f "$LOGS/$name.requests" # h2load appends to it
  local before after
  before=$(cpu_snapshot)
  timeout $((DURATION + 30)) "${cmd[@]}" >"$LOGS/$name.txt" 2>&1 || {
    log "$name: h2load failed:"; cat "$LOGS/$name.txt" >&2; exit 1; }
  after=$(cpu_snapshot)
  cpu_json "$before" "$after" >"$RESULTS/$name.cpu.json"
  python3 "$ROOT/bench/envoy/report.py" --h2load "$LOGS/$name.txt" "$LOGS/$name.requests" \
    "$DURATION" >"$RESULTS/$name.json"
}

run_throughput() { # NAME URL: wrk warm-up, then the measured run into $RESULTS/NAME.json
  local name=$1 url=$2
  local cmd=(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 2s
             -s "$ROOT/bench/envoy/wrk-report.lua" "$url")
  log "$name: wrk -c$CONNECTIONS $url (${WARMUP}s warm-up, ${DURATION}s measured)"
  timeout $((WARMUP + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" \
    --timeout 2s "$url" >"$LOGS/$name-warmup.txt" 2>&1
  record "$name" "${cmd[@]}"
  local before after
  before=$(cpu_snapshot)
  timeout $((DURATION + 30)) "${cmd[@]}" >"$LOGS/$name.txt" 2>&1
  after=$(cpu_snapshot)
  cpu_json "$before" "$after" >"$RESULTS/$name.cpu.json"
  if ! grep '^BENCH-JSON ' "$LOGS/$name.txt" | sed 's/^BENCH-JSON //' >"$RESULTS/$name.json"; then
    log "$name: wrk printed no result:"
    cat "$LOGS/$name.txt" >&2
    exit 1
  fi
}

check_headers() { # NAME URL WANT_HEADER(regex, or "!regex" for absent)
  local name=$1 url=$2 want=$3 headers
  headers=$(curl -s -m 5 -D - -o /dev/null "$url" | tr -d '\r')
  printf '%s\n' "$headers" >"$LOGS/$name-check.txt"
  if ! printf '%s\n' "$headers" | head -n 1 | grep -q ' 200'; then
    log "$name: $url did not answer 200:"
    printf '%s\n' "$headers" >&2
    exit 1
  fi
  if [ "${want#!}" != "$want" ]; then
    if printf '%s\n' "$headers" | grep -qiE "${want#!}"; then
      log "$name: $url has ${want#!}, which the bypass route must not have"
      exit 1
    fi
  elif ! printf '%s\n' "$headers" | grep -qiE "$want"; then
    log "$name: $url lacks $want: the filter(s) did not run"
    printf '%s\n' "$headers" >&2
    exit 1
  fi
}

# ---------------------------------------------------------------- versions and settings

{
  printf 'envoy\t%s\n' "$("$ENVOY" --version 2>&1 | grep -o 'version: .*' | sed 's/^version: //')"
  printf 'nginx\t%s\n' "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
  printf 'wrk\t%s\n' "$(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//' || true)"
  printf 'h2load\t%s\n' "$(h2load --version 2>&1 | head -n 1)"
  printf 'libextproc\t%s\n' "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(
    git diff --quiet HEAD -- src include examples CMakeLists.txt 2>/dev/null || echo ' (modified)')"
  printf 'compiler\t%s\n' "$(grep -m1 '^CMAKE_C_COMPILER:' build-rel/CMakeCache.txt | cut -d= -f2) $(
    cc -dumpfullversion 2>/dev/null || true)"
  printf 'kernel\t%s\n' "$(uname -sr)"
  printf 'cpu\t%s\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores)"
} >"$RESULTS/versions.tsv"
{
  printf 'duration_s\t%s\n' "$DURATION"
  printf 'warmup_s\t%s\n' "$WARMUP"
  printf 'throughput_connections\t%s\n' "$CONNECTIONS"
  printf 'cpu_low_load\t%s\n' "$LATENCY_CPU"
  printf 'cpu_h2load\t%s\n' "$LATENCY_CPU"
  printf 'cpu_envoy\t%s\n' "$ENVOY_CPU"
  printf 'cpu_processor\t%s\n' "$PROC_CPU"
  printf 'cpu_nginx\t%s\n' "$UPSTREAM_CPU"
  printf 'cpu_wrk\t%s\n' "$LOAD_CPU"
} >"$RESULTS/settings.tsv"

# ---------------------------------------------------------------- the upstream: nginx

read -r NGINX_PORT <<<"$(free_ports 1)"
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
# The benchmark's upstream: 200 and a fixed 17-byte body for every method and path.
# One process (no master), so that one pid is all there is to pin.
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
  keepalive_requests 10000000;  # Envoy keeps its upstream connections for the whole run
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      default_type text/plain;
      return 200 "hello from nginx\n";
    }
  }
}
EOF
start_bg nginx "$UPSTREAM_CPU" "$LOGS/nginx.log" \
  "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log"
NGINX_PID=$LAST_PID
wait_for nginx "$NGINX_PID" "$LOGS/nginx.log" tcp_open "$NGINX_PORT"

# ---------------------------------------------------------------- one configuration

# run_config NAME FILTERS ENVOY_CONFIG SERVICE_SPECS LISTEN_PORT ADMIN_PORT PROCESSOR_PORT...:
# starts the processor and Envoy, checks both routes, measures, keeps Envoy's ext_proc
# counters, stops both.
run_config() {
  local name=$1 filters=$2 config=$3 specs=$4 listen=$5 admin=$6
  shift 6
  log "== $name: $filters ext_proc filter(s)"
  start_bg "$name-processor" "$PROC_CPU" "$LOGS/$name-processor.log" \
    "$RUNNER" --service "$specs" --workers 1 --grace-period 1 --drain-delay 0
  local proc_pid=$LAST_PID port
  for port in "$@"; do
    wait_for "processor on $port" "$proc_pid" "$LOGS/$name-processor.log" tcp_open "$port"
  done
  start_bg "$name-envoy" "$ENVOY_CPU" "$LOGS/$name-envoy.log" \
    "$ENVOY" -c "$config" --concurrency 1 --disable-hot-restart --log-level warn
  local envoy_pid=$LAST_PID
  wait_for envoy "$envoy_pid" "$LOGS/$name-envoy.log" envoy_ready "$admin"

  local base=http://127.0.0.1:$listen
  if [ "$filters" -eq 1 ]; then
    check_headers "$name-filtered" "$base/" '^x-extra-request-id:'
    check_headers "$name-bypass" "$base/no-ext-procs" '!^x-extra-request-id:'
  else
    check_headers "$name-filtered" "$base/" \
      '^x-ext-procs-applied: TrivialExtProcService,TimerExtProcService,EchoExtProcService,DigestExtProcService,DecoratedExtProcService,CtxExtProcService$'
    check_headers "$name-bypass" "$base/no-ext-procs" '!^x-ext-procs-applied:'
  fi

  repin "$name-low-load-envoy" "$LATENCY_CPU" "$envoy_pid"
  repin "$name-low-load-processor" "$LATENCY_CPU" "$proc_pid"
  repin "$name-low-load-nginx" "$LATENCY_CPU" "$NGINX_PID"
  SERVER_PIDS=("envoy:$envoy_pid" "processor:$proc_pid" "nginx:$NGINX_PID")
  run_low_load "$name-latency-filtered" "$base/"
  run_low_load "$name-latency-bypass" "$base/no-ext-procs"
  repin "$name-throughput-envoy" "$ENVOY_CPU" "$envoy_pid"
  repin "$name-throughput-processor" "$PROC_CPU" "$proc_pid"
  repin "$name-throughput-nginx" "$UPSTREAM_CPU" "$NGINX_PID"
  run_throughput "$name-throughput-filtered" "$base/"
  run_throughput "$name-throughput-bypass" "$base/no-ext-procs"

  curl -s -m 5 "http://127.0.0.1:$admin/stats?filter=ext_proc" >"$RESULTS/$name-extproc-stats.txt"
  stop_pids "$envoy_pid" "$proc_pid"
}

# ---- (a) one filter

read -r A_LISTEN A_ADMIN A_PROC <<<"$(free_ports 3)"
cat >"$TMP/envoy-one.yaml" <<EOF
# One ext_proc filter (TrivialExtProcService) in front of nginx. /no-ext-procs bypasses it.
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: $A_ADMIN }

static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: { address: 127.0.0.1, port_value: $A_LISTEN }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          preserve_external_request_id: true
          always_set_request_id_in_response: true
          route_config:
            name: local_route
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: /no-ext-procs }
                route: { cluster: upstream }
                typed_per_filter_config:
                  ext_proc.trivial:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    disabled: true
              - match: { prefix: / }
                route: { cluster: upstream }
          http_filters:
          - name: ext_proc.trivial
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service: { envoy_grpc: { cluster_name: trivial } }
              stat_prefix: trivial
              failure_mode_allow: false   # a failing processor shows as a 500, counted as an error
              message_timeout: 0.2s
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SEND
                request_body_mode: NONE
                response_body_mode: NONE
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router

  clusters:
  - name: upstream   # nginx
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $NGINX_PORT } } }
  - name: trivial    # the processor: gRPC over cleartext HTTP/2
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: trivial
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $A_PROC } } }
EOF
run_config one 1 "$TMP/envoy-one.yaml" "trivial@127.0.0.1:$A_PROC" "$A_LISTEN" "$A_ADMIN" "$A_PROC"

# ---- (b) the demo's six filters: deploy/envoy.yaml, ports rewritten (each occurs once there)

# The use-case listener (8081) and its processors (50057-50059) are not measured: they get free
# loopback ports that nothing serves, so this Envoy never binds a demo's ports.
read -r B_LISTEN B_ADMIN P1 P2 P3 P4 P5 P6 B_UNUSED Q1 Q2 Q3 <<<"$(free_ports 12)"
python3 - "$ROOT/deploy/envoy.yaml" "$TMP/envoy-six.yaml" "$B_LISTEN" "$B_ADMIN" "$NGINX_PORT" \
  "$B_UNUSED" "$P1" "$P2" "$P3" "$P4" "$P5" "$P6" "$Q1" "$Q2" "$Q3" <<'EOF'
import sys
src, dst, listen, admin, upstream, unused, *procs = sys.argv[1:]
text = open(src).read()
pairs = [
    ("socket_address: { address: 0.0.0.0, port_value: 8080 }",
     f"socket_address: {{ address: 127.0.0.1, port_value: {listen} }}"),
    ("socket_address: { address: 0.0.0.0, port_value: 8081 }",
     f"socket_address: {{ address: 127.0.0.1, port_value: {unused} }}"),
    ("port_value: 9901 }", f"port_value: {admin} }}"),
    ("port_value: 8000 }", f"port_value: {upstream} }}"),  # the echo upstream becomes nginx
] + [(f"port_value: {50051 + i} }}", f"port_value: {p} }}") for i, p in enumerate(procs)]
for old, new in pairs:
    assert text.count(old) == 1, f"{src}: expected {old!r} exactly once"
    text = text.replace(old, new)
open(dst, "w").write("# deploy/envoy.yaml with its ports rewritten by bench/envoy/run.sh; "
                     "the upstream is nginx.\n" + text)
EOF
run_config six 6 "$TMP/envoy-six.yaml" \
  "trivial@127.0.0.1:$P1,timer@127.0.0.1:$P2,echo@127.0.0.1:$P3,digest@127.0.0.1:$P4,decorated@127.0.0.1:$P5,context@127.0.0.1:$P6" \
  "$B_LISTEN" "$B_ADMIN" "$P1" "$P2" "$P3" "$P4" "$P5" "$P6"

stop_pids "$NGINX_PID"

# The generated configurations, kept beside the JSON (the commands name their temp copies).
mkdir -p build-rel/bench-envoy
cp "$TMP/envoy-one.yaml" "$TMP/envoy-six.yaml" "$TMP/nginx/nginx.conf" build-rel/bench-envoy/

# ---------------------------------------------------------------- report

python3 "$ROOT/bench/envoy/report.py" "$RESULTS" "$OUT_JSON"
log "wrote $OUT_JSON"
