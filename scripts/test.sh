#!/usr/bin/env bash
# Runs every test: formatting, then the whole suite twice, on a normal build and on one with
# AddressSanitizer + UndefinedBehaviorSanitizer. Each pass runs the C unit tests (ctest) and
# the Python tests (real Envoy in the loop, and the proto wire-compatibility check) against
# that build's binaries; the normal pass also generates the API reference, where any Doxygen
# warning is an error. After the normal pass, once: the Debian packages (built, installed
# with apt, used, removed) and the container image. A third, shorter pass builds with
# ThreadSanitizer and runs the C unit tests and the Python tests where threads meet (several
# workers, deferred answers resumed from other threads, many concurrent streams). Installs what
# it needs first (scripts/setup.sh); the package test needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
# The scenario files run through every Envoy release from 1.36 (one virtualenv each), and
# against two ext_proc servers that are not ours (the Python SDK, and one on grpc-go: needs Go).
scripts/setup_envoy_versions.sh
scripts/foreign_servers.sh setup

echo "== clang-format"
mapfile -t sources < <(git ls-files '*.c' '*.h' 2>/dev/null || find include src examples tests tools -name '*.[ch]')
clang-format --dry-run --Werror "${sources[@]}"

echo "== layers"
python3 scripts/check_layers.py

# run_pass DIR CMAKE_ARGS...: builds DIR, then runs the unit tests and the Python tests
# (PYTEST_ARGS, default all of them) with RUN (a command prefix, default none) in front.
RUN=()
PYTEST_ARGS=(tests)
build_pass() {
  local dir=$1
  shift
  echo "== build $dir ($*)"
  cmake -S . -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)"
}
test_pass() {
  local dir=$1
  echo "== unit tests ($dir)"
  (cd "$dir" && "${RUN[@]}" ctest --output-on-failure)
  echo "== Envoy-in-the-loop and proto tests ($dir)"
  EXTPROC_EXAMPLES="$PWD/$dir/examples/extproc-examples" \
    "${RUN[@]}" .venv/bin/python -m pytest -q "${PYTEST_ARGS[@]}"
}
run_pass() {
  build_pass "$@"
  test_pass "$1"
}

run_pass build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEXTPROC_DOCS=ON

echo "== API reference (Doxygen; a warning fails)"
cmake --build build --target docs

# Once, outside the sanitizer pass: the Debian packages installed and used from outside the
# tree, and the container image, each behind Envoy.
echo "== packages (tests/package/test_packages.sh)"
tests/package/test_packages.sh build-pkg
echo "== container image (tests/package/test_container.sh)"
tests/package/test_container.sh

# Sanitizer reports end the process with an error, so any leak or UB fails its test.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run_pass build-asan -DCMAKE_BUILD_TYPE=Debug -DEXTPROC_SANITIZE=ON

# ThreadSanitizer: the first report ends the process with exit code 66, which fails its test
# (ctest, or the Python fixture that checks the processor's exit code).
export TSAN_OPTIONS=halt_on_error=1:exitcode=66:second_deadlock_stack=1
tsan_started=$SECONDS
build_pass build-tsan -DCMAKE_BUILD_TYPE=Debug -DEXTPROC_SANITIZE_THREAD=ON
# TSan maps its shadow memory at fixed addresses; on kernels whose mmap randomization reaches
# into them (large vm.mmap_rnd_bits) its runtime refuses to start. Without ASLR it always fits.
if ! build-tsan/tests/test_arena >/dev/null 2>&1; then
  if setarch "$(uname -m)" -R build-tsan/tests/test_arena >/dev/null 2>&1; then
    echo "== ThreadSanitizer needs ASLR off here: running the pass under setarch -R"
    RUN=(setarch "$(uname -m)" -R)
  else
    build-tsan/tests/test_arena # show why
    exit 1
  fi
fi
# Threads meet in the processor's workers (four, whatever the CPU count), in deferred answers
# resumed from other threads, at shutdown, in the auth processor's key reloads and in the access
# log's writer thread (also with all nine processors in one runner, the demo's use-case chain),
# and in extproc-test playing scenarios on several threads.
# The chain's 2000-request run is left out: its 0.2 s message_timeout is about speed, which TSan
# takes away, not about threads.
export EXTPROC_WORKERS=4
PYTEST_ARGS=(
  "tests/e2e/test_trivial_envoy.py::test_500_requests_at_concurrency_50"
  "tests/e2e/test_trivial_envoy.py::test_processor_exits_zero_on_signal"
  "tests/e2e/test_protocol_envoy.py::test_override_message_timeout_gives_slow_work_time"
  "tests/e2e/test_loadgen.py::test_shape[headers]"
  "tests/e2e/test_loadgen.py::test_shape[full]"
  "tests/e2e/test_drain_envoy.py"
  "tests/e2e/test_auth_envoy.py::test_keys_rotate_while_load_runs"
  "tests/e2e/test_access_log_envoy.py"
  "tests/e2e/test_usecase_chain_envoy.py"
  "tests/e2e/test_extproc_test_cli.py::test_many_scenarios_in_parallel"
)
test_pass build-tsan
unset EXTPROC_WORKERS
echo "== TSan pass: $((SECONDS - tsan_started)) s"

echo "== all tests passed (normal, ASan + UBSan and TSan builds)"
