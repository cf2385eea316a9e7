#!/usr/bin/env bash
# Build the husk guest kernel: an uncompressed ELF vmlinux (entered via PVH by husk-vmm),
# from Debian's linux-source-6.1 + guest-image/kernel.config merged onto tinyconfig.
#
# Cache (outside the tree; override the root with HUSK_CACHE_DIR, default /var/cache/husk):
#   guest-kernel/src-<debver>/            unpacked source (read-only use; shared)
#   guest-kernel/obj-<debver>/            out-of-tree build dir (O=); reused so that a changed
#                                         fragment rebuilds incrementally, not from scratch
#   guest-kernel/<debver>-<sha256(fragment)[:12]>/
#                                         finished result for that key: vmlinux, gen_init_cpio,
#                                         config, build-seconds; a second run with the same key
#                                         just reuses it
# Outputs: build/guest/vmlinux, build/guest/gen_init_cpio (copies; OUT_DIR overrides the dir).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
frag=$here/kernel.config
out_dir=${OUT_DIR:-$repo/build/guest}
cache_root=${HUSK_CACHE_DIR:-/var/cache/husk}/guest-kernel
src_pkg=linux-source-6.1
jobs=${JOBS:-$(nproc)}

log() { echo "build-kernel: $*" >&2; }
die() { echo "build-kernel: ERROR: $*" >&2; exit 1; }

ensure_apt_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing packages ${missing[*]} (run as root or: apt-get install ${missing[*]})"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
  fi
}

ensure_apt_packages "$src_pkg" bc flex bison libelf-dev libssl-dev make gcc xz-utils
tarball=/usr/src/$src_pkg.tar.xz
[ -f "$tarball" ] || die "$tarball not found (package $src_pkg installed?)"
ver=$(dpkg-query -W -f='${Version}' "$src_pkg")
hash=$(sha256sum "$frag" | cut -c1-12)
key=$ver-$hash
src=$cache_root/src-$ver
obj=$cache_root/obj-$ver
res=$cache_root/$key

mkdir -p "$cache_root" "$out_dir"
exec 9>"$cache_root/.lock"
flock 9    # one kernel build at a time on this machine

publish() {
  cp -f "$res/vmlinux" "$out_dir/vmlinux.tmp" && mv -f "$out_dir/vmlinux.tmp" "$out_dir/vmlinux"
  cp -f "$res/gen_init_cpio" "$out_dir/gen_init_cpio.tmp" && mv -f "$out_dir/gen_init_cpio.tmp" "$out_dir/gen_init_cpio"
  cp -f "$res/config" "$out_dir/vmlinux.config"
  log "vmlinux: $out_dir/vmlinux ($(stat -c %s "$out_dir/vmlinux") bytes)"
}

if [ -f "$res/.done" ]; then
  log "reusing cached kernel $res (source $src_pkg $ver, fragment sha256 $hash)"
  publish
  exit 0
fi

if [ ! -f "$src/.husk-unpacked" ]; then
  log "unpacking $tarball into $src"
  rm -rf "$src" "$src.tmp"
  mkdir -p "$src.tmp"
  tar -xJf "$tarball" -C "$src.tmp" --strip-components=1
  touch "$src.tmp/.husk-unpacked"
  mv "$src.tmp" "$src"
fi

mkdir -p "$obj"
export KBUILD_BUILD_USER=husk KBUILD_BUILD_HOST=husk
mk() { nice -n 10 make -s -C "$src" O="$obj" "$@"; }

log "configuring: tinyconfig + $(basename "$frag") + olddefconfig (in $obj)"
mk tinyconfig >/dev/null
# merge_config.sh -m: merge only, leave dependency resolution to olddefconfig below
(cd "$obj" && "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$frag" >/dev/null)
mk olddefconfig
"$here/check-config.sh" "$frag" "$obj/.config"

log "building vmlinux with -j$jobs (full build ~7 min on 2 cores; incremental if $obj has a previous build)"
start=$(date +%s)
# make -s is silent for minutes: say every 30 s that it is still going, and how far.
# (its sleep is killed with it, so no stray child keeps our stderr open)
( nap=; trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  while :; do
    sleep 30 & nap=$!; wait "$nap"
    log "still building: $(( $(date +%s) - start ))s, $(find "$obj" -name '*.o' 2>/dev/null | wc -l) objects so far"
  done ) &
ticker=$!
trap 'kill "$ticker" 2>/dev/null || true' EXIT
mk -j"$jobs" vmlinux
kill "$ticker" 2>/dev/null || true
# gen_init_cpio is a host tool; it is built as part of usr/ but make sure it exists
[ -x "$obj/usr/gen_init_cpio" ] || mk usr/gen_init_cpio
[ -x "$obj/usr/gen_init_cpio" ] || die "usr/gen_init_cpio was not built"
secs=$(( $(date +%s) - start ))

rm -rf "$res.tmp"; mkdir -p "$res.tmp"
cp "$obj/vmlinux" "$res.tmp/vmlinux"
cp "$obj/usr/gen_init_cpio" "$res.tmp/gen_init_cpio"
cp "$obj/.config" "$res.tmp/config"
cp "$frag" "$res.tmp/kernel.config"
echo "$secs" > "$res.tmp/build-seconds"
touch "$res.tmp/.done"
rm -rf "$res"; mv "$res.tmp" "$res"
log "built in ${secs}s -> $res"
# keep the 5 most recent results (20 MB each); the src/obj dirs are shared and stay
ls -dt "$cache_root/$ver"-*/ 2>/dev/null | tail -n +6 | xargs -r rm -rf
publish
