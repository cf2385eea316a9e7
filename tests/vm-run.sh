#!/usr/bin/env bash
# Run CMD where real KVM guests (husk's microVMs) can run:
#   - directly, if this host's /dev/kvm runs ordinary guests: /dev/kvm usable, the CPU has
#     the vmx or svm flag, and KVM is not PVM (/sys/module/kvm_pvm, which cannot boot
#     unmodified Linux guests);
#   - otherwise inside the KVM test host (tests/kvm-test-host/run.sh: QEMU TCG with a
#     nested-SVM CPU).
# It never skips: if neither path can work it fails and says why.
# Usage: vm-run.sh CMD [ARGS...]
# Env: HUSK_VM_RUN=direct|test-host forces a path; KVM_TEST_HOST_* tune the test host.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -ge 1 ] || { echo "usage: vm-run.sh CMD [ARGS...]" >&2; exit 2; }
say() { echo "vm-run: $*" >&2; }

reason=""
kvm_direct_ok() {
  if [ ! -e /dev/kvm ]; then reason="no /dev/kvm on this host"; return 1; fi
  if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then reason="/dev/kvm is not read/writable by $(id -un)"; return 1; fi
  if [ -d /sys/module/kvm_pvm ]; then
    reason="/dev/kvm is PVM (kvm_pvm loaded): it runs only PVM-enlightened guest kernels, not ours"; return 1
  fi
  if ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
    reason="the CPU has no vmx/svm flag, so /dev/kvm cannot run ordinary guests"; return 1
  fi
  reason="/dev/kvm is usable and the CPU has $(grep -owE 'vmx|svm' /proc/cpuinfo | head -1)"
  return 0
}

mode=${HUSK_VM_RUN:-auto}
case "$mode" in
  direct)
    kvm_direct_ok || say "warning: forcing direct although $reason"
    say "running directly on this host (HUSK_VM_RUN=direct)"
    exec "$@" ;;
  test-host)
    say "running inside the KVM test host (HUSK_VM_RUN=test-host)" ;;
  auto)
    if kvm_direct_ok; then
      say "running directly on this host: $reason"
      exec "$@"
    fi
    say "not running directly: $reason"
    say "running inside the KVM test host (tests/kvm-test-host/run.sh: QEMU TCG, nested SVM; ~10x slower guests)" ;;
  *) say "HUSK_VM_RUN must be auto, direct or test-host (got '$mode')"; exit 2 ;;
esac

# The test host needs root (it installs QEMU, caches its kernel, shares / over 9p) and QEMU.
if [ "$(id -u)" != 0 ]; then
  say "FAIL: no way to run KVM guests here: $reason, and the KVM test host needs root"; exit 1
fi
if ! command -v qemu-system-x86_64 >/dev/null && ! command -v apt-get >/dev/null; then
  say "FAIL: no way to run KVM guests here: $reason, and qemu-system-x86_64 is missing with no apt-get to install it"; exit 1
fi
# One test host at a time per machine: two TCG emulators on a small host starve each other
# into soft lockups. Later callers wait here (and say so).
lock=${HUSK_TEST_HOST_LOCK:-/var/lock/husk-test-host.lock}
exec 7>"$lock"
if ! flock -n 7; then
  say "another KVM test host is running; waiting for it ($lock)"
  flock 7
fi
# A stalled or crashed test host (exit 126: the emulator wedged or its kernel died, the
# command did not fail) is retried,
# loudly, up to HUSK_TEST_HOST_RETRIES times (default 2). Any other status is final.
retries=${HUSK_TEST_HOST_RETRIES:-2}
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 130' INT TERM HUP
while :; do
  "$here/kvm-test-host/run.sh" -- "$@" &
  child=$!
  set +e; wait "$child"; rc=$?; set -e
  if [ "$rc" = 126 ] && [ "$retries" -gt 0 ]; then
    retries=$((retries - 1))
    say "WARNING: the KVM test host stalled (not a test failure); running the command again from scratch"
    continue
  fi
  exit "$rc"
done
