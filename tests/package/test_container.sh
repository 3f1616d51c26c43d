#!/usr/bin/env bash
# Builds the example runner's image (scripts/container.sh build, deploy/Containerfile) with the
# real podman, runs it serving the trivial example on a free loopback port, and checks through
# the project's Envoy, with curl, that requests get its header; checks that the process in the
# container does not run as root, that the image is small, and that the container stops cleanly
# on `podman stop`. The container and the image are removed at the end, also on failure.
#
#   tests/package/test_container.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

IMAGE=localhost/extproc-examples:test-$$
NAME=extproc-examples-test-$$
# Small against a distribution base image (a Debian root filesystem alone is over 100 MiB): the
# runner, the shared libraries it loads (OpenSSL, libjwt, hiredis, libmicrohttpd among them for
# the use-case processors) and a passwd file.
MAX_IMAGE_BYTES=$((32 * 1024 * 1024))
command -v podman >/dev/null || fail "podman is not installed (scripts/setup.sh installs it)"
pod() { "$REPO/scripts/container.sh" podman "$@"; }

WORK=$(mktemp -d /tmp/extproc-container-test.XXXXXX)
ENVOY_PID=
cleanup() {
  local rc=$?
  [ -z "$ENVOY_PID" ] || stop_pid "$ENVOY_PID"
  pod rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
  pod rmi -f "$IMAGE" >/dev/null 2>&1 || true
  keep_logs_on_failure $rc
}
trap cleanup EXIT

log "building $IMAGE"
IMAGE=$IMAGE "$REPO/scripts/container.sh" build >"$WORK/build.log" 2>&1 ||
  fail "scripts/container.sh build: $(tail -20 "$WORK/build.log")"
user=$(pod image inspect -f '{{.Config.User}}' "$IMAGE")
[ "$user" = 65532:65532 ] || fail "the image's user is '$user'"
size=$(pod image inspect -f '{{.Size}}' "$IMAGE")
[ "$size" -le $MAX_IMAGE_BYTES ] || fail "the image is $size bytes, more than $MAX_IMAGE_BYTES"
pass "built $IMAGE: $size bytes, user $user"

read -r LISTEN ADMIN PROC < <(free_ports 3 | paste -sd' ')
pod run -d --name "$NAME" --network host "$IMAGE" --service "trivial:$PROC" >"$WORK/run.log" 2>&1 ||
  fail "podman run: $(cat "$WORK/run.log")"
container_up() {
  [ "$(pod inspect -f '{{.State.Running}}' "$NAME")" = true ] ||
    fail "the container stopped: $(pod logs "$NAME" 2>&1 | tail -5)"
  can_connect "$PROC"
}
wait_until 20 "the container on port $PROC" container_up
pass "container $NAME serves trivial on port $PROC"

pid=$(pod inspect -f '{{.State.Pid}}' "$NAME")
[ "$(cat "/proc/$pid/comm")" = extproc-example ] || fail "pid $pid is $(cat "/proc/$pid/comm")"
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
gids=$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
[ "$uids" = "65532 65532 65532 65532" ] && [ "$gids" = "65532 65532 65532 65532" ] ||
  fail "extproc-examples runs with uids $uids, gids $gids"
pass "extproc-examples (pid $pid) runs as uid/gid 65532, not root"

start_envoy "$WORK" "$LISTEN" "$ADMIN" "$PROC"
id="container-test-$RANDOM"
got=$(response_header "$LISTEN" /through-envoy x-extra-request-id -H "x-request-id: $id")
[ "$got" = "$id" ] || fail "x-extra-request-id is '$got', expected '$id'"
chain=$(response_header "$LISTEN" /through-envoy x-ext-procs-applied)
[ "$chain" = TrivialExtProcService ] || fail "x-ext-procs-applied is '$chain'"
pass "through Envoy: x-extra-request-id: $got, x-ext-procs-applied: $chain"
stop_pid "$ENVOY_PID"
ENVOY_PID=

pod stop -t 10 "$NAME" >/dev/null
code=$(pod inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || fail "the container exited with $code after podman stop"
pod logs "$NAME" 2>&1 | grep -c "received signal 15" >/dev/null || fail "no SIGTERM in the container's log"
pod rm "$NAME" >/dev/null
pod rmi "$IMAGE" >/dev/null
! pod image exists "$IMAGE" || fail "$IMAGE still exists"
pass "stopped on SIGTERM with status 0; container and image removed"

log "$checks checks passed in ${SECONDS}s"
