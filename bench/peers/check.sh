#!/usr/bin/env bash
# Check that an installed benchmark peer really serves ext_proc:
#   1. a direct ext_proc exchange (check_peer.py: request_headers then response_headers, values
#      in raw_value as Envoy 1.40 sends them, then again in `value`);
#   2. behind the pinned Envoy (tests/e2e/envoy-trivial.yaml, addresses rewritten to free
#      loopback ports) with the echo upstream and curl: status, and x-extra-request-id as the
#      client and the upstream saw it.
#
#   bench/peers/check.sh NAME     NAME: python | go-grpc | go-wrossmorrow | go-getyourguide
#
# (the two Go SDK peers need BENCH_PEER_GO_WROSSMORROW / BENCH_PEER_GO_GETYOURGUIDE, as for
# start.sh). Each reply's encoded size is printed too: the peers answer the same phases with
# differently sized messages.
# then CHECK_REQUESTS (default 50) more sequential requests through Envoy, all of which must be 200.
# Exit 0 when the peer's replies have the right types and Envoy answers 200; whether the header
# value came through is printed (the Python SDK reads `value` only, so behind Envoy 1.40 it sets
# an empty x-extra-request-id). Everything it starts listens on 127.0.0.1 and is stopped on exit.
# ENVOY overrides the Envoy binary (default .venv/bin/envoy, from scripts/setup.sh).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
OUT="${BENCH_PEERS_DIR:-$REPO/build/bench-peers}"
ENVOY="${ENVOY:-$REPO/.venv/bin/envoy}"
VPY="$OUT/python-venv/bin/python"
[[ $# -eq 1 ]] || { echo "usage: $0 NAME" >&2; exit 2; }
name="$1"
[[ -x "$VPY" ]] || { echo "$0: run bench/peers/install.sh first" >&2; exit 3; }
[[ -x "$ENVOY" ]] || { echo "$0: no Envoy at $ENVOY (scripts/setup.sh, or set ENVOY)" >&2; exit 3; }

tmp="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

read -r peer_port listen_port admin_port echo_port < <("$VPY" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()')

wait_port() { # PORT SECONDS [PID: give up as soon as it has exited]
    for _ in $(seq $(($2 * 10))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        [[ -z "${3:-}" ]] || kill -0 "$3" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

echo "== $name: peer on 127.0.0.1:$peer_port"
"$HERE/start.sh" "$name" "$peer_port" >"$tmp/peer.log" 2>&1 &
pids+=($!)
if ! wait_port "$peer_port" 30 "${pids[-1]}"; then
    echo "peer did not start:"; cat "$tmp/peer.log"; exit 1
fi

echo "== direct ext_proc exchange (values in raw_value, as Envoy 1.40 sends)"
"$VPY" "$HERE/check_peer.py" "$peer_port"
echo "== direct ext_proc exchange (values in value)"
"$VPY" "$HERE/check_peer.py" "$peer_port" --value

echo "== behind Envoy ($("$ENVOY" --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*/[A-Za-z]*' | head -1))"
sed -e "s/socket_address: { address: 0.0.0.0, port_value: 8080 }/socket_address: { address: 127.0.0.1, port_value: $listen_port }/" \
    -e "s/port_value: 9901 }/port_value: $admin_port }/" \
    -e "s/port_value: 8000 }/port_value: $echo_port }/" \
    -e "s/port_value: 50051 }/port_value: $peer_port }/" \
    "$REPO/tests/e2e/envoy-trivial.yaml" >"$tmp/envoy.yaml"
for p in "$listen_port" "$admin_port" "$echo_port" "$peer_port"; do
    grep -q "port_value: $p }" "$tmp/envoy.yaml" || { echo "config rewrite missed port $p"; exit 1; }
done
"$VPY" "$REPO/tools/echo_upstream.py" --host 127.0.0.1 --port "$echo_port" >"$tmp/echo.log" 2>&1 &
pids+=($!)
"$ENVOY" -c "$tmp/envoy.yaml" --disable-hot-restart --concurrency 1 -l warning \
    >"$tmp/envoy.log" 2>&1 &
pids+=($!)
ready=""
for _ in $(seq 200); do
    if curl -sf "http://127.0.0.1:$admin_port/ready" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
done
[[ -n "$ready" ]] || { echo "Envoy did not become ready:"; tail -20 "$tmp/envoy.log"; exit 1; }
wait_port "$echo_port" 10

id="check-envoy-$RANDOM$RANDOM"
curl -s -D "$tmp/headers" -o "$tmp/body" -H "x-request-id: $id" \
    "http://127.0.0.1:$listen_port/check-peer" || true
status="$(head -1 "$tmp/headers" | tr -d '\r')"
client_extra="$(grep -i '^x-extra-request-id:' "$tmp/headers" | tr -d '\r' || true)"
upstream_extra="$("$VPY" -c '
import json, sys
try:
    h = json.load(open(sys.argv[1]))["headers"]
    print(repr(h["x-extra-request-id"]) if "x-extra-request-id" in h else "(absent)")
except Exception as e:
    print("(no echo JSON: %s)" % e)' "$tmp/body")"
echo "  curl -H 'x-request-id: $id' -> $status"
echo "  client saw:   ${client_extra:-(no x-extra-request-id header)}"
echo "  upstream saw: x-extra-request-id = $upstream_extra"
grep -i '^x-ext-procs-applied:' "$tmp/headers" | tr -d '\r' | sed 's/^/  client saw:   /' || true
if [[ "$status" != *" 200"* ]]; then
    echo "FAIL: Envoy did not answer 200"; echo "-- body:"; cat "$tmp/body"; echo
    echo "-- envoy log:"; tail -20 "$tmp/envoy.log"; echo "-- peer log:"; tail -20 "$tmp/peer.log"
    exit 1
fi
n="${CHECK_REQUESTS:-50}"
codes="$(for i in $(seq "$n"); do
    curl -s -o /dev/null -w '%{http_code}\n' -H "x-request-id: $id-$i" "http://127.0.0.1:$listen_port/r/$i"
done | sort | uniq -c | tr -s ' ' | tr '\n' ';')"
echo "  $n more requests (CHECK_REQUESTS), count and status: $codes"
[[ "$codes" == " $n 200;" ]] || { echo "FAIL: not every request answered 200"; exit 1; }
if [[ "$client_extra" == *"$id"* && "$upstream_extra" == *"$id"* ]]; then
    echo "OK: $name answered through Envoy and x-extra-request-id carried the request id"
else
    echo "OK (types): $name answered through Envoy; x-extra-request-id did not carry the id"
fi
