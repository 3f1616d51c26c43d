#!/usr/bin/env bash
# Why a benchmark peer cannot run here: `missing.sh NAME` prints the reason and exits 1, or
# prints nothing and exits 0 when it can. go-grpc must be installed (install.sh, under
# BENCH_PEERS_DIR, default build/bench-peers); a Go SDK peer needs its binary in
# BENCH_PEER_GO_WROSSMORROW or BENCH_PEER_GO_GETYOURGUIDE (README.md).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PEERS_DIR="${BENCH_PEERS_DIR:-$HERE/../../build/bench-peers}"

case "${1:?usage: missing.sh NAME}" in
go-grpc)
  [ -x "$PEERS_DIR/go-grpc-peer" ] && exit 0
  echo "not installed (run bench/peers/install.sh go-grpc)"
  ;;
*)
  var="BENCH_PEER_$(echo "$1" | tr '[:lower:]-' '[:upper:]_')"
  if [ -z "${!var:-}" ]; then
    echo "$var is unset (bench/peers/README.md says how to build it)"
  elif [ ! -x "${!var}" ]; then
    echo "$var=${!var} is not executable"
  else
    exit 0
  fi
  ;;
esac
exit 1
