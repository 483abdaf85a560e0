"""One cell of the benchmark's sweep timed again and again, to tell what makes it swing between runs.

`python -m bench.swing backward ours-triton 32768 [--dtype bf16] [--allocations 4] [--repeats 5]`
times the sweep's cell (its inputs, bench.sweep's timing through autograd, its bytes) on
`allocations` sets of inputs, each kept alive while the next is made so that each lies elsewhere
in memory, `repeats` times each. It prints every reading (% of the copy ceiling, and the host's ms
to issue a call against the GPU's), then what they say: the widest spread within one allocation
(a cause that comes and goes), the spread of the allocations' medians (a cause fixed by where the
tensors lie), and how many readings the host bounds (bench/NOTES.md v0.42).
"""

from __future__ import annotations

import argparse
import statistics

from bench.cases import DTYPES, NORM_MODES, bytes_moved, rows_for
from bench.implementations import ALL_NAMES, load_implementations
from bench.inputs import random_case, torch_dtype
from bench.sweep import time_mode
from bench.timing import CallTime, copy_ceiling, percent_of_ceiling


def summarize(readings: list[list[CallTime]], moved: int, ceiling_gbps: float) -> str:
    """Lines for `readings` (one list a set of inputs, its readings in order) of a call moving `moved`
    bytes: each allocation's readings in % of `ceiling_gbps` with their host / GPU ms, then the spreads
    and the count of host-bound readings."""

    def pct(ms: float) -> float:
        return percent_of_ceiling(moved, ms, ceiling_gbps)

    lines = []
    for index, times in enumerate(readings):
        cells = " ".join(f"{pct(t.ms):.1f}% ({t.host_ms:.3f}/{t.ms:.3f})" for t in times)
        lines.append(f"  allocation {index}: {cells}")
    within = max(max(pct(t.ms) for t in times) - min(pct(t.ms) for t in times) for times in readings)
    medians = [statistics.median(pct(t.ms) for t in times) for times in readings]
    bound = sum(t.host_bound for times in readings for t in times)
    total = sum(len(times) for times in readings)
    lines.append(
        f"  widest spread within an allocation {within:.1f} points; allocations' medians "
        f"{min(medians):.1f}-{max(medians):.1f}% (spread {max(medians) - min(medians):.1f}); "
        f"host-bound readings {bound} of {total}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=NORM_MODES)
    parser.add_argument("impl", choices=ALL_NAMES)
    parser.add_argument("n", type=int)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--allocations", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    impls, records = load_implementations((args.impl,))
    if not impls:
        raise SystemExit(f"{args.impl} did not load: {records[args.impl]['reason']}")
    ceiling = copy_ceiling()["gbps"]
    rows = rows_for(args.n)
    moved = bytes_moved(args.mode, rows, args.n, args.dtype)
    kept, readings = [], []
    for _ in range(args.allocations):
        tensors = random_case(rows, args.n, torch_dtype(args.dtype))
        kept.append(tensors)  # alive, so that the next allocation's inputs lie elsewhere
        readings.append([t for _ in range(args.repeats) for t in time_mode(impls[0].fn, args.mode, *tensors)])
    print(f"{args.impl} {args.mode} {args.dtype} M={rows} N={args.n}, copy {ceiling:.0f} GB/s")
    print(summarize(readings, moved, ceiling), flush=True)


if __name__ == "__main__":
    main()
