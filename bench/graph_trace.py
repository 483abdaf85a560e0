"""Where a small call's GPU time under CUDA-graph replay goes: each kernel's own duration, and the gap
from one call's last kernel to the next call's first, read from a profiler trace of one replay.

`python -m bench.graph_trace` captures bench.latency's GRAPH_CALLS calls (forward without grad, bf16,
N = LATENCY_N) in one graph per implementation and M, replays it once under torch.profiler and
prints the kernels a call launches, the median duration of each, and the median gap between calls.
The latency table's GPU time per call is about their sum; this tells a slow kernel from a slow
launch (bench/NOTES.md v0.40).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from bench.cases import EPS, LATENCY_DTYPE, LATENCY_N
from bench.implementations import load_implementations
from bench.inputs import random_case, torch_dtype
from bench.latency import GRAPH_CALLS, capture_calls

NAMES = ("ours-triton", "ours-cuda", "torch-F", "quack")


def trace_replay(call, calls: int = GRAPH_CALLS) -> list[tuple[str, float, float]]:
    """(kernel name, start us, duration us) of every kernel of one replay of `calls` captured calls."""
    graph = capture_calls(call, calls)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        graph.replay()
        torch.cuda.synchronize()
    kernels = [e for e in trace.events() if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range]
    kernels = [e for e in kernels if "memcpy" not in e.name.lower() and "memset" not in e.name.lower()]
    kernels.sort(key=lambda e: e.time_range.start)
    return [(e.name, float(e.time_range.start), float(e.time_range.elapsed_us())) for e in kernels]


def summarize(kernels: list[tuple[str, float, float]], calls: int = GRAPH_CALLS) -> str:
    """Lines for `calls` calls' kernels in launch order: each kernel of a call with its median
    duration, then the median gap from one call's last kernel's end to the next call's first start."""
    if not kernels or len(kernels) % calls:
        return f"{len(kernels)} kernels for {calls} calls: " + ", ".join(sorted({k[0][:60] for k in kernels}))
    per_call = len(kernels) // calls
    by_call = [kernels[c * per_call : (c + 1) * per_call] for c in range(calls)]
    lines = [
        f"  kernel {i}: {statistics.median(call[i][2] for call in by_call):.2f} us  {kernels[i][0][:90]}"
        for i in range(per_call)
    ]
    ends = [call[-1][1] + call[-1][2] for call in by_call]
    gaps = [following[0][1] - end for following, end in zip(by_call[1:], ends)]
    span = (ends[-1] - kernels[0][1]) / calls
    lines.append(f"  gap between calls: median {statistics.median(gaps):.2f} us; span per call {span:.2f} us")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 512])
    parser.add_argument("--ns", type=int, nargs="+", default=[LATENCY_N])
    args = parser.parse_args()
    impls, records = load_implementations(NAMES)
    for name, record in records.items():
        if not record["present"]:
            print(f"{name}: not loaded ({record['reason']})")
    dtype = torch_dtype(LATENCY_DTYPE)
    for n in args.ns:
        for rows in args.rows:
            x, weight, _ = random_case(rows, n, dtype)
            for impl in impls:
                with torch.no_grad():
                    kernels = trace_replay(lambda: impl.fn(x, weight, EPS))
                print(f"{impl.name} M={rows} N={n}:\n{summarize(kernels)}", flush=True)


if __name__ == "__main__":
    main()
