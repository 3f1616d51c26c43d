#!/usr/bin/env bash
# The libextproc demo: builds the project, then runs Envoy (deploy/envoy.yaml) in front of the
# echo upstream, with the six example processors chained (one extproc-examples process serving
# each on its own port), until Ctrl-C or SIGTERM.
#
#   client ──:8080──▶ Envoy ──gRPC :50051…50056──▶ extproc-examples (trivial, timer, echo,
#                       │                                            digest, decorated, context)
#                       └──:8000──▶ tools/echo_upstream.py          (admin: 127.0.0.1:9901)
#
# Environment (optional):
#   DEMO_SKIP_BUILD=1   skip setup and build, run what is already built
#   EXTPROC_EXAMPLES    processor runner to use (default build/examples/extproc-examples)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
ENVOY=.venv/bin/envoy
RUNNER=${EXTPROC_EXAMPLES:-build/examples/extproc-examples}

if [ "${DEMO_SKIP_BUILD:-0}" != 1 ]; then
  scripts/setup.sh
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
  cmake --build build -j2
fi
[ -x "$RUNNER" ] || { echo "demo: $RUNNER is missing or not executable" >&2; exit 1; }

# Fail before starting anything if a demo port is taken. SO_REUSEADDR as the servers use it,
# so connections in TIME_WAIT from an earlier run do not count as "taken".
"$PY" - <<'EOF'
import socket, sys
taken = []
for host, port, who in [("0.0.0.0", 8080, "Envoy listener"), ("127.0.0.1", 9901, "Envoy admin"),
                        ("127.0.0.1", 8000, "echo upstream")] + \
                       [("127.0.0.1", p, "processor") for p in range(50051, 50057)]:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            taken.append(f"  {host}:{port} ({who}): {e.strerror}")
if taken:
    sys.exit("demo: these ports are already in use; stop whatever holds them and retry:\n"
             + "\n".join(taken))
EOF

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/libextproc-demo.XXXXXX")
PIDS=()

stop_all() {
  trap - INT TERM EXIT
  echo
  echo "demo: stopping"
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "demo: stopped (logs in $LOGS)"
}
trap 'stop_all; exit 0' INT TERM
trap 'stop_all' EXIT  # also clean up when something below fails

"$PY" tools/echo_upstream.py --port 8000 >"$LOGS/echo.log" 2>&1 &
PIDS+=($!)
SERVICES=trivial@127.0.0.1:50051,timer@127.0.0.1:50052,echo@127.0.0.1:50053
SERVICES=$SERVICES,digest@127.0.0.1:50054,decorated@127.0.0.1:50055,context@127.0.0.1:50056
"$RUNNER" --service "$SERVICES" >"$LOGS/processor.log" 2>&1 &
PIDS+=($!)
# The demo never hot-restarts, and with hot restart off Envoy leaves no shared memory behind
# nor collides with another Envoy's default base id.
"$ENVOY" -c deploy/envoy.yaml --disable-hot-restart --log-level warn --concurrency 2 \
  >"$LOGS/envoy.log" 2>&1 &
PIDS+=($!)

port_open() { "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.5)" 2>/dev/null; }
ready() {
  port_open 8000 && port_open 50051 && port_open 50056 && port_open 8080 &&
    [ "$(curl -s -m 1 http://127.0.0.1:9901/ready)" = LIVE ]
}

echo "demo: starting (logs in $LOGS)"
for _ in $(seq 100); do  # 100 x 0.1 s
  ready && break
  for pid in "${PIDS[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "demo: a process exited during startup; log tails:" >&2
      tail -n 20 "$LOGS"/*.log >&2
      exit 1
    fi
  done
  sleep 0.1
done
if ! ready; then
  echo "demo: not ready after 10 s; log tails:" >&2
  tail -n 20 "$LOGS"/*.log >&2
  exit 1
fi

echo "demo: ready. Try:"
echo
echo "    curl -s -i localhost:8080/something"
echo "    curl -s -i -X PUT localhost:8080/something -H 'content-type: application/json' -d '{\"hello\":\"hi\"}'"
echo "    curl -s -i localhost:8080/something -H 'x-echo-only: yes' -d 'answered by the processor'"
echo "    curl -s -i localhost:8080/no-ext-procs     # skips every processor"
echo
echo "demo: \$ curl -s -i localhost:8080/something"
curl -s -i localhost:8080/something || true
echo
echo
echo "demo: running; Ctrl-C to stop"

# Wait for Ctrl-C or SIGTERM (the trap stops everything); if a process dies on its own, say so.
wait -n "${PIDS[@]}" || true
echo "demo: a process exited unexpectedly; log tails:" >&2
tail -n 20 "$LOGS"/*.log >&2
exit 1
