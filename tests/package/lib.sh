# Helpers shared by test_packages.sh and test_container.sh (sourced, not run).
# Envoy is the project's pinned one (.venv/bin/envoy, from scripts/setup.sh) unless ENVOY is
# set. Every port is a free loopback port.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ENVOY=${ENVOY:-$REPO/.venv/bin/envoy}
TEST_NAME=$(basename "$0" .sh)

log() { echo "[$TEST_NAME] $*"; }

# Counts and reports one passed check.
checks=0
pass() {
  checks=$((checks + 1))
  log "ok: $*"
}

# Keeps the work directory and shows the tail of its logs after a failure (exit status $1);
# removes it after a success.
keep_logs_on_failure() {
  if [ "$1" -ne 0 ]; then
    log "logs kept in $WORK"
    tail -n 20 "$WORK"/*.log 2>/dev/null | sed 's/^/    /' >&2 || true
  else
    rm -rf "$WORK"
  fi
}
fail() {
  echo "[$TEST_NAME] FAIL: $*" >&2
  exit 1
}

# free_ports N: prints N distinct free loopback TCP ports, one per line (all bound at once
# while choosing, so the kernel hands out different ones).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
print("\n".join(str(s.getsockname()[1]) for s in held))
PY
}

can_connect() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.1 s until it succeeds.
wait_until() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 0.1
  done
}

# start_envoy DIR LISTEN_PORT ADMIN_PORT PROCESSOR_PORT: Envoy from tests/package/envoy.yaml in
# the background (pid in ENVOY_PID, log in DIR/envoy.log), waits until it is ready.
start_envoy() {
  local dir=$1 listen=$2 admin=$3 processor=$4
  [ -x "$ENVOY" ] || fail "no Envoy at $ENVOY (run scripts/setup.sh or set ENVOY)"
  sed -e "s/@LISTEN_PORT@/$listen/" -e "s/@ADMIN_PORT@/$admin/" \
    -e "s/@PROCESSOR_PORT@/$processor/" "$REPO/tests/package/envoy.yaml" >"$dir/envoy.yaml"
  "$ENVOY" -c "$dir/envoy.yaml" --disable-hot-restart --log-level warn --concurrency 1 \
    >"$dir/envoy.log" 2>&1 &
  ENVOY_PID=$!
  envoy_ready() {
    kill -0 "$ENVOY_PID" 2>/dev/null || { tail -20 "$dir/envoy.log" >&2; fail "Envoy exited"; }
    curl -sf -o /dev/null "http://127.0.0.1:$admin/ready" && can_connect "$listen"
  }
  wait_until 30 "Envoy on port $listen" envoy_ready
}

# stop_pid PID: SIGTERM, then SIGKILL after 10 s; waits for it (a child of this shell) and
# sets STOP_RC to its exit status. A processor with the default options drains for 3 s (health
# NOT_SERVING) before it closes its connections.
stop_pid() {
  local pid=$1 i
  STOP_RC=0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || STOP_RC=$?
}

# response_header PORT PATH NAME [CURL ARGS...]: GETs http://127.0.0.1:PORT/PATH through Envoy
# and prints the value of response header NAME (empty if absent); fails unless the status is
# 200.
response_header() {
  local port=$1 path=$2 name=$3 headers
  shift 3
  headers=$(curl -s -D - -o /dev/null --max-time 10 "$@" "http://127.0.0.1:$port$path") ||
    fail "curl to port $port failed"
  echo "$headers" | head -1 | grep -c ' 200' >/dev/null || fail "status not 200 for $path: $(echo "$headers" | head -1)"
  echo "$headers" | tr -d '\r' | sed -n "s/^$name: //Ip" | head -1
}
