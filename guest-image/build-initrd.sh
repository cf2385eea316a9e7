#!/usr/bin/env bash
# Build the husk guest initramfs: an uncompressed newc cpio whose /init is the static agent.
# Made with the kernel's own usr/gen_init_cpio from a spec file, so it needs no root
# (device nodes and ownership come from the spec, not from the filesystem).
# Usage: build-initrd.sh AGENT_BINARY [OUT]    (OUT defaults to build/guest/initrd.img)
# gen_init_cpio is looked up in $GEN_INIT_CPIO, build/guest/gen_init_cpio (put there by
# build-kernel.sh), then the guest-kernel cache.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
die() { echo "build-initrd: ERROR: $*" >&2; exit 1; }

agent=${1:?usage: build-initrd.sh AGENT_BINARY [OUT]}
out=${2:-$repo/build/guest/initrd.img}
[ -f "$agent" ] || die "agent binary $agent not found"
agent=$(readlink -f "$agent")

# The guest has no dynamic loader or libc: /init must be a static executable.
if ! head -c 4 "$agent" | grep -q "ELF"; then
  die "$agent is not an ELF executable"
fi
if readelf -lW "$agent" 2>/dev/null | grep -q "Requesting program interpreter"; then
  die "$agent is dynamically linked ($(readelf -lW "$agent" | sed -n 's/.*interpreter: \(.*\)]/\1/p')); build it with RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu"
fi

gic=${GEN_INIT_CPIO:-}
if [ -z "$gic" ]; then
  for c in "$repo/build/guest/gen_init_cpio" $(ls -td "${HUSK_CACHE_DIR:-/var/cache/husk}"/guest-kernel/*/gen_init_cpio 2>/dev/null); do
    [ -x "$c" ] && { gic=$c; break; }
  done
fi
[ -n "$gic" ] && [ -x "$gic" ] || die "gen_init_cpio not found: run guest-image/build-kernel.sh first (or set GEN_INIT_CPIO)"

mkdir -p "$(dirname "$out")"
spec=$(mktemp); stage=$(mktemp)
trap 'rm -f "$spec" "$stage" "$out.tmp"' EXIT
# a copy with a fixed mtime, so the same agent always gives a byte-identical image
cp "$agent" "$stage"; touch -d @0 "$stage"
cat > "$spec" <<SPEC
# husk guest initramfs (gen_init_cpio spec)
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
# Rust's runtime opens /dev/null for closed stdio before main(); without a console the
# kernel starts /init with fds 0-2 closed, and a failed open would abort PID 1.
nod /dev/null 0666 0 0 c 1 3
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /run 0755 0 0
dir /tmp 1777 0 0
dir /etc 0755 0 0
file /init $stage 0755 0 0
SPEC
# -t 0: fixed mtime for the directories and nodes too
"$gic" -t 0 "$spec" > "$out.tmp"
mv -f "$out.tmp" "$out"
echo "build-initrd: $out ($(stat -c %s "$out") bytes, /init = $agent)" >&2
