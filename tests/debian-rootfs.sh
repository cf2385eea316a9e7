#!/usr/bin/env bash
# Builds (once) a minimal Debian bookworm rootfs with debootstrap for the VM tests, cached
# outside the tree: ${HUSK_CACHE_DIR:-/var/cache/husk}/debian-rootfs-bookworm-build. Prints its
# path. minbase plus a C toolchain (gcc, libc6-dev, make): the CI-job test builds in it.
set -euo pipefail
cache=${HUSK_CACHE_DIR:-/var/cache/husk}
out=$cache/debian-rootfs-bookworm-build
if [ -x "$out/bin/bash" ] && [ -f "$out/etc/os-release" ] && [ -x "$out/usr/bin/gcc" ]; then
  echo "$out"; exit 0
fi
if ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
mirror=${HUSK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache"
rm -rf "$out.tmp"
echo "debian-rootfs: debootstrap --variant=minbase --include=gcc,libc6-dev,make bookworm from $mirror" >&2
debootstrap --variant=minbase --include=gcc,libc6-dev,make bookworm "$out.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
  || { tail -20 "$cache/debootstrap.log" >&2; echo "debian-rootfs: debootstrap failed" >&2; exit 1; }
rm -rf "$out"; mv "$out.tmp" "$out"
echo "$out"
