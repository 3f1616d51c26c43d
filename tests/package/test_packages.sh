#!/usr/bin/env bash
# Builds the Debian packages with cpack, installs them into this machine (apt), and uses them as
# a user would, outside the source tree:
#   - the packages' names, dependencies and contents (no generated protobuf-c header);
#   - the installed library's SONAME, headers, pkg-config file, man pages (every flag a program
#     accepts is documented);
#   - tests/package/outside/processor.c, copied to a temporary directory, built with
#     `pkg-config --cflags --libs libextproc`, with `pkg-config --static`, and with CMake's
#     find_package(libextproc) (shared and static targets; a version that is not compatible is
#     refused), each run behind the project's Envoy, checked with curl;
#   - the installed extproc-examples behind Envoy.
# The packages are removed at the end, also on failure. Needs root (it installs packages).
#
#   tests/package/test_packages.sh [BUILD_DIR]   (default build-pkg; configured with
#                                                 CMAKE_INSTALL_PREFIX=/usr, then built)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

BUILD=${1:-build-pkg}
case $BUILD in /*) ;; *) BUILD=$PWD/$BUILD ;; esac
PACKAGES=(libextproc0 libextproc-dev extproc-tools)
[ "$(id -u)" -eq 0 ] || fail "must run as root: it installs the packages with apt"

WORK=$(mktemp -d /tmp/extproc-pkg-test.XXXXXX)
PIDS=()
remove_packages() {
  local installed=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -c "ok installed" >/dev/null && installed+=("$p")
  done
  if [ ${#installed[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${installed[@]}" >>"$WORK/apt.log" 2>&1
  fi
}
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  remove_packages || echo "[$TEST_NAME] could not remove the packages; see $WORK/apt.log" >&2
  keep_logs_on_failure $rc
}
trap cleanup EXIT

# ---- build the packages ---------------------------------------------------------------
log "configuring and building $BUILD"
extra=()
[ -f "$BUILD/CMakeCache.txt" ] || extra=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DEXTPROC_TESTS=OFF)
cmake -S "$REPO" -B "$BUILD" -DCMAKE_INSTALL_PREFIX=/usr "${extra[@]}" >"$WORK/cmake.log" 2>&1 &&
  cmake --build "$BUILD" -j"$(nproc)" >>"$WORK/cmake.log" 2>&1 || fail "build: $(tail -20 "$WORK/cmake.log")"
VERSION=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$BUILD/CMakeCache.txt")
ARCH=$(dpkg --print-architecture)
[ -n "$VERSION" ] || fail "no project version in $BUILD/CMakeCache.txt"

log "building the packages (version $VERSION)"
(cd "$BUILD" && cpack -G DEB -B "$WORK/debs") >"$WORK/cpack.log" 2>&1 ||
  fail "cpack: $(tail -20 "$WORK/cpack.log")"
DEBS=()
for p in "${PACKAGES[@]}"; do
  deb="$WORK/debs/${p}_${VERSION}_${ARCH}.deb"
  [ -f "$deb" ] || fail "cpack made no $(basename "$deb"): $(ls "$WORK/debs")"
  DEBS+=("$deb")
done
[ "$(ls "$WORK"/debs/*.deb | wc -l)" -eq 3 ] || fail "expected 3 packages: $(ls "$WORK/debs")"
pass "cpack made ${PACKAGES[*]}"

# ---- what the packages declare and hold ------------------------------------------------
depends() { dpkg-deb -f "$WORK/debs/${1}_${VERSION}_${ARCH}.deb" Depends | tr ',' '\n' | sed 's/^ *//'; }
contents() { dpkg-deb -c "$WORK/debs/${1}_${VERSION}_${ARCH}.deb" | awk '{print $6}' | sed 's|^\.||'; }
expect_depends() { # PACKAGE DEPENDENCY-REGEX...
  local p=$1
  shift
  for d in "$@"; do
    depends "$p" | grep -Exc "$d" >/dev/null || fail "$p does not depend on /$d/: $(depends "$p" | paste -sd,)"
  done
}
expect_depends libextproc0 'libc6( .*)?' 'libnghttp2-14( .*)?' 'libuv1( .*)?' 'libprotobuf-c1( .*)?' 'libmicrohttpd12( .*)?' 'libssl3( .*)?'
expect_depends libextproc-dev "libextproc0 \(= $VERSION\)" libnghttp2-dev libuv1-dev libprotobuf-c-dev libmicrohttpd-dev libssl-dev
expect_depends extproc-tools 'libc6( .*)?' 'libssl3( .*)?' 'libcjson1( .*)?' 'libnghttp2-14( .*)?'
pass "dependencies: libextproc0: $(depends libextproc0 | paste -sd' ')"
pass "dependencies: libextproc-dev: $(depends libextproc-dev | paste -sd' ')"
pass "dependencies: extproc-tools: $(depends extproc-tools | paste -sd' ')"

