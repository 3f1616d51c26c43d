#!/usr/bin/env bash
# Envoy-in-the-loop benchmark: what one ext_proc filter costs a request and costs Envoy, served
# by libextproc and by the other processors side by side, in one run.
#
#   h2load, wrk ──HTTP/1.1──▶ Envoy 1.40 ──ext_proc (gRPC, h2c)──▶ processor (one per listener)
#                  --concurrency 1   └──HTTP/1.1──▶ nginx (200 + a small fixed body, any path)
#
# One Envoy serves one listener per processor. Each listener has ONE ext_proc filter (request
# and response headers SEND, bodies NONE, trailers SKIP, failure_mode_allow false, so a failure
# shows as a 500) pointing at its own cluster, and a /no-ext-procs route on which the filter is
# disabled: the bypass, the baseline (measured on libextproc's listener). The processors, each
# serving the same trivial processor (x-extra-request-id := x-request-id on request and response
# headers) with one worker:
#   libextproc       build-rel/examples/extproc-examples --service trivial@... --workers 1
#                    (REVEAL_EXTPROC_CHAIN=false: the peers do not reveal the chain either)
#   go-grpc          bench/peers/start.sh go-grpc PORT (grpc-go, no SDK; bench/peers/install.sh)
#   go-wrossmorrow   "$BENCH_PEER_GO_WROSSMORROW" PORT if set, else bench/peers/start.sh
#   go-getyourguide  "$BENCH_PEER_GO_GETYOURGUIDE" PORT if set, else bench/peers/start.sh
#   python           only with BENCH_PYTHON=1, and at low load only (about 100× slower)
# A peer that is not installed (start.sh exits 3) is skipped, and the report says so. The Go
# peers are started on one core, so the Go runtime runs them with GOMAXPROCS=1.
#
# Rounds (BENCH_ROUNDS, default 3) are interleaved: each round measures the bypass and every
# processor once in each layout, in an order rotated from round to round, so that the machine's
# drift hits all alike. Each point runs BENCH_DURATION s (default 5) after BENCH_WARMUP s
# (default 1) of warm-up that is not counted. Figures are medians over the rounds.
#   low load     h2load --h1 -c1 -m1 (one request at a time): p50 and p99 of the requests' own
#                latencies from h2load's per-request log (not wrk, whose coordinated-omission
#                correction turns one VM stall into milliseconds of p90). Added latency =
#                p50 (p99) on / − the same round's p50 (p99) on /no-ext-procs. Two layouts:
#                  one core   Envoy, h2load, nginx and the processor on core BENCH_CPU_A (0)
#                  two cores  the same, but the processor on core BENCH_CPU_B (1)
#   throughput   wrk -t1 -cBENCH_CONNECTIONS (32); Envoy and the processor on core
#                BENCH_ENVOY_CPU/BENCH_PROC_CPU (0), nginx and wrk on BENCH_UPSTREAM_CPU/
#                BENCH_LOAD_CPU (1). Per request, over the measured run:
#                - CPU time of Envoy, the processor and nginx (/proc/PID/task/*/schedstat);
#                  Envoy's extra CPU = Envoy's per request on / − on /no-ext-procs, same round;
#                - context switches of Envoy and of the processor (voluntary + nonvoluntary,
#                  summed over /proc/PID/task/*/status);
#                - TCP segments between Envoy and the processor in each direction: segs_out
#                  and segs_in (all segments, pure ACKs included) and data_segs_out/_in (those
#                  carrying payload) of the processor's sockets, `ss -ti` on its port, read
#                  before and after (per socket and exact; the global nstat counters would
#                  count the client and upstream too). Envoy keeps these connections open, so
#                  every socket is there at both reads;
#                - bytes each way (Envoy's cluster.proc_NAME.upstream_cx_rx/tx_bytes_total) and
#                  Envoy's cluster.proc_NAME.http2.* and ext_proc counters.
#   frames       before any other traffic reaches a processor: tcpdump on its port while
#                BENCH_CAPTURE_REQUESTS (100) requests go through one at a time, decoded by
#                tshark: HTTP/2 frames per request by type, flags and direction, segments per
#                request, connection-level frames (SETTINGS, PING, WINDOW_UPDATE on stream 0),
#                and one request's exchange segment by segment. BENCH_FRAMES=0 skips it.
# BENCH_SIX=1 adds the demo's six-filter chain (deploy/envoy.yaml, ports rewritten, bodies
# BUFFERED) served by libextproc, one round, in a second Envoy: the old configuration, off by
# default to keep the default run (about 5 minutes) short. BENCH_PROCESSORS picks a subset
# (e.g. "libextproc go-grpc"); BENCH_KEEP=1 keeps the temp dir (logs, captures, raw figures).
#
# Why these layouts: this 2-core VM's cross-core wake-ups are slow and vary from run to run
# (nginx alone answers h2load in 11 µs on h2load's core, 97 µs from the other core), so the
# one-core layout measures the work done, and the two-core layout shows what the wake-ups add.
#
# Output: markdown tables on stdout (with the commands and versions), the same as JSON in
# build-rel/bench-envoy.json, and the generated configs in build-rel/bench-envoy/. Loopback
# addresses only; every process started here is stopped at exit. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

