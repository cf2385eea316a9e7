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
#
# A failure that shows a lost guest (husk-vmm's "guest crashed", "agent not ready", an agent
# connection that timed out, closed or was reset) is rerun, those tests only, in a fresh test
# host, up to HUSK_VM_TEST_RETRY times (default 2; 0 turns it off): under QEMU TCG's emulated
# nested SVM about 1 guest boot in a few hundred dies or hangs on wrong translations, and the
# losses come in runs within one test-host boot (docs/architecture.md, "Tests"). A test passes
# only if a rerun passes, and the summary names every test that needed one. Any other failure
# is final.
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
retries=${HUSK_VM_TEST_RETRY:-2}                 # reruns of tests that failed only on lost guests
passed=0; failed=0; failed_exes=(); retried=(); digest=()
tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
# What a guest lost to the emulator looks like in a test's failure message.
lost_guest='guest crashed|agent not ready after|exited before the agent was ready|lost the VM|agent: connection closed|agent: I/O error: Resource temporarily unavailable|agent: I/O error: Connection reset by peer|vsock: guest port [0-9]+: no answer within|agent: no reply within'

# counts FILE: sets p and f from libtest's "test result: ok. 3 passed; 0 failed; ..." line.
counts() {
  local line
  line=$(grep -E '^test result: ' "$1" | tail -1)
  p=$(sed -n 's/.* \([0-9][0-9]*\) passed.*/\1/p' <<<"$line"); f=$(sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p' <<<"$line")
  p=${p:-0}; f=${f:-0}
}
# failed_tests FILE: the names in libtest's closing "failures:" list.
failed_tests() {
  awk '/^failures:$/ { list = 1; n = 0; next } list && /^    [^ ]/ { names[n++] = $1; next }
       list && n > 0 { list = 0 } END { for (i = 0; i < n; i++) print names[i] }' "$1" | sed 's/\x1b\[[0-9;]*m//g' | sort -u
}
# lost FILE TEST: whether TEST's own failure output ("---- TEST stdout ----" up to the next
# section) shows a lost guest.
lost() {
  awk -v t="---- $2 stdout ----" '$0 == t { on = 1; next } on && (/^---- .* stdout ----$/ || /^failures:$/) { on = 0 } on' "$1" \
    | grep -qE "$lost_guest"
}
# why FILE TEST: the first line of TEST's panic message (what CI's tail then shows).
why() {
  awk -v t="---- $2 stdout ----" '$0 == t { on = 1; next } on && /^---- .* stdout ----$/ { on = 0 }
       on && /panicked at/ { getline; print; exit }' "$1" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-300
}
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
  counts "$tmp"
  tries=0; ok=$p
  while [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$f" -gt 0 ] && [ "$tries" -lt "$retries" ]; do
    mapfile -t names < <(failed_tests "$tmp")
    all_lost=1
    for n in "${names[@]}"; do lost "$tmp" "$n" || all_lost=0; done
    { [ "${#names[@]}" = "$f" ] && [ "$all_lost" = 1 ]; } || break
    tries=$((tries + 1))
    echo "run-vm-tests: RETRY $tries/$retries: a guest was lost (see above); rerunning: ${names[*]}" >&2
    "${wrap[@]}" timeout -k 10 "$per_exe_timeout" "$exe" --test-threads=1 --include-ignored --exact "${names[@]}" 2>&1 | tee "$tmp"
    rc=${PIPESTATUS[0]}
    counts "$tmp"
    [ "$rc" = 0 ] && retried+=("$(basename "$exe"): ${names[*]} (rerun $tries)")
    ok=$((ok + p))
  done
  p=$ok
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$rc" != 0 ]; then
    failed_exes+=("$exe")
    # crashed/aborted without a summary (or with 0 failures counted): count it as one failure
    [ "$f" = 0 ] && failed=$((failed + 1))
    # A digest for the end of the run, where a CI log's tail shows it.
    mapfile -t names < <(failed_tests "$tmp")
    if [ "$rc" = 124 ]; then
      digest+=("$(basename "$exe"): timed out after ${per_exe_timeout}s")
    elif [ ${#names[@]} = 0 ]; then
      digest+=("$(basename "$exe"): exit status $rc without a test summary; its last line: $(tail -n 1 "$tmp" | cut -c1-300)")
    fi
    for n in "${names[@]}"; do digest+=("$(basename "$exe") $n: $(why "$tmp" "$n")"); done
  fi
done < "$list"

[ ${#failed_exes[@]} -eq 0 ] || printf 'run-vm-tests: failed: %s\n' "${failed_exes[@]}" >&2
[ ${#digest[@]} -eq 0 ] || printf 'run-vm-tests: FAILED %s\n' "${digest[@]}" >&2
[ ${#retried[@]} -eq 0 ] || printf 'run-vm-tests: passed only on the rerun after a lost guest: %s\n' "${retried[@]}" >&2
echo "VM TESTS: $passed passed, $failed failed${retried[*]:+ (${#retried[@]} executable(s) needed a rerun after a lost guest)}"
[ "$passed" -gt 0 ] || [ "$failed" -gt 0 ] || echo "run-vm-tests: no test ran (filtered out?): treated as failure" >&2
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
