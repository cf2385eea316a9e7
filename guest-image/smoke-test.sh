#!/usr/bin/env bash
# Smoke test of the guest kernel: boot build/guest/vmlinux (PVH, via QEMU -M microvm with
# KVM) into a minimal static /init (smoke-init.c) with a vhost-vsock device, N times, and
# report launch-to-/init time. Runs the boots through tests/vm-run.sh, i.e. inside the KVM
# test host on machines whose /dev/kvm cannot run ordinary guests.
# Usage: smoke-test.sh [RUNS]        (needs gcc; run guest-image/build-kernel.sh first)
# HUSK_SMOKE_CMDLINE replaces "quiet" on the guest cmdline, e.g. "initcall_debug" to see where
# boot time goes (the first boot's console is printed).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
kernel=${HUSK_KERNEL:-$repo/build/guest/vmlinux}
work=$repo/build/guest/smoke

if [ "${1:-}" != --inner ]; then
  runs=${1:-5}
  [ -f "$kernel" ] || { echo "smoke-test: $kernel missing: run guest-image/build-kernel.sh" >&2; exit 1; }
  mkdir -p "$work"
  gcc -static -O2 -Wall -o "$work/init" "$here/smoke-init.c"
  "$here/build-initrd.sh" "$work/init" "$work/initrd.img"
  exec "$repo/tests/vm-run.sh" "$here/smoke-test.sh" --inner "$runs"
fi

runs=${2:-5}
cmdline="console=ttyS0 reboot=t panic=-1 ${HUSK_SMOKE_CMDLINE:-quiet}"
ok=0; times=()
for i in $(seq 1 "$runs"); do
  t0=$(date +%s%N); t_init=""; seen=""
  while IFS= read -r line; do
    line=${line%$'\r'}
    case "$line" in
      *HUSK-SMOKE-INIT:*/init\ running*) t_init=$(date +%s%N); seen="$line" ;;
    esac
    [ "$i" = 1 ] && echo "  | $line"
  done < <(timeout 120 qemu-system-x86_64 -M microvm,acpi=off,pit=off,pic=off,isa-serial=on,rtc=off \
             -enable-kvm -cpu host -m 512 -smp 2 -nodefaults -no-user-config -display none \
             -serial stdio -no-reboot -kernel "$kernel" -initrd "$work/initrd.img" \
             -device vhost-vsock-device,guest-cid=3 -append "$cmdline" </dev/null 2>&1)
  t1=$(date +%s%N)
  if [ -n "$t_init" ]; then
    ok=$((ok + 1)); ms=$(( (t_init - t0) / 1000000 )); times+=("$ms")
    echo "boot $i: launch -> /init ${ms} ms, QEMU exit after $(( (t1 - t0) / 1000000 )) ms; ${seen#*HUSK-SMOKE-INIT: }"
  else
    echo "boot $i: FAILED (no /init output)"
  fi
done
if [ "$ok" -gt 0 ]; then
  med=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "smoke-test: $ok/$runs boots reached /init; median launch -> /init ${med} ms"
fi
[ "$ok" = "$runs" ]