DURATION=${BENCH_DURATION:-5}
WARMUP=${BENCH_WARMUP:-1}
ROUNDS=${BENCH_ROUNDS:-3}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
CAPTURE_REQUESTS=${BENCH_CAPTURE_REQUESTS:-100}
FRAMES=${BENCH_FRAMES:-1}
CPU_A=${BENCH_CPU_A:-0}
CPU_B=${BENCH_CPU_B:-1}
ENVOY_CPU=${BENCH_ENVOY_CPU:-0}
PROC_CPU=${BENCH_PROC_CPU:-0}
UPSTREAM_CPU=${BENCH_UPSTREAM_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
if [ "$(nproc)" -lt 2 ]; then CPU_A=0 CPU_B=0 ENVOY_CPU=0 PROC_CPU=0 UPSTREAM_CPU=0 LOAD_CPU=0; fi
ALL_PROCESSORS="libextproc go-grpc go-wrossmorrow go-getyourguide"
[ "${BENCH_PYTHON:-0}" = 1 ] && ALL_PROCESSORS+=" python"
read -r -a WANTED <<<"${BENCH_PROCESSORS:-$ALL_PROCESSORS}"
STARTUP_TIMEOUT=20 # seconds for any server to come up (the Python peer takes a few)
MESSAGE_TIMEOUT=1s # ext_proc message_timeout: generous, so a VM stall is not an error
OUT_JSON=$ROOT/build-rel/bench-envoy.json
OUT_CONFIGS=$ROOT/build-rel/bench-envoy
RUNNER=$ROOT/build-rel/examples/extproc-examples
ENVOY=$ROOT/.venv/bin/envoy

log() { echo "bench: $*" >&2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench-envoy.XXXXXX")
RESULTS=$TMP/results
LOGS=$TMP/logs
mkdir -p "$RESULTS" "$LOGS"

PIDS=() # the processes this script started and has not stopped yet
stop_pids() { # PID...: SIGTERM, then SIGKILL after 5 s; each is reaped and forgotten
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true # still our unreaped child: the pid is not reused
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
  done
}
forget_pid() { # PID: no longer ours to stop
  local p keep=()
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
cleanup() {
  local rc=$?
  stop_pids "${PIDS[@]}"
  if [ "$rc" -eq 0 ] && [ -z "${BENCH_KEEP:-}" ]; then
    rm -rf "$TMP"
  else
    log "configs, logs, captures and raw results kept in $TMP"
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
if [ "$FRAMES" = 1 ]; then
  command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
  command -v tshark >/dev/null 2>&1 || missing+=(tshark)
fi
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
command -v ss >/dev/null || { log "ss (iproute2) is missing"; exit 1; }

# The grpc-go peer: built (or found up to date) by its install script, when Go is here.
for p in "${WANTED[@]}"; do
  if [ "$p" = go-grpc ] && command -v go >/dev/null 2>&1; then
    bench/peers/install.sh go-grpc >"$LOGS/install-go-grpc.log" 2>&1 ||
      log "bench/peers/install.sh go-grpc failed (see $LOGS/install-go-grpc.log)"
  fi
done

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

record() { # LABEL CMD...: keeps the exact command for the report (one line per label)
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

# wait_up PID LOG CHECK...: polls CHECK until it succeeds. Returns 0 when up; else the exit
# status of PID if it died while starting (reaped here), or 124 on timeout (PID still runs).
wait_up() {
  local pid=$1 logf=$2 rc
  shift 2
  local deadline=$((SECONDS + STARTUP_TIMEOUT))
  until "$@"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0
      wait "$pid" 2>/dev/null || rc=$?
      forget_pid "$pid" # reaped: never signalled again, its number may be reused
      return $((rc == 0 ? 1 : rc))
    fi
    [ "$SECONDS" -lt "$deadline" ] || return 124
    sleep 0.1
  done
}
wait_for() { # WHAT PID LOG CHECK...: as wait_up, but any failure ends the script
  local what=$1 pid=$2 logf=$3 rc=0
  shift 3
  wait_up "$pid" "$logf" "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    log "$what did not come up (status $rc):"
    tail -n 30 "$logf" >&2
    exit 1
  fi
}

repin() { # CPU PID: moves every thread of PID to CPU
  taskset -a -p -c "$1" "$2" >/dev/null
}

cpu_ns() { # PID: nanoseconds on CPU so far, all threads
  local f total=0 ns
  for f in /proc/"$1"/task/*/schedstat; do
    read -r ns _ <"$f" 2>/dev/null && total=$((total + ns))
  done
  echo "$total"
}
ctx_switches() { # PID: voluntary + nonvoluntary context switches so far, all threads
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(non)?voluntary_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}
segments() { # PORT...: the processor's sockets on these ports, summed:
  #              "sockets segs_out segs_in data_segs_out data_segs_in"
  local expr="" p
  for p in "$@"; do expr+="${expr:+ or }sport = :$p"; done
  ss -Htin state established "( $expr )" | awk '
    { for (i = 1; i <= NF; i++) { split($i, kv, ":")
        if (kv[1] == "segs_out") { so += kv[2]; n++ } else if (kv[1] == "segs_in") si += kv[2]
        else if (kv[1] == "data_segs_out") dso += kv[2]
        else if (kv[1] == "data_segs_in") dsi += kv[2] } }
    END { print n + 0, so + 0, si + 0, dso + 0, dsi + 0 }'
}
envoy_stats() { # ADMIN_PORT KEY OUT: Envoy's counters (not gauges) for KEY's cluster and listener
  curl -s -m 5 -G "http://127.0.0.1:$1/stats" --data-urlencode type=Counters \
    --data-urlencode "filter=^(cluster\\.proc_$2\\.|http\\.ingress_$2\\.)" >"$3"
}

# probe OUT ENVOY_PID PROC_PID PROC_PORTS: a snapshot of what the run's figures are deltas of
# ("-" for PROC_PID when no processor is measured, as on the bypass route).
probe() {
  local out=$1 envoy=$2 proc=$3 ports=$4
  {
    echo "cpu_ns.envoy $(cpu_ns "$envoy")"
    echo "cpu_ns.nginx $(cpu_ns "$NGINX_PID")"
    echo "ctx.envoy $(ctx_switches "$envoy")"
    if [ "$proc" != - ]; then
      echo "cpu_ns.processor $(cpu_ns "$proc")"
      echo "ctx.processor $(ctx_switches "$proc")"
      # shellcheck disable=SC2086 # one or more ports
      read -r n so si dso dsi <<<"$(segments $ports)"
      echo "tcp.sockets $n"
      echo "tcp.segs_proc_to_envoy $so"
      echo "tcp.segs_envoy_to_proc $si"
      echo "tcp.data_segs_proc_to_envoy $dso"
      echo "tcp.data_segs_envoy_to_proc $dsi"
    fi
  } >"$out"
}

# ---------------------------------------------------------------- versions and settings

{
  printf 'envoy\t%s\n' "$("$ENVOY" --version 2>&1 | grep -o 'version: .*' | sed 's/^version: //')"
  printf 'nginx\t%s\n' "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
  printf 'wrk\t%s\n' "$(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//' || true)"
  printf 'h2load\t%s\n' "$(h2load --version 2>&1 | head -n 1)"
  [ "$FRAMES" = 1 ] && printf 'tshark\t%s\n' "$(tshark --version 2>/dev/null | head -n 1)"
  printf 'libextproc\t%s\n' "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(
    git diff --quiet HEAD -- src include examples CMakeLists.txt 2>/dev/null || echo ' (modified)')"
  printf 'compiler\t%s\n' "$(grep -m1 '^CMAKE_C_COMPILER:' build-rel/CMakeCache.txt | cut -d= -f2) $(
    cc -dumpfullversion 2>/dev/null || true)"
  command -v go >/dev/null 2>&1 && printf 'go\t%s\n' "$(go version)"
  printf 'kernel\t%s\n' "$(uname -sr)"
  printf 'cpu\t%s\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores)"
} >"$RESULTS/versions.tsv"
{
  printf 'duration_s\t%s\n' "$DURATION"
  printf 'warmup_s\t%s\n' "$WARMUP"
  printf 'rounds\t%s\n' "$ROUNDS"
  printf 'throughput_connections\t%s\n' "$CONNECTIONS"
  printf 'capture_requests\t%s\n' "$CAPTURE_REQUESTS"
  printf 'cpu_a\t%s\n' "$CPU_A"
  printf 'cpu_b\t%s\n' "$CPU_B"
  printf 'cpu_envoy_throughput\t%s\n' "$ENVOY_CPU"
  printf 'cpu_processor_throughput\t%s\n' "$PROC_CPU"
  printf 'cpu_nginx_throughput\t%s\n' "$UPSTREAM_CPU"
  printf 'cpu_wrk\t%s\n' "$LOAD_CPU"
  printf 'message_timeout\t%s\n' "$MESSAGE_TIMEOUT"
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
start_bg nginx "$CPU_A" "$LOGS/nginx.log" \
  "$NGINX" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log"
NGINX_PID=$LAST_PID
wait_for nginx "$NGINX_PID" "$LOGS/nginx.log" tcp_open "$NGINX_PORT"

# ---------------------------------------------------------------- the processors

declare -A PROC_PID PROC_PORT
PROCS=() # the processors that came up, in WANTED's order
: >"$RESULTS/processors.tsv"

CMD=()
proc_cmd() { # NAME PORT: sets CMD to the command that serves NAME's trivial processor on PORT
  local name=$1 port=$2 var
  case "$name" in
    libextproc)
      # REVEAL_EXTPROC_CHAIN=false: no x-ext-procs-applied header in the response-headers
      # reply, which the peers do not send either (it made that reply 52 bytes larger).
      CMD=(env REVEAL_EXTPROC_CHAIN=false "$RUNNER" --service "trivial@127.0.0.1:$port"
           --workers 1 --grace-period 1 --drain-delay 0)
      return ;;
    go-wrossmorrow) var=BENCH_PEER_GO_WROSSMORROW ;;
    go-getyourguide) var=BENCH_PEER_GO_GETYOURGUIDE ;;
    go-grpc | python) var= ;;
    *) log "unknown processor '$name' (libextproc, go-grpc, go-wrossmorrow, go-getyourguide," \
         "python)"; exit 2 ;;
  esac
  if [ -n "$var" ] && [ -n "${!var:-}" ]; then
    CMD=("${!var}" "$port")
  else
    CMD=("$ROOT/bench/peers/start.sh" "$name" "$port")
  fi
}

for name in "${WANTED[@]}"; do
  read -r port <<<"$(free_ports 1)"
  proc_cmd "$name" "$port"
  cmd=("${CMD[@]}")
  start_bg "processor $name" "$CPU_A" "$LOGS/processor-$name.log" "${cmd[@]}"
  pid=$LAST_PID rc=0
  wait_up "$pid" "$LOGS/processor-$name.log" tcp_open "$port" || rc=$?
  if [ "$rc" -eq 0 ]; then
    PROC_PID[$name]=$pid PROC_PORT[$name]=$port
    PROCS+=("$name")
    printf '%s\tmeasured\t%s\n' "$name" "$(shell_words "${cmd[@]}")" >>"$RESULTS/processors.tsv"
    continue
  fi
  [ "$rc" -ne 124 ] || stop_pids "$pid"
  if [ "$name" = libextproc ] || { [ "$rc" -ne 3 ] && [ "$rc" -ne 124 ]; }; then
    log "processor $name failed to start (status $rc):"
    tail -n 30 "$LOGS/processor-$name.log" >&2
    exit 1
  fi
  why=$(tail -n 3 "$LOGS/processor-$name.log" | tr '\n' ' ')
  case "$name" in
    go-wrossmorrow) why="set BENCH_PEER_GO_WROSSMORROW to a binary that takes PORT ($why)" ;;
    go-getyourguide) why="set BENCH_PEER_GO_GETYOURGUIDE to a binary that takes PORT ($why)" ;;
    *) why="install it with bench/peers/install.sh $name ($why)" ;;
  esac
  [ "$rc" -ne 124 ] || why="did not listen within ${STARTUP_TIMEOUT}s"
  log "SKIPPED $name: $why"
  printf '%s\tskipped\t%s\n' "$name" "$why" >>"$RESULTS/processors.tsv"
done
[ "${PROCS[0]:-}" = libextproc ] || { log "libextproc must be measured (BENCH_PROCESSORS)"; exit 2; }

# ---------------------------------------------------------------- one Envoy, one listener each

key() { echo "${1//-/_}"; } # a processor's name as it appears in Envoy's names
declare -A LISTEN
read -r -a ports <<<"$(free_ports $((${#PROCS[@]} + 1)))"
ADMIN=${ports[0]}
CONFIG=$TMP/envoy.yaml
{
  cat <<EOF
# bench/envoy/run.sh: one listener per processor, each with ONE ext_proc filter (the trivial
# processor; headers SEND, bodies NONE, trailers SKIP) and a /no-ext-procs route that bypasses
# it, in front of nginx. --concurrency 1.
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: $ADMIN }

static_resources:
  listeners:
EOF
  i=1
  for name in "${PROCS[@]}"; do
    k=$(key "$name")
    LISTEN[$name]=${ports[$i]}
    i=$((i + 1))
    cat <<EOF
  - name: ingress_$k   # ext_proc served by $name
    address:
      socket_address: { address: 127.0.0.1, port_value: ${LISTEN[$name]} }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_$k
          preserve_external_request_id: true
          always_set_request_id_in_response: true
          route_config:
            name: route_$k
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
              grpc_service: { envoy_grpc: { cluster_name: proc_$k } }
              stat_prefix: $k
              failure_mode_allow: false   # a failing processor shows as a 500, counted as an error
              message_timeout: $MESSAGE_TIMEOUT
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
EOF
  done
  cat <<EOF

  clusters:
  - name: upstream   # nginx
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $NGINX_PORT } } }
EOF
  for name in "${PROCS[@]}"; do
    k=$(key "$name")
    cat <<EOF
  - name: proc_$k   # $name: gRPC over cleartext HTTP/2
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: proc_$k
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: ${PROC_PORT[$name]} } } }
EOF
  done
} >"$CONFIG"

start_bg envoy "$CPU_A" "$LOGS/envoy.log" \
  "$ENVOY" -c "$CONFIG" --concurrency 1 --disable-hot-restart --log-level warn
ENVOY_PID=$LAST_PID
wait_for envoy "$ENVOY_PID" "$LOGS/envoy.log" envoy_ready "$ADMIN"

# ---------------------------------------------------------------- frames, from a capture

# capture NAME: the first requests through NAME's listener, captured on its processor's port
# (so the capture holds the connection from its preface on), decoded into $RESULTS/frames-NAME.
capture() {
  local name=$1 port=${PROC_PORT[$1]} pcap=$TMP/capture-$1.pcap
  log "frames $name: tcpdump on port $port, $CAPTURE_REQUESTS requests one at a time"
  start_bg "capture" "$CPU_B" "$LOGS/tcpdump-$name.log" \
    $SUDO tcpdump -i lo -n -s 0 -U -w "$pcap" "tcp port $port"
  local tcpdump_pid=$LAST_PID
  wait_for tcpdump "$tcpdump_pid" "$LOGS/tcpdump-$name.log" \
    grep -qs 'listening on' "$LOGS/tcpdump-$name.log"
  record "capture load" h2load --h1 -c1 -m1 -t1 -n "$CAPTURE_REQUESTS" \
    "http://127.0.0.1:LISTENER/"
  timeout 60 taskset -c "$CPU_A" h2load --h1 -c1 -m1 -t1 -n "$CAPTURE_REQUESTS" \
    "http://127.0.0.1:${LISTEN[$name]}/" >"$LOGS/capture-$name.txt" 2>&1
  sleep 0.3 # the last reply's ACK
  stop_pids "$tcpdump_pid"
  record "capture decode" tshark -r CAPTURE.pcap -d "tcp.port==PORT,http2" -T fields \
    -E separator=/t -E aggregator=, -e frame.number -e frame.time_relative -e tcp.srcport \
    -e tcp.len -e http2.type -e http2.flags -e http2.streamid -e http2.length
  tshark -r "$pcap" -d "tcp.port==$port,http2" -T fields -E separator=/t -E aggregator=, \
    -e frame.number -e frame.time_relative -e tcp.srcport -e tcp.len -e http2.type \
    -e http2.flags -e http2.streamid -e http2.length >"$TMP/capture-$name.tsv" 2>/dev/null
  python3 "$ROOT/bench/envoy/report.py" --frames "$TMP/capture-$name.tsv" "$port" \
    "$CAPTURE_REQUESTS" >"$RESULTS/frames-$name.json"
}
if [ "$FRAMES" = 1 ]; then
  for name in "${PROCS[@]}"; do capture "$name"; done
fi

check_headers() { # NAME URL WANT_HEADER(regex, or "!regex" for absent)
  local name=$1 url=$2 want=$3 headers
  headers=$(curl -s -m 5 -D - -o /dev/null "$url" | tr -d '\r')
  printf '%s\n' "$headers" >"$LOGS/$name-check.txt"
  # Here-strings, not pipes: with pipefail, grep -q leaving early fails the printf feeding it.
  if ! grep -q ' 200' <<<"${headers%%$'\n'*}"; then
    log "$name: $url did not answer 200:"
    printf '%s\n' "$headers" >&2
    exit 1
  fi
  if [ "${want#!}" != "$want" ]; then
    if grep -qiE "${want#!}" <<<"$headers"; then
      log "$name: $url has ${want#!}, which the bypass route must not have"
      exit 1
    fi
  elif ! grep -qiE "$want" <<<"$headers"; then
    log "$name: $url lacks $want: the filter did not run"
    printf '%s\n' "$headers" >&2
    exit 1
  fi
}
for name in "${PROCS[@]}"; do
  check_headers "$name" "http://127.0.0.1:${LISTEN[$name]}/" '^x-extra-request-id:'
done
check_headers bypass "http://127.0.0.1:${LISTEN[libextproc]}/no-ext-procs" '!^x-extra-request-id:'

# ---------------------------------------------------------------- one measured point

# measure KIND LAYOUT TARGET ROUND: one point, into $RESULTS/KIND-LAYOUT-TARGET-rROUND.*
# TARGET is a key of URL: a processor's name (its listener's /), or "bypass" (libextproc's
# listener, /no-ext-procs); PROC_PID and PROC_PORTS say which processor it loads, if any.
measure() {
  local kind=$1 layout=$2 target=$3 round=$4
  local id=$kind-$layout-$target-r$round url=${URL[$3]} warm cmd
  local proc=${PROC_PID[$3]:--} ports=${PROC_PORTS[$3]:--}
  if [ "$kind" = lowload ]; then
    # The warm-up is a run of its own (not h2load's --warm-up-time), so that what is read
    # around the measured run belongs to the measured requests only.
    warm=(taskset -c "$CPU_A" h2load --h1 -c1 -m1 -t1 -D "$WARMUP" "$url")
    cmd=(taskset -c "$CPU_A" h2load --h1 -c1 -m1 -t1 -D "$DURATION"
         --log-file "$LOGS/$id.requests" "$url")
  else
    warm=(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" --timeout 2s "$url")
    cmd=(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 2s
         -s "$ROOT/bench/envoy/wrk-report.lua" "$url")
  fi
  log "round $round, $layout: $target (${cmd[3]} ${cmd[5]} ${WARMUP}s + ${DURATION}s)"
  record "$kind $layout $target" "${cmd[@]}"
  timeout $((WARMUP + 30)) "${warm[@]}" >"$LOGS/$id-warmup.txt" 2>&1 || {
    log "$id: warm-up failed:"; cat "$LOGS/$id-warmup.txt" >&2; exit 1; }
  rm -f "$LOGS/$id.requests" # h2load appends to it
  envoy_stats "$ADMIN" "${STATKEY[$target]}" "$RESULTS/$id.stats-before"
  probe "$RESULTS/$id.probe-before" "$ENVOY_PID" "$proc" "$ports"
  timeout $((DURATION + 30)) "${cmd[@]}" >"$LOGS/$id.txt" 2>&1 || {
    log "$id: ${cmd[3]} failed:"; cat "$LOGS/$id.txt" >&2; exit 1; }
  probe "$RESULTS/$id.probe-after" "$ENVOY_PID" "$proc" "$ports"
  envoy_stats "$ADMIN" "${STATKEY[$target]}" "$RESULTS/$id.stats-after"
  if [ "$kind" = lowload ]; then
    python3 "$ROOT/bench/envoy/report.py" --h2load "$LOGS/$id.txt" "$LOGS/$id.requests" \
      "$DURATION" >"$RESULTS/$id.json"
  elif ! grep '^BENCH-JSON ' "$LOGS/$id.txt" | sed 's/^BENCH-JSON //' >"$RESULTS/$id.json"; then
    log "$id: wrk printed no result:"
    cat "$LOGS/$id.txt" >&2
    exit 1
  fi
}

layout() { # NAME: pins every server for the layout NAME (onecore, twocore, throughput)
  local name p pcpu=$CPU_A ecpu=$CPU_A ucpu=$CPU_A
  case "$1" in
    twocore) pcpu=$CPU_B ;;
    throughput) pcpu=$PROC_CPU ecpu=$ENVOY_CPU ucpu=$UPSTREAM_CPU ;;
  esac
  repin "$ecpu" "$ENVOY_PID"
  repin "$ucpu" "$NGINX_PID"
  for p in "${PROCS[@]}"; do repin "$pcpu" "${PROC_PID[$p]}"; done
}

# ---------------------------------------------------------------- the rounds

declare -A URL STATKEY PROC_PORTS
URL[bypass]=http://127.0.0.1:${LISTEN[libextproc]}/no-ext-procs STATKEY[bypass]=libextproc
for p in "${PROCS[@]}"; do
  URL[$p]=http://127.0.0.1:${LISTEN[$p]}/ STATKEY[$p]=$(key "$p") PROC_PORTS[$p]=${PROC_PORT[$p]}
done
TARGETS=(bypass "${PROCS[@]}")
for round in $(seq "$ROUNDS"); do
  # Rotated by one each round: no target is always first, or always just after another.
  shift_by=$(((round - 1) % ${#TARGETS[@]}))
  order=("${TARGETS[@]:shift_by}" "${TARGETS[@]:0:shift_by}")
  for lay in onecore twocore; do
    layout "$lay"
    for t in "${order[@]}"; do measure lowload "$lay" "$t" "$round"; done
  done
  layout throughput
  for t in "${order[@]}"; do
    [ "$t" = python ] || measure throughput c"$CONNECTIONS" "$t" "$round"
  done
done
curl -s -m 5 "http://127.0.0.1:$ADMIN/stats?filter=ext_proc" >"$RESULTS/extproc-stats.txt"
stop_pids "$ENVOY_PID"
for p in "${PROCS[@]}"; do stop_pids "${PROC_PID[$p]}"; done

# ---------------------------------------------------------------- optional: the six filters

if [ "${BENCH_SIX:-0}" = 1 ]; then
  # The use-case listener (8081) and its processors (50057-50059) are not measured: they get
  # free loopback ports that nothing serves, so this Envoy never binds a demo's ports.
  read -r S_LISTEN S_ADMIN P1 P2 P3 P4 P5 P6 S_UNUSED Q1 Q2 Q3 <<<"$(free_ports 12)"
  python3 - "$ROOT/deploy/envoy.yaml" "$TMP/envoy-six.yaml" "$S_LISTEN" "$S_ADMIN" \
    "$NGINX_PORT" "$S_UNUSED" "$P1" "$P2" "$P3" "$P4" "$P5" "$P6" "$Q1" "$Q2" "$Q3" <<'EOF'
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
  log "== six filters (deploy/envoy.yaml), one round"
  start_bg "six processor" "$CPU_A" "$LOGS/six-processor.log" "$RUNNER" --service \
    "trivial@127.0.0.1:$P1,timer@127.0.0.1:$P2,echo@127.0.0.1:$P3,digest@127.0.0.1:$P4,decorated@127.0.0.1:$P5,context@127.0.0.1:$P6" \
    --workers 1 --grace-period 1 --drain-delay 0
  six_proc=$LAST_PID
  for port in "$P1" "$P2" "$P3" "$P4" "$P5" "$P6"; do
    wait_for "six-filter processor on $port" "$six_proc" "$LOGS/six-processor.log" tcp_open "$port"
  done
  start_bg "six envoy" "$CPU_A" "$LOGS/six-envoy.log" \
    "$ENVOY" -c "$TMP/envoy-six.yaml" --concurrency 1 --disable-hot-restart --log-level warn
  six_envoy=$LAST_PID
  wait_for envoy "$six_envoy" "$LOGS/six-envoy.log" envoy_ready "$S_ADMIN"
  check_headers six "http://127.0.0.1:$S_LISTEN/" \
    '^x-ext-procs-applied: TrivialExtProcService,TimerExtProcService,EchoExtProcService,DigestExtProcService,DecoratedExtProcService,CtxExtProcService$'
  # The same measure(), against the six-filter Envoy; its stat names differ (none kept).
  ENVOY_PID=$six_envoy ADMIN=$S_ADMIN
  URL[six]=http://127.0.0.1:$S_LISTEN/ STATKEY[six]=none PROC_PID[six]=$six_proc
  PROC_PORTS[six]="$P1 $P2 $P3 $P4 $P5 $P6"
  URL[six_bypass]=http://127.0.0.1:$S_LISTEN/no-ext-procs STATKEY[six_bypass]=none
  PROCS=(six)
  layout onecore
  measure lowload onecore six 1
  measure lowload onecore six_bypass 1
  layout throughput
  measure throughput c"$CONNECTIONS" six 1
  measure throughput c"$CONNECTIONS" six_bypass 1
  stop_pids "$six_envoy" "$six_proc"
fi

stop_pids "$NGINX_PID"

# The generated configurations, kept beside the JSON (the commands name their temp copies).
mkdir -p "$OUT_CONFIGS"
rm -f "$OUT_CONFIGS"/*.yaml "$OUT_CONFIGS"/*.conf
cp "$CONFIG" "$TMP/nginx/nginx.conf" "$OUT_CONFIGS/"
[ ! -f "$TMP/envoy-six.yaml" ] || cp "$TMP/envoy-six.yaml" "$OUT_CONFIGS/"

# ---------------------------------------------------------------- report

python3 "$ROOT/bench/envoy/report.py" "$RESULTS" "$OUT_JSON"
log "wrote $OUT_JSON and the configs in ${OUT_CONFIGS#"$ROOT"/}/"
