#!/usr/bin/env bash
# ncu of a list of cases (bench/profile_case.py), one kernel launch each: "op backend N [M]" per
# argument, e.g. bench/profile.sh "quant_static cuda 2048" "rms_norm cuda 2048" (KERNEL, default
# regex:rms_norm, picks the kernels counted by --launch-skip and profiled). Writes the full
# report of each to $OUT/ncu.log, and the lines that say why a kernel misses the copy ceiling
# (DRAM throughput, duration, occupancy, registers, the top warp stalls) to $OUT/ncu-summary.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-results}"
mkdir -p "$out"
sections=(--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats
  --section MemoryWorkloadAnalysis --section SchedulerStats
  --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,smsp__inst_executed.sum,smsp__cycles_elapsed.avg.per_second')
for case in "$@"; do
  read -r op backend n rows <<< "$case"
  echo "=== $case" | tee -a "$out/ncu.log" >> "$out/ncu-summary.log"
  # --launch-skip counts kernels: 2 skips the warm-up calls of a case that launches one kernel a
  # call (SKIP and COUNT for the split-row cases, which launch two or three).
  ncu "${sections[@]}" --kernel-name "${KERNEL:-regex:rms_norm}" --launch-skip "${SKIP:-2}" --launch-count "${COUNT:-1}" \
    python -m bench.profile_case "$op" "$backend" "$n" ${rows:+"$rows"} >> "$out/ncu.log" 2>&1
  awk -v c="=== $case" '$0 == c {p=1; next} p' "$out/ncu.log" |
    grep -E "rms_norm.*\(|DRAM Throughput|Duration|Registers Per|Block Size|Grid Size|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued|Stall|Issue Slot|No Eligible|Active Warps Per|Eligible Warps|stalled_|inst_executed|cycles_elapsed" \
    >> "$out/ncu-summary.log"
done
cat "$out/ncu-summary.log"
