#!/usr/bin/env bash
# Install bubblewrap >= 0.8.0 on a node that grades code: the code grader's sandbox needs it (--size for
# its capped tmpfs, --disable-userns; `format.code.backend: auto` refuses an older bwrap in one line).
# Debian 12 and Ubuntu 24.04 ship a recent enough one (apt); Ubuntu 22.04 ships 0.6, so there it is built
# from the release's source (meson) into /usr/local/bin (it links glibc and libcap: run it where it was built,
# or on the same OS release).
# Needs root or passwordless sudo. Idempotent: does nothing when a recent enough bwrap is on PATH.
#   scripts/install_bwrap.sh                  # into /usr/local/bin (or apt's /usr/bin)
#   BWRAP_DEST=/out scripts/install_bwrap.sh  # build only, copy the binary to /out (a container init step)
set -euo pipefail

NEED=0.8.0
VERSION=${BWRAP_VERSION:-0.8.0}
GIT=${BWRAP_GIT:-https://github.com/containers/bubblewrap}   # or a mirror of it
DEST=${BWRAP_DEST:-}

at_least() { [ "$(printf '%s\n%s\n' "$NEED" "$1" | sort -V | head -n1)" = "$NEED" ]; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"

if [ -z "$DEST" ] && command -v bwrap >/dev/null 2>&1; then
  have="$(bwrap --version | awk '{print $2}')"
  if at_least "$have"; then
    echo "bubblewrap $have: ok (the sandbox needs >= $NEED)"
    exit 0
  fi
fi
command -v apt-get >/dev/null 2>&1 || { echo "error: no apt-get: install bubblewrap >= $NEED with this system's package manager" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
candidate="$(apt-cache policy bubblewrap | awk '/Candidate:/ {print $2}' | sed 's/^[0-9]*://; s/-.*//')"
if [ -z "$DEST" ] && [ -n "$candidate" ] && [ "$candidate" != "(none)" ] && at_least "$candidate"; then
  $SUDO apt-get install -y -q bubblewrap >/dev/null
else
  [ -n "$DEST" ] || echo "bubblewrap from apt is ${candidate:-missing} (< $NEED): building $VERSION from source" >&2
  $SUDO apt-get install -y -q --no-install-recommends ca-certificates git gcc libc6-dev meson ninja-build \
    pkg-config libcap-dev >/dev/null
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  git -c advice.detachedHead=false clone -q --depth 1 --branch "v$VERSION" "$GIT" "$work/src"
  meson setup "$work/build" "$work/src" -Dman=disabled -Dtests=false -Dselinux=disabled \
    -Dbash_completion=disabled -Dzsh_completion=disabled >/dev/null
  ninja -C "$work/build" bwrap >/dev/null || { ninja -C "$work/build" bwrap; exit 1; }
  if [ -n "$DEST" ]; then
    install -m 0755 "$work/build/bwrap" "$DEST/bwrap"
    "$DEST/bwrap" --version
    exit 0
  fi
  $SUDO install -m 0755 "$work/build/bwrap" /usr/local/bin/bwrap
fi
hash -r
echo "$(bwrap --version): installed (the sandbox needs >= $NEED)"
