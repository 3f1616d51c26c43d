#!/usr/bin/env bash
# Fetches Envoy's official .proto files, as carried by the Rust crate envoy-types (pinned
# version and sha256 below), and prints the path of their proto root.
#
#   usage: fetch_official.sh OUTPUT_DIR
#
# Only the ordinary cargo client touches the registry: `cargo install` of a library-only
# crate downloads that one .crate into cargo's cache and then stops with "nothing to install"
# (no dependencies are resolved, so this also works with old cargo releases). We ignore that
# expected error and trust only the sha256 of the file it left in the cache. A second run
# finds the extracted tree and returns at once, without calling cargo.
set -euo pipefail

CRATE=envoy-types
VERSION=0.7.7
SHA256=e1fdd3fa7e8347872dd5d6e8626441589f0fd87d7fcf3003a4cca2103ecc39c0

out=${1:?usage: $0 OUTPUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
dest="$out/$CRATE-$VERSION"
stamp="$dest/.sha256"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$SHA256" ] && [ -d "$dest/proto" ]; then
  echo "$dest/proto"
  exit 0
fi

# Prints the cached .crate whose sha256 matches the pin, if cargo's cache has one.
find_crate() {
  local f
  for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$CRATE-$VERSION.crate"; do
    [ -f "$f" ] || continue
    if [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$SHA256" ]; then
      echo "$f"
      return 0
    fi
    echo "fetch_official: $f does not match the pinned sha256" >&2
  done
  return 1
}

if ! crate=$(find_crate); then
  command -v cargo >/dev/null || { echo "fetch_official: cargo not found" >&2; exit 1; }
  log="$out/cargo-install.log"
  # Run outside any project so no local .cargo/config applies; --root keeps nothing installed.
  # Try the local cache first, then the registry; both end in the expected error.
  cd "$out"
  : >"$log"
  for mode in --offline ""; do
    cargo install $mode "$CRATE" --version "=$VERSION" --root "$out/.cargo-root" >>"$log" 2>&1 || true
    find_crate >/dev/null 2>&1 && break
  done
  rm -rf "$out/.cargo-root"
  crate=$(find_crate) || {
    echo "fetch_official: could not obtain $CRATE $VERSION with the pinned sha256; cargo said:" >&2
    cat "$log" >&2
    exit 1
  }
fi

tmp=$(mktemp -d "$out/.extract.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
tar -xzf "$crate" -C "$tmp" "$CRATE-$VERSION/proto"
echo "$SHA256" >"$tmp/$CRATE-$VERSION/.sha256"
rm -rf "$dest"
mv "$tmp/$CRATE-$VERSION" "$dest"
echo "$dest/proto"