LIBDIR=/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)
runtime_files=$(contents libextproc0 | grep -v '/$' | sort | paste -sd' ')
[ "$runtime_files" = "$LIBDIR/libextproc.so.0 $LIBDIR/libextproc.so.$VERSION" ] ||
  fail "libextproc0 holds: $runtime_files"
dev_files=$(contents libextproc-dev)
for f in /usr/include/extproc/extproc.h "$LIBDIR/libextproc.a" "$LIBDIR/libextproc.so" \
  "$LIBDIR/pkgconfig/libextproc.pc" "$LIBDIR/cmake/libextproc/libextprocConfig.cmake" \
  "$LIBDIR/cmake/libextproc/libextprocConfigVersion.cmake"; do
  grep -qx "$f" <<<"$dev_files" || fail "libextproc-dev lacks $f"
done
! grep -q 'pb-c' <<<"$dev_files" || fail "libextproc-dev holds generated protobuf-c headers"
tools_files=$(contents extproc-tools | grep -v '/$' | sort | paste -sd' ')
[ "$tools_files" = "/usr/bin/extproc-examples /usr/bin/extproc-load /usr/bin/extproc-test \
/usr/share/man/man1/extproc-examples.1.gz /usr/share/man/man1/extproc-load.1.gz \
/usr/share/man/man1/extproc-test.1.gz" ] ||
  fail "extproc-tools holds: $tools_files"
pass "package contents"

# ---- install ---------------------------------------------------------------------------
remove_packages # left over by an interrupted run
log "installing with apt"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${DEBS[@]}" >"$WORK/apt.log" 2>&1 ||
  fail "apt-get install failed: $(tail -5 "$WORK/apt.log")"
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status} ${Version}' "$p" | grep -xc "install ok installed $VERSION" >/dev/null ||
    fail "$p is not installed"
done
pass "apt installed the packages"

soname=$(readelf -d "$LIBDIR/libextproc.so.0" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = libextproc.so.0 ] || fail "SONAME is '$soname'"
[ "$(readlink "$LIBDIR/libextproc.so")" = libextproc.so.0 ] || fail "libextproc.so link"
[ "$(ldconfig -p | grep -c "libextproc.so.0 ")" -ge 1 ] || fail "ldconfig does not know libextproc.so.0"
[ "$(cd /usr/include/extproc && ls)" = "$(cd "$REPO/include/extproc" && ls)" ] ||
  fail "installed headers differ from include/extproc"
[ "$(pkg-config --modversion libextproc)" = "$VERSION" ] || fail "pkg-config --modversion"
pkg-config --exists --print-errors libextproc
pass "library $soname, headers, pkg-config $VERSION"

for prog in extproc-examples extproc-load extproc-test; do
  page=$(man -w "$prog") || fail "no man page for $prog"
  text=$(zcat "$page")
  flags=$("$prog" --help | grep -oE -- '--[a-z][a-z-]*' | sort -u)
  [ -n "$flags" ] || fail "$prog --help lists no flag"
  for flag in $flags; do
    grep -qF -- "${flag//-/\\-}" <<<"$text" || fail "$page does not document $flag"
  done
  pass "$prog: man page $page documents $(echo $flags | wc -w) flags"
done

# ---- a processor built outside the tree ------------------------------------------------
SRC=$WORK/outside # under mktemp's directory: nothing of the source tree is reachable from it
mkdir "$SRC"
cp "$REPO/tests/package/outside/processor.c" "$REPO/tests/package/outside/CMakeLists.txt" "$SRC/"
cd "$SRC"
needs() { readelf -d "$1" | grep -c "NEEDED.*\[$2\]" >/dev/null; }

cc -std=c11 -Wall -Wextra -Werror processor.c $(pkg-config --cflags --libs libextproc) \
  -o processor-pc >"$WORK/cc.log" 2>&1 || fail "cc with pkg-config: $(cat "$WORK/cc.log")"
needs processor-pc libextproc.so.0 || fail "processor-pc does not use libextproc.so.0"
# (/lib is /usr/lib on Debian, and ldconfig may name either.)
ldd processor-pc | grep -Ec "libextproc.so.0 => (/usr)?${LIBDIR#/usr}/libextproc.so.0" >/dev/null ||
  fail "ldd processor-pc: $(ldd processor-pc | grep extproc)"
