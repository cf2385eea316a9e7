#!/usr/bin/env bash
# husk KVM test host: run a command where real (nested) KVM guests can run, on a machine
# whose own /dev/kvm cannot boot an ordinary Linux guest (PVM) or has no KVM at all.
#
# It boots Debian's generic kernel (linux-image-amd64) under QEMU TCG with an emulated AMD
# CPU that has SVM + nested paging, so kvm-amd loads inside and /dev/kvm there runs real
# guests (~10x slower than native). The host's / is shared read-only over 9p; /tmp and /run
# are fresh tmpfs; cgroup2 is mounted on /sys/fs/cgroup. CMD runs chrooted into the host root,
# in the current working directory, with stdin </dev/null; its output streams to our stdout
# and its exit status becomes ours.
#
# Usage: run.sh [--mem MB] [--cpus N] [--timeout S] [--verbose] -- CMD [ARGS...]
#   defaults: --mem 4096 --cpus 2 --timeout 3600 (env KVM_TEST_HOST_MEM/_CPUS/_TIMEOUT)
#   passed into CMD's environment: PATH, TERM, HOME, USER, LANG, LC_ALL, all HUSK_*, RUST_LOG, RUST_BACKTRACE,
#   CARGO_TERM_COLOR, NO_COLOR, plus any names listed in KVM_TEST_HOST_ENV="VAR1 VAR2".
#   Inside, HUSK_IN_TEST_HOST=1 is set. KVM_TEST_HOST_NPT=1 gives kvm-amd nested paging (see below).
# Exit status: CMD's; 124 on timeout; 125 if the test host itself failed (reason printed);
# 126 if the test host stalled or its kernel panicked (TCG nested-virtualization failures;
# tests/vm-run.sh retries).
# Caches the test-host kernel + modules in ${HUSK_CACHE_DIR:-/var/cache/husk}/test-host/.
set -euo pipefail

mem=${KVM_TEST_HOST_MEM:-4096}; cpus=${KVM_TEST_HOST_CPUS:-2}; tmo=${KVM_TEST_HOST_TIMEOUT:-3600}
verbose=${KVM_TEST_HOST_VERBOSE:-0}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "kvm-test-host: ERROR: $*" >&2; exit 125; }
log() { echo "kvm-test-host: $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --mem) mem=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --timeout) tmo=$2; shift 2 ;;
    --verbose|-v) verbose=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    -*) echo "kvm-test-host: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || usage
[ "$(id -u)" = 0 ] || die "must run as root (installs packages, caches in /var/cache, shares / over 9p)"

cwd=$(pwd -P)
case "$cwd/" in
  /tmp/*|/run/*) die "the working directory $cwd is under /tmp or /run, which are fresh tmpfs inside the test host; run from elsewhere" ;;
esac

ensure_apt_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null || true
    apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
  fi
}
ensure_apt_packages qemu-system-x86 busybox-static cpio xz-utils kmod
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after install"

# ---- test-host kernel + modules (cached per Debian kernel package) ---------------------------
cache=${HUSK_CACHE_DIR:-/var/cache/husk}/test-host
mkdir -p "$cache"
# Modules to load, in this order (dependencies are resolved from modules.dep as well).
# The networking line is what container networking in the tests needs: podman's netavark
# (bridge, veth, iptables-nft NAT and port forwarding), husk's tap + tc redirect (tun,
# sch_ingress, cls_u32, act_mirred), and a dummy link standing in for the host's own address.
# crc32c_generic before nf_conntrack: its libcrc32c asks the crypto API for crc32c at load,
# and nothing here runs modprobe to load it on demand.
wanted="virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio virtio_pci 9pnet 9pnet_virtio
  netfs fscache 9p overlay irqbypass kvm ccp kvm-amd tun vsock vmw_vsock_virtio_transport_common
  vhost_iotlb vhost vhost_vsock fuse
  bridge br_netfilter veth dummy sch_ingress cls_u32 act_mirred nfnetlink crc32c_generic nf_conntrack nf_nat
  nf_tables nft_compat nft_chain_nat nft_ct nft_nat nft_masq nft_redir nft_reject_inet
  xt_addrtype xt_comment xt_conntrack xt_MASQUERADE xt_mark xt_nat xt_tcpudp xt_multiport
  ip_tables iptable_nat iptable_filter ip6_tables ip6table_nat ip6table_filter"
required="9p 9pnet_virtio virtio_pci kvm kvm-amd"

kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
if [ -z "$kpkg" ]; then
  apt-get update -qq >/dev/null || true
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
fi
if [ -z "$kpkg" ]; then
  # offline: fall back to whatever was cached last
  kdir=$(ls -d "$cache"/linux-image-*/ 2>/dev/null | tail -1 || true)
  [ -n "$kdir" ] || die "cannot resolve linux-image-amd64 (no apt lists, no network?) and nothing is cached in $cache"
  kdir=${kdir%/}
