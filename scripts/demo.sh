#!/usr/bin/env bash
# The libextproc demo: builds the project, then runs Envoy (deploy/envoy.yaml) in front of the
# echo upstream, with the six example processors chained on one listener and the three use-case
# processors (auth -> idempotency -> access-log) on another, one extproc-examples process serving
# all nine, each on its own port, until Ctrl-C or SIGTERM.
#
#   client ──:8080──▶ Envoy ──gRPC :50051…50056──▶ extproc-examples (trivial, timer, echo,
#          ──:8081──▶   │                                            digest, decorated, context;
#                       │   ──gRPC :50057…50059──▶                   auth, idempotency, access-log)
#                       └──:8000──▶ tools/echo_upstream.py          (admin: 127.0.0.1:9901)
#                                   redis-server 127.0.0.1:6380      (idempotency's store)
#
# For the use cases it makes, in its temporary directory (printed; kept after the demo): an
# HS256 secret and an API keys file for auth, a token signed with that secret and an API key
# (both printed), and the access log (access.jsonl). Redis keeps nothing on disk.
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
for host, port, who in [("0.0.0.0", 8080, "Envoy listener"),
                        ("0.0.0.0", 8081, "Envoy listener, use cases"),
                        ("127.0.0.1", 9901, "Envoy admin"), ("127.0.0.1", 8000, "echo upstream"),
                        ("127.0.0.1", 6380, "redis-server")] + \
                       [("127.0.0.1", p, "processor") for p in range(50051, 50060)]:
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

REDIS=$(command -v redis-server || true)
[ -n "$REDIS" ] || { echo "demo: redis-server is missing (scripts/setup.sh installs it)" >&2; exit 1; }

LOGS=$(mktemp -d "${TMPDIR:-/tmp}/libextproc-demo.XXXXXX")  # mode 0700: it holds the keys
PIDS=()

# Auth's keys: a random HS256 secret, an API key kept as its SHA-256, and a token for the demo
# user signed with the secret (valid 24 h), minted with PyJWT from the project's virtualenv.
KEYS=$("$PY" - "$LOGS" <<'EOF'
import hashlib, secrets, sys, time
import jwt
d = sys.argv[1]
secret = secrets.token_hex(32)
with open(f"{d}/hs256.secret", "w") as f:
    f.write(secret + "\n")
api_key = "demo-" + secrets.token_hex(16)
with open(f"{d}/api-keys.txt", "w") as f:
    f.write("# sha256(key) name scopes\n")
    f.write(f"{hashlib.sha256(api_key.encode()).hexdigest()} demo-service orders\n")
now = int(time.time())
token = jwt.encode({"sub": "demo-user", "iat": now, "exp": now + 24 * 3600, "scope": "orders"},
                   secret, algorithm="HS256")
print(token, api_key)
EOF
)
read -r TOKEN API_KEY <<<"$KEYS"

stop_all() {
  trap - INT TERM HUP EXIT
  echo
  echo "demo: stopping"
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "demo: stopped (logs in $LOGS)"
}
trap 'stop_all; exit 0' INT TERM HUP
trap 'stop_all' EXIT  # also clean up when something below fails

# Each process runs in a session of its own (setsid), so the terminal's Ctrl-C reaches only this
# script, which stops them all; otherwise those that exit at once on SIGINT (redis-server, Envoy)
# could wake the `wait -n` below before the trap runs, and the demo would report them as having
# died. Not a process group leader here, setsid execs in place: $! is the process itself.

setsid "$PY" tools/echo_upstream.py --port 8000 >"$LOGS/echo.log" 2>&1 &
PIDS+=($!)
# Idempotency's store: loopback only, nothing saved to disk, gone when the demo stops.
setsid "$REDIS" --port 6380 --bind 127.0.0.1 --save "" --appendonly no --dir "$LOGS" \
  --daemonize no >"$LOGS/redis.log" 2>&1 &
PIDS+=($!)
SERVICES=trivial@127.0.0.1:50051,timer@127.0.0.1:50052,echo@127.0.0.1:50053
SERVICES=$SERVICES,digest@127.0.0.1:50054,decorated@127.0.0.1:50055,context@127.0.0.1:50056
SERVICES=$SERVICES,auth@127.0.0.1:50057,idempotency@127.0.0.1:50058,access-log@127.0.0.1:50059
ACCESS_LOG=$LOGS/access.jsonl
# The use cases' settings (README, "Use cases"); the six examples take none.
EXTPROC_AUTH_HS256_SECRET_FILE=$LOGS/hs256.secret \
EXTPROC_AUTH_API_KEYS_FILE=$LOGS/api-keys.txt \
EXTPROC_IDEMPOTENCY_REDIS=127.0.0.1:6380 \
EXTPROC_ACCESS_LOG_PATH=$ACCESS_LOG \
EXTPROC_ACCESS_LOG_HEADERS=user-agent,content-type,x-auth-subject,idempotency-key \
EXTPROC_ACCESS_LOG_BODY_CAP=1KiB \
EXTPROC_ACCESS_LOG_REDACT_FIELDS=password,secret,token,authorization,x-api-key \
  setsid "$RUNNER" --service "$SERVICES" >"$LOGS/processor.log" 2>&1 &
PIDS+=($!)
# The demo never hot-restarts, and with hot restart off Envoy leaves no shared memory behind
# nor collides with another Envoy's default base id.
setsid "$ENVOY" -c deploy/envoy.yaml --disable-hot-restart --log-level warn --concurrency 2 \
  >"$LOGS/envoy.log" 2>&1 &
PIDS+=($!)

port_open() { "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.5)" 2>/dev/null; }
ready() {
  port_open 8000 && port_open 6380 && port_open 50051 && port_open 50059 && port_open 8080 &&
    port_open 8081 &&
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
echo "demo: the use cases on localhost:8081 (auth -> idempotency -> access-log), with a token and"
echo "an API key made for this run:"
echo
echo "    TOKEN=$TOKEN"
echo "    API_KEY=$API_KEY"
echo
echo "    curl -s -i localhost:8081/orders                                   # 401: no credential"
echo "    curl -s -i localhost:8081/orders -H \"authorization: Bearer \$TOKEN\"   # 200"
echo "    curl -s -i localhost:8081/orders -H \"x-api-key: \$API_KEY\"            # 200"
echo "    curl -s -i localhost:8081/orders -H \"authorization: Bearer \$TOKEN\" \\"
echo "      -H 'idempotency-key: order-1' -H 'content-type: application/json' -d '{\"item\":1}'"
echo "                                   # twice: the second is replayed, idempotent-replayed: true"
echo "    tail -n 3 $ACCESS_LOG"
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