static_libs=$(pkg-config --static --libs libextproc | sed 's/-lextproc\b//')
cc -std=c11 -Wall -Wextra -Werror processor.c $(pkg-config --cflags libextproc) \
  -Wl,-Bstatic -lextproc -Wl,-Bdynamic $static_libs -o processor-pc-static >"$WORK/cc.log" 2>&1 ||
  fail "cc with pkg-config --static: $(cat "$WORK/cc.log")"
! needs processor-pc-static libextproc.so.0 || fail "processor-pc-static uses libextproc.so"
pass "built with pkg-config (shared, and --static: $(pkg-config --static --libs libextproc))"

cmake -S . -B build -DEXTPROC_WANT_VERSION=0.1 >"$WORK/outside-cmake.log" 2>&1 ||
  fail "find_package(libextproc 0.1): $(tail -20 "$WORK/outside-cmake.log")"
cmake --build build >>"$WORK/outside-cmake.log" 2>&1 || fail "cmake --build of the outside processor"
needs build/processor libextproc.so.0 || fail "libextproc::extproc is not the shared library"
! needs build/processor-static libextproc.so.0 || fail "libextproc::extproc_static links libextproc.so"
if cmake -S . -B build-v1 -DEXTPROC_WANT_VERSION=1.0 >"$WORK/outside-cmake-v1.log" 2>&1; then
  fail "find_package(libextproc 1.0) accepted version $VERSION"
fi
grep -q "libextprocConfig.cmake, version: $VERSION" "$WORK/outside-cmake-v1.log" ||
  fail "find_package(libextproc 1.0) failed for another reason: $(tail -20 "$WORK/outside-cmake-v1.log")"
pass "built with find_package(libextproc) (shared and static targets; 1.0 refused)"

# ---- behind Envoy ----------------------------------------------------------------------
read -r LISTEN ADMIN PROC < <(free_ports 3 | paste -sd' ')
start_envoy "$WORK" "$LISTEN" "$ADMIN" "$PROC"
PIDS+=("$ENVOY_PID")
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://127.0.0.1:$LISTEN/")
[ "$code" = 500 ] || fail "without a processor Envoy answered $code, expected 500"
pass "Envoy on $LISTEN fails requests while no processor listens on $PROC"

serve() { # TAG COMMAND...: runs a processor on $PROC until it accepts connections
  local tag=$1
  shift
  "$@" >"$WORK/$tag.log" 2>&1 &
  PROC_PID=$!
  PIDS+=("$PROC_PID")
  proc_up() {
    kill -0 "$PROC_PID" 2>/dev/null || fail "$tag exited: $(cat "$WORK/$tag.log")"
    can_connect "$PROC"
  }
  wait_until 10 "$tag on port $PROC" proc_up
}
stop_processor() { # TAG: SIGTERM; it must exit with 0
  stop_pid "$PROC_PID"
  [ "$STOP_RC" -eq 0 ] || fail "$1 exited with $STOP_RC: $(tail -5 "$WORK/$1.log")"
}

for variant in processor-pc processor-pc-static build/processor build/processor-static; do
  tag=$(basename "$variant")
  serve "$tag" "./$variant" "127.0.0.1:$PROC" "$tag"
  path="/check/$tag/$RANDOM"
  got=$(response_header "$LISTEN" "$path" x-outside)
  [ "$got" = "$tag GET $path" ] || fail "$tag: x-outside is '$got', expected '$tag GET $path'"
  stop_processor "$tag"
  pass "$variant behind Envoy: x-outside: $got"
done

serve extproc-examples /usr/bin/extproc-examples --service "trivial@127.0.0.1:$PROC"
id="pkg-test-$RANDOM"
got=$(response_header "$LISTEN" /trivial x-extra-request-id -H "x-request-id: $id")
[ "$got" = "$id" ] || fail "installed extproc-examples: x-extra-request-id is '$got', expected '$id'"
stop_processor extproc-examples
pass "installed extproc-examples (trivial) behind Envoy: x-extra-request-id: $got"

stop_pid "$ENVOY_PID"

# ---- removal ---------------------------------------------------------------------------
cd /
remove_packages
for p in "${PACKAGES[@]}"; do
  ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -c "ok installed" >/dev/null || fail "$p still installed"
done
[ ! -e "$LIBDIR/libextproc.so.0" ] && [ ! -e /usr/include/extproc ] || fail "files left after purge"
pass "packages removed"

log "$checks checks passed in ${SECONDS}s"
