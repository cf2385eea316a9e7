#!/bin/bash
# make soak: tests/src/bin/husk-soak.rs in segments, each in its own run of tests/vm-run.sh
# (a fresh KVM test host where one is needed): SOAK_CYCLES create/start/kill -9/delete cycles,
# SOAK_SEGMENT (default 100) per segment, then one segment with the SOAK_EXECS husk execs and
# the SOAK_CTR_EXECS containerd execs against their long-lived containers.
#
# Why segments: the emulated test host (QEMU TCG, nested SVM) stalls or panics now and then
# under hours of guest churn (docs/architecture.md, "Tests"). vm-run.sh reruns a command whose
# test host died; a segment limits what such a rerun repeats. Each segment checks on its own
# that nothing is left and that its long-lived processes do not grow; a test host that died
# is never counted as a pass. The logs go to SOAK_LOG_DIR (default build/soak).
#
# usage: tests/soak.sh PATH/TO/husk-soak
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
soak=${1:?usage: tests/soak.sh PATH/TO/husk-soak}
cycles=${SOAK_CYCLES:-500}
execs=${SOAK_EXECS:-200}
ctr_execs=${SOAK_CTR_EXECS:-100}
seg=${SOAK_SEGMENT:-100}
logs=${SOAK_LOG_DIR:-$here/../build/soak}
(( seg > 0 )) || { echo "soak: SOAK_SEGMENT must be > 0" >&2; exit 2; }
mkdir -p "$logs"
rm -f "$logs"/segment-*.log

failed=()
n=0
# run_segment NAME FIRST CYCLES EXECS CTR_EXECS
run_segment() {
  local name=$1 log="$logs/segment-$n-$1.log" rc=0
  echo "soak: segment $n ($name): cycles $3 from #$2, execs $4, ctr execs $5; log $log" >&2
  SOAK_FIRST=$2 SOAK_CYCLES=$3 SOAK_EXECS=$4 SOAK_CTR_EXECS=$5 \
    KVM_TEST_HOST_ENV="${KVM_TEST_HOST_ENV:-} SOAK_FIRST SOAK_CYCLES SOAK_EXECS SOAK_CTR_EXECS" \
    KVM_TEST_HOST_TIMEOUT=${KVM_TEST_HOST_TIMEOUT:-3600} \
    "$here/vm-run.sh" "$soak" 2>&1 | tee "$log" || rc=$?
  if [ "$rc" != 0 ] || ! grep -q '^SOAK OK$' "$log"; then
    failed+=("segment $n ($name): exit $rc")
  fi
  n=$((n + 1))
}

for ((first = 0; first < cycles; first += seg)); do
  count=$(( cycles - first < seg ? cycles - first : seg ))
  run_segment "cycles" "$first" "$count" 0 0
done
if (( execs > 0 || ctr_execs > 0 )); then
  run_segment "execs" 0 0 "$execs" "$ctr_execs"
fi

echo
echo "soak summary ($n segment(s), logs in $logs):"
grep -h -E '^(cycles:|ctr execs:|soak: [0-9]+ s in all|SOAK (OK|FAILURE)|vm-run: WARNING)' "$logs"/segment-*.log || true
if (( ${#failed[@]} > 0 )); then
  printf 'SOAK FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "SOAK OK: all $n segment(s) passed"
