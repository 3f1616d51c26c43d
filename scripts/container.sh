#!/usr/bin/env bash
# Builds and runs the container image of the example runner (deploy/Containerfile).
#
#   scripts/container.sh build            build the image
#   scripts/container.sh run [ARGS...]    run it in the foreground (Ctrl-C stops it); ARGS go to
#                                         extproc-examples (default: --service trivial, i.e. on
#                                         0.0.0.0:50051), e.g. --service trivial:50051,echo:50053
#   scripts/container.sh podman ARGS...   any podman command, with this project's settings
#
# The image (default localhost/extproc-examples:latest; set IMAGE to change it) is FROM scratch:
# a Release build of extproc-examples (in build-container/, or BUILD_DIR), the shared libraries
# it loads, copied from this machine, and a passwd entry for its user, uid 65532.
#
# Podman runs with runc, the vfs storage driver and the host's network, and with
# deploy/containers.conf (no default ulimits, no pids limit), as these machines need; the
# processor's ports are therefore the host's own.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/extproc-examples:latest}
BUILD_DIR=${BUILD_DIR:-build-container}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/containers.conf}

pod() { podman --runtime runc --storage-driver vfs "$@"; }

# The root filesystem: the program, each library ldd resolves (at the path it resolves to) and
# the dynamic loader, /etc/passwd and /etc/group for uid 65532, and /tmp for unix sockets.
assemble_rootfs() {
  local rootfs=$1 program=$BUILD_DIR/examples/extproc-examples lib
  rm -rf "$rootfs"
  mkdir -p "$rootfs/usr/bin" "$rootfs/etc" "$rootfs/tmp"
  chmod 1777 "$rootfs/tmp"
  strip --strip-unneeded -o "$rootfs/usr/bin/extproc-examples" "$program"
  for lib in $(ldd "$program" | grep -oE '/[^ ]+'); do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
  echo "nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin" >"$rootfs/etc/passwd"
  echo "nonroot:x:65532:" >"$rootfs/etc/group"
}

build() {
  echo "container: building extproc-examples (Release) in $BUILD_DIR"
  cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DEXTPROC_TESTS=OFF >/dev/null
  cmake --build "$BUILD_DIR" -j"$(nproc)" --target extproc-examples >/dev/null
  local context=$BUILD_DIR/container
  assemble_rootfs "$context/rootfs"
  echo "container: building $IMAGE"
  pod build --network host --layers=false -f deploy/Containerfile -t "$IMAGE" "$context"
  echo "container: $IMAGE is $(pod image inspect -f '{{.Size}}' "$IMAGE") bytes"
}

case ${1:-} in
build) build ;;
run)
  shift
  exec podman --runtime runc --storage-driver vfs run --rm --network host "$IMAGE" "$@"
  ;;
podman)
  shift
  pod "$@"
  ;;
-h | --help)
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  ;;
*)
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
