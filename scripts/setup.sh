#!/usr/bin/env bash
# Installs everything libextproc needs to build, test and run its demo on Debian 12 or
# Ubuntu 22.04+: the distro packages (among them dpkg-dev and file for cpack's Debian packages,
# man-db for the man pages, podman and runc for the container image, doxygen for the API
# reference), then a project-local
# virtualenv (.venv) holding the pinned Envoy binary and the Python test tools. Safe to run
# again: it only does missing work.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  build-essential cmake pkg-config clang-format
  libnghttp2-dev libuv1-dev libssl-dev libprotobuf-c-dev protobuf-c-compiler
  libprotobuf-dev protobuf-compiler libcmocka-dev libcjson-dev libmicrohttpd-dev libjwt-dev
  python3 python3-venv curl cargo doxygen openssl
  dpkg-dev file man-db groff-base podman runc
  redis-server libhiredis-dev libyaml-dev
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# cargo may come from rustup instead of Debian; either is fine.
if command -v cargo >/dev/null 2>&1; then
  missing=("${missing[@]/cargo/}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The virtualenv is rebuilt when requirements.txt changes.
if [ ! -x .venv/bin/python ] || ! cmp -s requirements.txt .venv/.requirements; then
  echo "setup: creating .venv (pinned Envoy and test tools)"
  rm -rf .venv
  /usr/bin/python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  cp requirements.txt .venv/.requirements
fi
