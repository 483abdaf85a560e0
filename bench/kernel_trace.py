"""Where a bulk call's GPU time goes: each kernel's own duration and the idle time between kernels, beside
the time the call's bytes would take at the copy ceiling.

`python -m bench.kernel_trace --modes backward --ns 4096` runs CALLS calls of each implementation
queued behind a torch.cuda._sleep (so the host's pace does not show on the GPU), traces them with
torch.profiler and prints, per call, each kernel's median duration, the median idle time of the GPU
between calls (bench.graph_trace.summarize) and inside a call, and the span of a call against the
ideal time (bytes moved / copy ceiling). The benchmark's table gives one number a cell; this splits
it into the main kernel's excess over the ceiling and the fixed costs around it (a second kernel,
launch gaps), which call for different changes (bench/NOTES.md v0.49).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from bench.cases import BACKWARD, FORWARD_BACKWARD, NORM_MODES, bytes_moved, rows_for
from bench.graph_trace import summarize
from bench.implementations import load_implementations
from bench.inputs import random_case, torch_dtype
from bench.sweep import mode_call
from bench.timing import _spin_cycles_per_ms, copy_ceiling

NAMES = ("ours-triton", "ours-cuda")
CALLS = 10
# The sleep ahead of the calls: long enough for the host to issue all CALLS calls.
QUEUE_MS = 20.0


def trace_calls(call, calls: int = CALLS) -> list[tuple[str, float, float]]:
    """(kernel name, start us, duration us) of every kernel of `calls` calls issued behind a sleep."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    cycles = int(QUEUE_MS * _spin_cycles_per_ms())
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        torch.cuda._sleep(cycles)
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    kernels = [e for e in trace.events() if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range]
    kernels = [e for e in kernels if "spin" not in e.name.lower()]
    kernels.sort(key=lambda e: e.time_range.start)
    return [(e.name, float(e.time_range.start), float(e.time_range.elapsed_us())) for e in kernels]


def idle_and_span(kernels: list[tuple[str, float, float]], ideal_us: float, calls: int = CALLS) -> str:
    """graph_trace.summarize's lines, then the GPU's median idle time inside a call (between its own
    kernels) and the span of a call against ideal_us."""
    lines = summarize(kernels, calls)
    if not kernels or len(kernels) % calls:
        return lines
    per_call = len(kernels) // calls
    by_call = [kernels[c * per_call : (c + 1) * per_call] for c in range(calls)]
    inside = [sum(b[1] - (a[1] + a[2]) for a, b in zip(call, call[1:])) for call in by_call]
    span = (by_call[-1][-1][1] + by_call[-1][-1][2] - kernels[0][1]) / calls
    return (
        f"{lines}\n  idle inside a call: median {statistics.median(inside):.2f} us; span per call {span:.1f} us"
        f" against {ideal_us:.1f} at the copy ceiling ({100 * ideal_us / span:.1f}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=[BACKWARD, FORWARD_BACKWARD], choices=NORM_MODES)
    parser.add_argument("--ns", type=int, nargs="+", default=[4096])
    parser.add_argument("--dtypes", nargs="+", default=["bf16"])
    parser.add_argument("--impls", nargs="+", default=list(NAMES))
    args = parser.parse_args()
    impls, records = load_implementations(args.impls)
    for name, record in records.items():
        if not record["present"]:
            print(f"{name}: not loaded ({record['reason']})")
    ceiling_gbps = copy_ceiling()["gbps"]
    print(f"copy ceiling {ceiling_gbps:.0f} GB/s")
    for dtype_name in args.dtypes:
        for n in args.ns:
            rows = rows_for(n)
            x, weight, dy = random_case(rows, n, torch_dtype(dtype_name))
            for mode in args.modes:
                ideal_us = bytes_moved(mode, rows, n, dtype_name) / ceiling_gbps / 1e3
                for impl in impls:
                    kernels = trace_calls(mode_call(impl.fn, mode, x, weight, dy))
                    title = f"{impl.name} {mode} {dtype_name} M={rows} N={n}"
                    print(f"{title}:\n{idle_and_span(kernels, ideal_us)}", flush=True)
            del x, weight, dy
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
