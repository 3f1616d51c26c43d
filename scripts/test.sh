#!/usr/bin/env bash
# Runs every test: formatting, then the whole suite twice, on a normal build and on one with
# AddressSanitizer + UndefinedBehaviorSanitizer. Each pass runs the C unit tests (ctest) and
# the Python tests (real Envoy in the loop, and the proto wire-compatibility check) against
# that build's binaries. The normal pass also generates the API reference, where any Doxygen
# warning is an error. Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== clang-format"
mapfile -t sources < <(git ls-files '*.c' '*.h' 2>/dev/null || find include src examples tests tools -name '*.[ch]')
clang-format --dry-run --Werror "${sources[@]}"

echo "== layers"
python3 scripts/check_layers.py

run_pass() {
  local dir=$1
  shift
  echo "== build $dir ($*)"
  cmake -S . -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$(nproc)"
  echo "== unit tests ($dir)"
  (cd "$dir" && ctest --output-on-failure)
  echo "== Envoy-in-the-loop and proto tests ($dir)"
  EXTPROC_EXAMPLES="$PWD/$dir/examples/extproc-examples" .venv/bin/python -m pytest -q tests
}

run_pass build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DEXTPROC_DOCS=ON

echo "== API reference (Doxygen; a warning fails)"
cmake --build build --target docs

# Sanitizer reports end the process with an error, so any leak or UB fails its test.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
run_pass build-asan -DCMAKE_BUILD_TYPE=Debug -DEXTPROC_SANITIZE=ON

echo "== all tests passed (normal and sanitized builds)"
