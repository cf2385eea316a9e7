#!/usr/bin/env bash
# Run the prebuilt husk-tests VM test executables (listed one per line, absolute paths, in
# build/vm-tests.list by `make vm-test-build`). Nothing here invokes cargo (inside the KVM
# test host the filesystem is read-only). Run on the host (as `make vm-test` does), each
# executable goes through tests/vm-run.sh on its own: a test-host stall then costs a rerun of
# that executable, not of the whole suite. Run inside vm-run.sh (HUSK_IN_TEST_HOST=1, or
# HUSK_VM_RUN_EACH=0), the executables run directly.
# Each executable runs with --test-threads=1 (VM tests are heavy, especially under TCG);
# extra arguments are passed to every executable (e.g. a test name filter). Each executable
# gets at most HUSK_VM_TEST_TIMEOUT seconds (default 1800).
# Prints "VM TESTS: N passed, M failed" and exits non-zero if anything failed or nothing ran.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
list=${HUSK_VM_TESTS_LIST:-$repo/build/vm-tests.list}

export HUSK_VMM=${HUSK_VMM:-$repo/target/release/husk-vmm}
export HUSK_BIN_DIR=${HUSK_BIN_DIR:-$repo/target/release}
export HUSK_KERNEL=${HUSK_KERNEL:-$repo/build/guest/vmlinux}
export HUSK_INITRD=${HUSK_INITRD:-$repo/build/guest/initrd.img}
for v in HUSK_VMM HUSK_BIN_DIR HUSK_KERNEL HUSK_INITRD; do
  [ -e "${!v}" ] || echo "run-vm-tests: warning: $v=${!v} does not exist" >&2
done

if [ ! -s "$list" ]; then
  echo "run-vm-tests: no test executables listed in $list (run 'make vm-test-build' first)" >&2
  echo "VM TESTS: 0 passed, 1 failed (no tests)"
  exit 1
fi

per_exe_timeout=${HUSK_VM_TEST_TIMEOUT:-1200}   # a hung VM test fails instead of blocking CI
passed=0; failed=0; failed_exes=()
tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
while IFS= read -r exe || [ -n "$exe" ]; do
  [ -n "$exe" ] || continue
  echo "==== $exe" >&2
  if [ ! -x "$exe" ]; then
    echo "run-vm-tests: $exe is missing or not executable" >&2
    failed=$((failed + 1)); failed_exes+=("$exe"); continue
  fi
  # --include-ignored: the agent's end-to-end tests are #[ignore]d for plain `cargo test`
  # (they need full root, which only the test host gives); here they run.
  wrap=()
  if [ "${HUSK_IN_TEST_HOST:-0}" != 1 ] && [ "${HUSK_VM_RUN_EACH:-1}" = 1 ]; then
    wrap=("$repo/tests/vm-run.sh")
  fi
  "${wrap[@]}" timeout -k 10 "$per_exe_timeout" "$exe" --test-threads=1 --include-ignored "$@" 2>&1 | tee "$tmp"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "run-vm-tests: $exe timed out after ${per_exe_timeout}s (HUSK_VM_TEST_TIMEOUT)" >&2
  # libtest summary: "test result: ok. 3 passed; 0 failed; 0 ignored; ..."
  line=$(grep -E '^test result: ' "$tmp" | tail -1)
  p=$(sed -n 's/.* \([0-9][0-9]*\) passed.*/\1/p' <<<"$line"); f=$(sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p' <<<"$line")
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  if [ "$rc" != 0 ]; then
    failed_exes+=("$exe")
    # crashed/aborted without a summary (or with 0 failures counted): count it as one failure
    [ "${f:-0}" = 0 ] && failed=$((failed + 1))
  fi
done < "$list"

[ ${#failed_exes[@]} -eq 0 ] || printf 'run-vm-tests: failed: %s\n' "${failed_exes[@]}" >&2
echo "VM TESTS: $passed passed, $failed failed"
[ "$passed" -gt 0 ] || [ "$failed" -gt 0 ] || echo "run-vm-tests: no test ran (filtered out?): treated as failure" >&2
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