else
  # Keyed by the module list too: a cache made before a module was added lacks it.
  kdir=$cache/$kpkg-$(echo "$wanted" | sha256sum | cut -c1-12)
fi

exec 8>"$cache/.lock"; flock 8
if [ ! -f "$kdir/.done" ]; then
  log "fetching $kpkg (test-host kernel) into $kdir"
  rm -rf "$kdir" "$kdir.tmp"; mkdir -p "$kdir.tmp/x"
  (cd "$kdir.tmp" && apt-get download -qq "$kpkg" >/dev/null 2>&1) || { apt-get update -qq >/dev/null || true; (cd "$kdir.tmp" && apt-get download -qq "$kpkg" >/dev/null); } \
    || die "apt-get download $kpkg failed"
  dpkg-deb -x "$kdir.tmp"/linux-image-*.deb "$kdir.tmp/x"
  kroot=$(echo "$kdir.tmp"/x/lib/modules/*)
  # the .deb carries no modules.dep (depmod runs at install time): generate it
  [ -f "$kroot/modules.dep" ] || depmod -b "$kdir.tmp/x" "$(basename "$kroot")" \
    || die "depmod failed for $kpkg (kmod installed?)"
  cp "$kdir.tmp"/x/boot/vmlinuz-* "$kdir.tmp/vmlinuz"
  mkdir -p "$kdir.tmp/mods"
  # resolve dependencies: modules.dep lists each module's deps, deepest last
  declare -A seen=(); order=()
  add() {
    local name=$1 rel deps d
    rel=$(awk -F: -v n="$name" '{f=$1; sub(/.*\//,"",f); sub(/\.ko(\.[a-z]+)?$/,"",f); gsub("-","_",f); m=n; gsub("-","_",m); if (f==m) {print $0; exit}}' "$kroot/modules.dep")
    [ -n "$rel" ] || { log "note: module $name not in $kpkg (built in?)"; return 0; }
    local path=${rel%%:*} key
    key=$(basename "$path"); key=${key%%.ko*}
    [ -n "${seen[$key]:-}" ] && return 0
    deps=${rel#*:}
    for d in $(echo $deps | tr ' ' '\n' | tac); do
      d=$(basename "$d"); add "${d%%.ko*}"
    done
    seen[$key]=1; order+=("$key")
    case "$path" in
      *.ko.xz) xz -dc "$kroot/$path" > "$kdir.tmp/mods/$key.ko" ;;
      *.ko.zst) zstd -qdc "$kroot/$path" > "$kdir.tmp/mods/$key.ko" ;;
      *.ko.gz) gzip -dc "$kroot/$path" > "$kdir.tmp/mods/$key.ko" ;;
      *) cp "$kroot/$path" "$kdir.tmp/mods/$key.ko" ;;
    esac
  }
  for m in $wanted; do add "$m"; done
  printf '%s\n' "${order[@]}" > "$kdir.tmp/mods/order"
  for m in $required; do
    grep -qx "${m}" "$kdir.tmp/mods/order" || grep -qx "${m//-/_}" "$kdir.tmp/mods/order" \
      || die "required module $m is missing from $kpkg"
  done
  rm -rf "$kdir.tmp/x" "$kdir.tmp"/*.deb
  touch "$kdir.tmp/.done"; mv "$kdir.tmp" "$kdir"
fi
flock -u 8

# ---- per-run: shared out dir with the job, initramfs ---------------------------------------------
out=$(mktemp -d /var/tmp/husk-test-host.XXXXXX)
cleanup() { rm -rf "$out"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

{
  echo "#!/bin/bash"
  echo "export HUSK_IN_TEST_HOST=1"
  for v in $(compgen -e); do
    case "$v" in
      PATH|TERM|HOME|USER|LANG|LC_ALL|HUSK_*|RUST_LOG|RUST_BACKTRACE|RUST_LIB_BACKTRACE|CARGO_TERM_COLOR|NO_COLOR) ;;
      *) case " ${KVM_TEST_HOST_ENV:-} " in *" $v "*) ;; *) continue ;; esac ;;
    esac
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  printf 'cd %q || { echo "kvm-test-host: cannot cd to %q inside the test host" >&2; exit 126; }\n' "$cwd" "$cwd"
  printf 'exec'; printf ' %q' "$@"; printf '\n'
} > "$out/job.sh"
chmod +x "$out/job.sh"

ird=$out/initramfs; mkdir -p "$ird"/{bin,proc,sys,dev,mods,host,out,tmp}
cp /bin/busybox "$ird/bin/busybox"
cp "$kdir"/mods/* "$ird/mods/"
mknod -m 600 "$ird/dev/console" c 5 1 2>/dev/null || true
cat > "$ird/init" <<'INIT'
#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc; $B mount -t sysfs sys /sys; $B mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
fail() { echo "$*" > /out/error 2>/dev/null; echo "kvm-test-host: ERROR: $*"; $B sync; $B reboot -f; sleep 5; exit 1; }
for m in $($B cat /mods/order); do
  p=; case $m in kvm) p=report_ignored_msrs=0 ;; esac   # silences the harmless WRMSR(0xc0010007) line
  $B insmod /mods/$m.ko $p 2>/tmp/insmod.err || echo "kvm-test-host: insmod $m: $($B cat /tmp/insmod.err)"
done 2>/dev/null
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out /out || { echo "kvm-test-host: ERROR: cannot mount the out dir"; $B reboot -f; }
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /host || fail "cannot mount the host root over 9p"
[ -c /dev/kvm ] || fail "no /dev/kvm inside the test host: kvm-amd did not load ($($B dmesg | $B grep -i -E 'kvm|svm' | $B tail -3))"
$B mkdir -p /dev/pts /dev/shm /dev/mqueue
# what udev would create: bash process substitution needs /dev/fd
$B ln -sf /proc/self/fd /dev/fd; $B ln -sf /proc/self/fd/0 /dev/stdin; $B ln -sf /proc/self/fd/1 /dev/stdout; $B ln -sf /proc/self/fd/2 /dev/stderr
$B mount -t devpts -o newinstance,ptmxmode=0666,gid=5,mode=620 devpts /dev/pts; $B ln -sf pts/ptmx /dev/ptmx
$B mount -t tmpfs -o mode=1777 shm /dev/shm; $B mount -t mqueue mqueue /dev/mqueue
$B mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2"
for d in proc sys dev; do $B mount --rbind /$d /host/$d || fail "cannot bind /$d"; done
$B mount -t tmpfs -o size=50%,mode=1777 tmp /host/tmp || fail "cannot mount /tmp"
$B mount -t tmpfs -o mode=755 run /host/run || fail "cannot mount /run"
$B mkdir -p /host/run/husk-test-host && $B mount --bind /out /host/run/husk-test-host
$B hostname husk-test-host; $B ip link set lo up
$B stty -F /dev/console -onlcr 2>/dev/null   # plain \n on our stdout
echo "kvm-test-host: up after $($B cut -d' ' -f1 /proc/uptime)s (test-host clock), running the command"
$B chroot /host /bin/bash /run/husk-test-host/job.sh </dev/null
rc=$?
echo $rc > /out/rc
$B sync; $B umount /out 2>/dev/null
echo 0 > /proc/sys/kernel/printk   # no "reboot: Restarting system" line on our stdout
$B reboot -f
INIT
chmod +x "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet) > "$out/initramfs.cpio"
rm -rf "$ird"

# kvm-amd inside uses shadow paging (npt=0), not the emulated nested paging. With NPT, QEMU
# 7.2's TCG (and 10.0's, tried) now and then runs a nested guest on wrong translations: the
# guest takes a not-present #PF fetching its own kernel text and triple-faults (KVM's exit
# trace: reason shutdown, exit_int_info #PF, error code 0x10, at random kernel addresses).
# Measured with 8 microVMs booting at once, 30 rounds each: NPT lost a guest in 3 of 30
# rounds (QEMU 10.0: 9 of 30); shadow paging in none, and it was faster (~20 s vs ~24 s a round).
npt=${KVM_TEST_HOST_NPT:-0}
append="console=ttyS0 reboot=k panic=1 quiet loglevel=3 kvm_amd.npt=$npt"
[ "$verbose" = 1 ] && append="console=ttyS0 reboot=k panic=1 loglevel=7 kvm_amd.npt=$npt"
log "booting test host (QEMU TCG, -cpu EPYC,+svm,+npt, kvm_amd.npt=$npt, -m $mem -smp $cpus, timeout ${tmo}s; kernel $(basename "$kdir"))"
# Rarely (seen ~1 in 50 runs, more often under host load) the TCG-emulated nested SVM wedges
# the test host: its CPUs report soft lockups forever. Echo QEMU's output and, once a lockup
# has lasted 120 s, mark the run as stalled so the watcher below stops QEMU.
stall_filter() {
  local line
  while IFS= read -r line; do
    printf '%s\n' "$line"
    : > "$out/last-output"
    if [[ $line =~ soft\ lockup\ -\ CPU#[0-9]+\ stuck\ for\ ([0-9]+)s ]] && (( BASH_REMATCH[1] >= 120 )); then
      touch "$out/stalled"
    fi
    # The test host's own kernel dying (seen: "stack guard page was hit" in an interrupt
    # taken inside svm_vcpu_run under heavy nested load) is the same class of failure.
    # (The "Kernel panic" line itself is sometimes lost; the oops's closing "Kernel Offset"
    # line before the reboot is not.)
    if [[ $line =~ ^\[\ *[0-9]+\.[0-9]+\]\ (Kernel\ panic\ -\ not\ syncing|Kernel\ Offset:\ ) ]]; then
      : > "$out/host-panic"
    fi
  done
}
# QEMU runs in the background so that it never outlives us: a signal to us stops it, and so
# does the death of whoever started us (e.g. `timeout make ...` kills make, not its children).
parent=$PPID
# -serial stdio needs an fd 0 it can make non-blocking: CI has none, so give it /dev/null
timeout -k 10 "$tmo" qemu-system-x86_64 -M q35 -accel tcg,thread=multi -cpu EPYC,+svm,+npt \
  -m "$mem" -smp "$cpus" -nodefaults -no-user-config -display none -serial stdio -no-reboot \
  -kernel "$kdir/vmlinuz" -initrd "$out/initramfs.cpio" -append "$append" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$out",mount_tag=out,security_model=none,multidevs=remap \
  </dev/null 2> >(grep --line-buffered -v "TCG doesn't support requested feature" >&2) > >(stall_filter) &
qpid=$!
stop_qemu() { kill -TERM "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null; }
trap 'trap "" INT TERM HUP; echo "kvm-test-host: interrupted, stopping QEMU" >&2; stop_qemu; exit 130' INT TERM HUP
# Wedged hard enough that not even the watchdog prints: every command a VM test runs has a
# 180 s deadline, so silence for HUSK_TEST_HOST_SILENCE seconds (default 600) is a stall too.
silence=${HUSK_TEST_HOST_SILENCE:-600}
: > "$out/last-output"
( while kill -0 "$parent" 2>/dev/null && kill -0 "$qpid" 2>/dev/null && [ ! -f "$out/stalled" ]; do
    sleep 2
    if [ $(( $(date +%s) - $(stat -c %Y "$out/last-output" 2>/dev/null || date +%s) )) -gt "$silence" ]; then
      echo "kvm-test-host: no output for ${silence}s" >&2; touch "$out/stalled"
    fi
  done
  if [ -f "$out/stalled" ]; then kill -TERM "$qpid" 2>/dev/null; exit 0; fi
  if kill -0 "$qpid" 2>/dev/null; then echo "kvm-test-host: parent process $parent is gone, stopping QEMU" >&2; touch "$out/parent-gone"; kill -TERM "$qpid"; fi
) </dev/null >/dev/null &
watch=$!
set +e
wait "$qpid"
qrc=$?
set -e
kill "$watch" 2>/dev/null || true
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  echo "kvm-test-host: ERROR: timed out after ${tmo}s (QEMU killed)" >&2; exit 124
fi
if [ -f "$out/stalled" ]; then
  echo "kvm-test-host: ERROR: the test host stalled (soft lockups for 120 s: a QEMU TCG nested-virtualization hang, not the command's failure)" >&2
  exit 126
fi
if [ -f "$out/parent-gone" ]; then
  echo "kvm-test-host: ERROR: stopped because the process that started it went away" >&2; exit 125
fi
if [ -f "$out/error" ]; then
  echo "kvm-test-host: ERROR: $(cat "$out/error")" >&2; exit 125
fi
if [ ! -s "$out/rc" ] && [ -f "$out/host-panic" ]; then
  echo "kvm-test-host: ERROR: the test host's own kernel panicked (a QEMU TCG nested-virtualization failure, not the command's)" >&2
  exit 126
fi
if [ ! -s "$out/rc" ]; then
  echo "kvm-test-host: ERROR: the test host ended without reporting the command's exit status (QEMU exit $qrc; boot failure or kernel panic; rerun with --verbose)" >&2
  exit 125
fi
rc=$(cat "$out/rc")
[ "$verbose" = 1 ] && log "command exited with $rc"
exit "$rc"
