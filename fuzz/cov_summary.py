#!/usr/bin/env python3
"""Edge coverage of husk's own code by a fuzz target's corpus, per source file.

Runs the target once over the given corpus dirs with libFuzzer's -print_coverage=1 and sums
"edges: covered/total" of the functions in husk's crates (vmm/, protocol/). Inlined functions
count in their callers, so the numbers are approximate; the totals are what the report uses.

  fuzz/cov_summary.py fuzz/target/x86_64-unknown-linux-gnu/release/vsock fuzz/corpus/vsock [more dirs]
"""
import collections
import re
import subprocess
import sys

binary, dirs = sys.argv[1], sys.argv[2:]
out = subprocess.run([binary, "-runs=0", "-print_coverage=1", *dirs],
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
line_re = re.compile(r"^(?:UN)?COVERED_FUNC: hits: \d+ edges: (\d+)/(\d+) .* (\S+):\d+$")
files = collections.defaultdict(lambda: [0, 0, 0, 0])  # edges hit, edges, funcs hit, funcs
for line in out.splitlines():
    m = line_re.match(line)
    if not m:
        continue
    hit, total, path = int(m.group(1)), int(m.group(2)), m.group(3)
    m2 = re.search(r"/((?:vmm|protocol)/src/.*)$", path)
    if not m2:
        continue
    f = files[m2.group(1)]
    f[0] += hit
    f[1] += total
    f[2] += hit > 0
    f[3] += 1
tot = [0, 0, 0, 0]
for path in sorted(files):
    f = files[path]
    if f[2] == 0:
        continue  # files the target does not aim at
    tot = [a + b for a, b in zip(tot, f)]
    print(f"{path:55} edges {f[0]:5}/{f[1]:<5} {100 * f[0] / max(f[1], 1):5.1f}%  functions {f[2]}/{f[3]}")
print(f"{'husk code reached (files with any hit)':55} edges {tot[0]:5}/{tot[1]:<5} "
      f"{100 * tot[0] / max(tot[1], 1):5.1f}%  functions {tot[2]}/{tot[3]}")
