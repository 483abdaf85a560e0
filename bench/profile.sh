#!/usr/bin/env bash
# ncu of a list of cases (bench/profile_case.py), one kernel launch each: "op backend N [M]" per
# argument, e.g. bench/profile.sh "quant_static cuda 2048" "rms_norm cuda 2048" (KERNEL, default
# regex:rms_norm, picks the kernels counted by --launch-skip and profiled). Writes the full
# report of each to $OUT/ncu.log, and the lines that say why a kernel misses the copy ceiling
# (DRAM throughput, duration, occupancy, registers, the top warp stalls) to $OUT/ncu-summary.log.
# SOURCE=1 also samples the warps' stalls per instruction (ncu's SourceCounters) and writes each
# case's SASS with its samples, one instruction a row, to $OUT/sass-<op>-<backend>-<N>.csv: which
# load or barrier a kernel waits on, where the summary gives only the totals.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-results}"
mkdir -p "$out"
sections=(--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats
  --section MemoryWorkloadAnalysis --section SchedulerStats
  --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum,smsp__cycles_elapsed.avg.per_second')
if [[ "${SOURCE:-0}" == 1 ]]; then
  sections+=(--section SourceCounters --import-source no)
fi
for case in "$@"; do
  read -r op backend n rows <<< "$case"
  echo "=== $case" | tee -a "$out/ncu.log" >> "$out/ncu-summary.log"
  report=()
  if [[ "${SOURCE:-0}" == 1 ]]; then
    report=(-o "$(mktemp -u -p "${TMPDIR:-/tmp}" ncu-XXXXXX)")
  fi
  # --launch-skip counts kernels: 2 skips the warm-up calls of a case that launches one kernel a
  # call (SKIP and COUNT for the split-row cases, which launch two or three).
  ncu "${sections[@]}" "${report[@]}" --kernel-name "${KERNEL:-regex:rms_norm}" --launch-skip "${SKIP:-2}" \
    --launch-count "${COUNT:-1}" python -m bench.profile_case "$op" "$backend" "$n" ${rows:+"$rows"} >> "$out/ncu.log" 2>&1
  if [[ "${SOURCE:-0}" == 1 ]]; then
    # -o writes the report instead of printing it: print it, then its source page.
    ncu --import "${report[1]}.ncu-rep" >> "$out/ncu.log" 2>&1
    ncu --import "${report[1]}.ncu-rep" --page source --print-source sass --csv > "$out/sass-$op-$backend-$n.csv" 2>&1 ||
      echo "ncu could not print the source page of $case" >> "$out/ncu.log"
  fi
  awk -v c="=== $case" '$0 == c {p=1; next} p' "$out/ncu.log" |
    grep -E "rms_norm.*\(|DRAM Throughput|Duration|Registers Per|Block Size|Grid Size|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued|Stall|Issue Slot|No Eligible|Active Warps Per|Eligible Warps|stalled_|inst_executed|cycles_elapsed" \
    >> "$out/ncu-summary.log"
done
cat "$out/ncu-summary.log"
