"""Side-by-side timings of Triton launch-configuration candidates, to choose triton_kernels' constants.

`python -m bench.tune_triton` sets each candidate's constants on rmsnorm.triton_kernels, clears its
configuration cache, and times the bf16 forward (rms_norm and add_rms_norm) and backward at
M·N = 2^27 against the copy ceiling of the same run. It prints one table; the choice and the numbers
behind it go to bench/NOTES.md and to the comments beside the constants.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import itertools
import re
import statistics
import sys

import torch

import rmsnorm
from bench.cases import ADD_FORWARD, BACKWARD, ELEMENTS, EPS, FORWARD, FORWARD_BACKWARD, bytes_moved
from bench.inputs import random_case, torch_dtype
from bench.sweep import mode_call
from bench.timing import copy_ceiling, median_ms, percent_of_ceiling, time_call
from rmsnorm import triton_kernels

NS = (1024, 4096, 8192, 16384, 32768)
# fp32 elements a thread holds in a row tile, and the warps a program may have (the backward's
# programs an SM and pipeline: `--bwd`).
ELEMENTS_PER_THREAD = (16, 32, 64)
MAX_NUM_WARPS = (8, 16, 32)


def _configure(elements_per_thread: int, max_warps: int) -> None:
    triton_kernels.ELEMENTS_PER_THREAD = elements_per_thread
    triton_kernels.MAX_NUM_WARPS = max_warps
    triton_kernels.forget_launch_choices()


# fp32 elements a thread of the quantizing forward holds (`--quant`): 8 warps at 16384 for 64.
QUANT_ELEMENTS_PER_THREAD = (16, 32, 64, 128)


def _quant_sweep(ns: list[int], ceiling: float) -> None:
    """rms_norm_quant alone, static and dynamic, for each QUANT_ELEMENTS_PER_THREAD."""
    default = triton_kernels.QUANT_ELEMENTS_PER_THREAD
    print("N | quant elems/thread | warps | quant static | quant dynamic", flush=True)
    scale = torch.tensor([0.02], device="cuda")
    for n in ns:
        x = torch.randn(ELEMENTS // n, n, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        for elements in QUANT_ELEMENTS_PER_THREAD:
            triton_kernels.QUANT_ELEMENTS_PER_THREAD = elements
            triton_kernels.forget_launch_choices()
            warps = triton_kernels.tile_config(n, "quant").num_warps
            static = median_ms(lambda: triton_kernels.rms_norm_quant_fwd(x, None, w, 0.0, 1e-6, False, scale, None))
            dynamic = median_ms(lambda: triton_kernels.rms_norm_quant_fwd(x, None, w, 0.0, 1e-6, False, None, None))
            print(
                f"{n} | {elements} | {warps} | {_percent(static, 1.5, x, ceiling):.1f} | "
                f"{_percent(dynamic, 1.5, x, ceiling):.1f}",
                flush=True,
            )
    triton_kernels.QUANT_ELEMENTS_PER_THREAD = default
    triton_kernels.forget_launch_choices()


# The split-row forward (`--split`, rows over FWD_MAX_TILE_N): chunk width, fp32 elements a thread,
# the lag between a chunk's sum and its normalization (bytes moved meanwhile).
SPLIT_NS = (65536, 131072, 262144, 524288, 1048576)
SPLIT_TILES = ((4096, 32), (4096, 64), (8192, 64), (2048, 32), (16384, 64))  # (chunk, fp32 elements a thread)
SPLIT_LAG_BYTES = (8 << 20, 12 << 20)
_SPLIT_CONSTANTS = ("FWD_SPLIT_CHUNK_N", "FWD_SPLIT_ELEMENTS_PER_THREAD", "FWD_SPLIT_LAG_BYTES")


def _configure_split(values: tuple) -> None:
    for name, value in zip(_SPLIT_CONSTANTS, values):
        setattr(triton_kernels, name, value)
    triton_kernels.forget_launch_choices()


def _split_sweep(ns: list[int], ceiling: float, baseline: str | None) -> None:
    """rms_norm and add_rms_norm forward on split rows for each candidate; `baseline`: a folder holding
    an older triton_kernels.py (with its reference.py and triton_launch.py), timed beside them."""
    old = None
    if baseline:
        sys.path.insert(0, baseline)
        old = importlib.import_module("old_triton.triton_kernels")
    defaults = tuple(getattr(triton_kernels, name) for name in _SPLIT_CONSTANTS)
    candidates = [(*tile, lag) for tile, lag in itertools.product(SPLIT_TILES, SPLIT_LAG_BYTES)]
    print("N | M | chunk | elems/thread | warps | lag MiB | fwd | add fwd | max |y - F.rms_norm|", flush=True)
    for n in ns:
        m = max(256, ELEMENTS // n)
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        residual = torch.randn_like(x)
        w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        expected = torch.nn.functional.rms_norm(x.float(), (n,), w.float(), 1e-6)
        if old is not None:
            fwd = median_ms(lambda: old.rms_norm_fwd(x, None, w, 0.0, 1e-6))
            add = median_ms(lambda: old.rms_norm_fwd(x, residual, w, 0.0, 1e-6))
            print(f"{n} | {m} | baseline | | | | {_percent(fwd, 2, x, ceiling):.1f} | "
                  f"{_percent(add, 4, x, ceiling):.1f} |", flush=True)  # fmt: skip
        for candidate in candidates:
            _configure_split(candidate)
            warps = triton_kernels.tile_config(n).num_warps
            error = (triton_kernels.rms_norm_fwd(x, None, w, 0.0, 1e-6)[0].float() - expected).abs().max().item()
            fwd = median_ms(lambda: triton_kernels.rms_norm_fwd(x, None, w, 0.0, 1e-6))
            add = median_ms(lambda: triton_kernels.rms_norm_fwd(x, residual, w, 0.0, 1e-6))
            chunk, elements, lag = candidate
            print(
                f"{n} | {m} | {chunk} | {elements} | {warps} | {lag >> 20} | {_percent(fwd, 2, x, ceiling):.1f} | "
                f"{_percent(add, 4, x, ceiling):.1f} | {error:.3g}",
                flush=True,
            )
    _configure_split(defaults)


# The backward's software pipelining (`--bwd`): fp32 elements a thread, programs an SM and the
# stages of its persistent loop (num_stages: the next tiles' loads in flight, through shared
# memory). None: the default. Timed in ROUNDS interleaved rounds (the median), because one timing
# of a latency-bound kernel read up to 17 points off the next one of the same kernel (v0.24).
# Widths up to BWD_MAX_TILE_N: wider rows take the one-pass kernel (`--split-bwd`).
BWD_SWEEP_NS = (1024, 2048, 4096, 5120, 8192)
# None: the defaults; a string: the defaults with dx stored with that cache modifier
# (BWD_DX_CACHE_MODIFIER, ".cs" by default); a tuple: (elements a thread, programs an SM, stages).
BWD_CANDIDATES = (None, "", ".cg", (16, 2, 1), (16, 1, 4), (32, 1, 4))
ROUNDS = 3
_BWD_CONSTANTS = ("ELEMENTS_PER_THREAD", "BWD_PIPELINE", "BWD_DX_CACHE_MODIFIER")


def _configure_bwd(values: tuple) -> None:
    """values: those of _BWD_CONSTANTS."""
    for name, value in zip(_BWD_CONSTANTS, values):
        setattr(triton_kernels, name, value)
    triton_kernels.forget_launch_choices()


def _bwd_values(candidate: tuple | str | None, defaults: tuple) -> tuple:
    """_BWD_CONSTANTS' values for a candidate of BWD_CANDIDATES; a tuple's dx is stored as by default."""
    if candidate is None:
        return defaults
    if isinstance(candidate, str):
        return (*defaults[:2], candidate)
    elements, programs, stages = candidate
    return (elements, ((triton_kernels.BWD_MAX_TILE_N, programs, stages),), defaults[2])


def _bwd_sweep(ns: list[int], ceiling: float) -> None:
    """The backward alone for each of BWD_CANDIDATES, every width alike."""
    defaults = tuple(getattr(triton_kernels, name) for name in _BWD_CONSTANTS)
    print("N | elems/thread | warps | programs/SM | stages | bwd (median of rounds) | rounds", flush=True)
    for n in ns:
        x = torch.randn(ELEMENTS // n, n, device="cuda", dtype=torch.bfloat16)
        dy = torch.randn_like(x)
        w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        _, rstd = torch.ops.rmsnorm.rms_norm_fwd_triton(x, w, 0.0, 1e-6, False)
        cells: dict = {c: [] for c in BWD_CANDIDATES}
        for _ in range(ROUNDS):
            for candidate in BWD_CANDIDATES:
                _configure_bwd(_bwd_values(candidate, defaults))
                try:
                    ms = median_ms(lambda: triton_kernels.rms_norm_bwd(dy, x, None, w, 0.0, rstd, True))
                    cells[candidate].append(_percent(ms, 3, x, ceiling))
                except Exception as exc:  # out of shared memory, say
                    cells[candidate].append(float("nan"))
                    print(f"{n} {candidate}: {str(exc).splitlines()[0][:80]}", flush=True)
        for candidate, values in cells.items():
            _configure_bwd(_bwd_values(candidate, defaults))
            warps = triton_kernels.tile_config(n, "backward").num_warps
            if isinstance(candidate, tuple):
                label, rest = f"{candidate[0]} | ", f"{warps} | {candidate[1]} | {candidate[2]}"
            else:
                label, rest = "default | ", f"{warps} | | dx {triton_kernels.BWD_DX_CACHE_MODIFIER!r}"
            rounds = " / ".join(f"{v:.1f}" for v in values)
            print(f"{n} | {label}{rest} | {statistics.median(values):.1f} | {rounds}", flush=True)
    _configure_bwd(defaults)


# The one-pass backward of wide rows (`--split-bwd`, rms_norm_bwd_split_kernel): (columns a chunk of
# 16-bit rows up to BWD_SPLIT_NARROW_MAX_N, least columns a chunk of wider 16-bit rows, of fp32 rows,
# fp32 elements a thread, lag rows, dx's store cache modifier), or None for the two passes it replaces
# (a dot-product kernel, then dx from a second read of x and dy).
SPLIT_BWD_NS = (12288, 16384, 32768, 65536, 131072, 262144, 524288, 1048576)
# The plan differs by element size (_bwd_split_plan): 16-bit and fp32 rows.
SPLIT_BWD_DTYPES = (torch.bfloat16, torch.float32)
SPLIT_BWD_CANDIDATES = (
    None, (1024, 2048, 4096, 32, 1, ".cs"), (1024, 2048, 4096, 32, 1, ""), (2048, 2048, 4096, 32, 1, ".cs"),
    (1024, 4096, 8192, 32, 1, ".cs"),
)
_SPLIT_BWD_CONSTANTS = (
    "BWD_SPLIT_NARROW_CHUNK_N", "BWD_SPLIT_CHUNK_N", "BWD_SPLIT_FP32_CHUNK_N", "BWD_SPLIT_ELEMENTS_PER_THREAD",
    "BWD_SPLIT_LAG_ROWS", "BWD_SPLIT_DX_CACHE_MODIFIER",
)


def _split_bwd_sweep(ns: list[int], ceiling: float) -> None:
    """The backward alone of rows split into chunks, for each candidate, beside the two passes;
    rounds interleaved as in `--bwd`. The last column: the largest difference from the two passes'
    dx, or from their dweight over sqrt(M)."""
    defaults = tuple(getattr(triton_kernels, name) for name in _SPLIT_BWD_CONSTANTS)
    one_pass = triton_kernels._backward_split

    def configure(candidate: tuple | None) -> None:
        triton_kernels._backward_split = one_pass if candidate else (lambda *args: None)
        for name, value in zip(_SPLIT_BWD_CONSTANTS, candidate or defaults):
            setattr(triton_kernels, name, value)
        triton_kernels.forget_launch_choices()

    print("dtype | N | M | narrow chunk | least wide chunk | least fp32 chunk | elems/thread | lag rows"
          " | dx cache modifier | bwd (median of rounds) | rounds | max difference", flush=True)  # fmt: skip
    for dtype, n in ((dtype, n) for dtype in SPLIT_BWD_DTYPES for n in ns):
        m = max(256, ELEMENTS // n)
        x = torch.randn(m, n, device="cuda", dtype=dtype)
        dy = torch.randn_like(x)
        w = torch.randn(n, device="cuda", dtype=dtype)
        _, rstd = torch.ops.rmsnorm.rms_norm_fwd_triton(x, w, 0.0, 1e-6, False)
        cells: dict = {c: [] for c in SPLIT_BWD_CANDIDATES}
        errors: dict = {}
        for _ in range(ROUNDS):
            for candidate in SPLIT_BWD_CANDIDATES:
                configure(candidate)
                try:
                    if candidate not in errors:
                        dx, dw = triton_kernels.rms_norm_bwd(dy, x, None, w, 0.0, rstd, True)
                        if candidate is None:
                            baseline = dx.float(), dw.float()
                        errors[candidate] = max((dx.float() - baseline[0]).abs().max().item(),
                                                (dw.float() - baseline[1]).abs().max().item() / m**0.5)  # fmt: skip
                    ms = median_ms(lambda: triton_kernels.rms_norm_bwd(dy, x, None, w, 0.0, rstd, True))
                    cells[candidate].append(_percent(ms, 3, x, ceiling))
                except Exception as exc:  # a grid the GPU cannot hold, say
                    cells[candidate].append(float("nan"))
                    print(f"{n} {candidate}: {str(exc).splitlines()[0][:100]}", flush=True)
        for candidate, values in cells.items():
            label = "two passes | | | | | " if candidate is None else " | ".join(map(_cell, candidate))
            rounds = " / ".join(f"{v:.1f}" for v in values)
            error = errors.get(candidate, float("nan"))
            print(f"{str(dtype)[6:]} | {n} | {m} | {label} | {statistics.median(values):.1f} | {rounds} | {error:.3g}",
                  flush=True)  # fmt: skip
    configure(None)


# `--constants`: each of --modes (by default the backward alone and the forward+backward through
# autograd; also the forward and add_rms_norm's forward, without grad), backend "triton", as
# bench.sweep times them, with triton_kernels' constants as they are and as each candidate sets them,
# in ROUNDS interleaved rounds: a change behind a constant timed beside the code it replaces.
CONSTANTS_NS = (512, 1024, 4096, 8192, 16384, 65536)


def _parse_candidate(text: str) -> dict:
    """"NAME=VALUE,NAME=VALUE" (each VALUE a Python literal, a tuple's commas included) as {NAME:
    value}, every NAME a constant of triton_kernels."""
    candidate = {}
    for item in re.split(r",(?=[A-Za-z_]\w*=)", text):
        name, _, value = item.partition("=")
        if not hasattr(triton_kernels, name):
            raise SystemExit(f"triton_kernels has no constant {name!r}")
        candidate[name] = ast.literal_eval(value)
    return candidate


def _constants_sweep(
    ns: list[int], ceiling: float, candidates: list[dict], dtypes: list[str], modes: list[str]
) -> None:
    defaults = {name: getattr(triton_kernels, name) for candidate in candidates for name in candidate}
    labels = ["as is", *(",".join(f"{k}={v!r}" for k, v in c.items()) for c in candidates)]
    # Each candidate over the defaults: a constant one candidate sets is as is in the others.
    settings = [defaults, *({**defaults, **candidate} for candidate in candidates)]
    print("dtype | N | mode | candidate | % of copy (median of rounds) | rounds", flush=True)
    for dtype, n in ((dtype, n) for dtype in dtypes for n in ns):
        m = ELEMENTS // n
        x, w, dy = random_case(m, n, torch_dtype(dtype))
        for mode in modes:
            cells: list[list[float]] = [[] for _ in settings]
            for _ in range(ROUNDS):
                for values, cell in zip(settings, cells):
                    for name, value in values.items():
                        setattr(triton_kernels, name, value)
                    triton_kernels.forget_launch_choices()
                    with torch.set_grad_enabled(mode in (BACKWARD, FORWARD_BACKWARD)):
                        ms = time_call(_constants_call(mode, x, w, dy)).ms
                    cell.append(percent_of_ceiling(bytes_moved(mode, m, n, dtype), ms, ceiling))
            for label, cell in zip(labels, cells):
                rounds = " / ".join(f"{v:.1f}" for v in cell)
                print(f"{dtype} | {n} | {mode} | {label} | {statistics.median(cell):.1f} | {rounds}", flush=True)
        del x, w, dy
    for name, value in defaults.items():
        setattr(triton_kernels, name, value)
    triton_kernels.forget_launch_choices()


def _constants_call(mode: str, x: torch.Tensor, weight: torch.Tensor, dy: torch.Tensor):
    """One call of `mode` on triton, as the benchmark times it: add-forward takes dy as its residual
    (as random as one), and it and the forward run without grad."""
    if mode == ADD_FORWARD:
        return lambda: rmsnorm.add_rms_norm(x, dy, weight, EPS, backend="triton")
    return mode_call(_triton_rms_norm, mode, x, weight, dy)


def _triton_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rmsnorm.rms_norm(x, (x.shape[-1],), weight, eps, backend="triton")


def _cell(value: int | str) -> str:
    return repr(value) if isinstance(value, str) else str(value)  # "" shows as ''


def _percent(ms: float, tensors: float, x: torch.Tensor, ceiling_gbps: float) -> float:
    return percent_of_ceiling(tensors * x.numel() * x.element_size(), ms, ceiling_gbps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", help="row widths, e.g. 16384,32768 (default: NS, or SPLIT_NS with --split)")
    parser.add_argument("--quant", action="store_true", help="sweep the quantizing forward's tile alone")
    parser.add_argument("--split", action="store_true", help="sweep the split-row forward (default ns: SPLIT_NS)")
    parser.add_argument("--baseline", help="with --split: a folder holding old_triton/, timed beside")
    parser.add_argument("--bwd", action="store_true", help="sweep the backward's pipelining (default ns: BWD_SWEEP_NS)")
    parser.add_argument("--split-bwd", action="store_true", help="sweep the one-pass wide-row backward (SPLIT_BWD_NS)")
    parser.add_argument(
        "--constants", nargs="+", metavar="NAME=VALUE[,NAME=VALUE]",
        help="time --modes with triton_kernels' constants as they are and as each candidate sets them"
        " (default ns: CONSTANTS_NS)",
    )  # fmt: skip
    parser.add_argument("--dtypes", nargs="+", choices=("bf16", "fp16", "fp32"), default=["bf16"],
                        help="with --constants: of x, dy and the weight")  # fmt: skip
    parser.add_argument("--modes", nargs="+", choices=(FORWARD, ADD_FORWARD, BACKWARD, FORWARD_BACKWARD),
                        default=[BACKWARD, FORWARD_BACKWARD], help="with --constants: what to time")  # fmt: skip
    args = parser.parse_args()
    default_ns = (
        SPLIT_NS if args.split else BWD_SWEEP_NS if args.bwd else SPLIT_BWD_NS if args.split_bwd
        else CONSTANTS_NS if args.constants else NS
    )  # fmt: skip
    ns = [int(n) for n in args.ns.split(",")] if args.ns else list(default_ns)
    ceiling = copy_ceiling()["gbps"]
    print(f"copy ceiling {ceiling:.0f} GB/s; bf16, M*N = 2^27; % of the ceiling", flush=True)
    if args.split:
        _split_sweep(ns, ceiling, args.baseline)
        return
    if args.bwd:
        _bwd_sweep(ns, ceiling)
        return
    if args.split_bwd:
        _split_bwd_sweep(ns, ceiling)
        return
    if args.constants:
        _constants_sweep(ns, ceiling, [_parse_candidate(text) for text in args.constants], args.dtypes, args.modes)
        return
    if args.quant:
        _quant_sweep(ns, ceiling)
        return
    defaults = (triton_kernels.ELEMENTS_PER_THREAD, triton_kernels.MAX_NUM_WARPS)
    print(
        "N | elems/thread | max warps | fwd | add fwd | bwd | quant static | quant dynamic",
        flush=True,
    )
    scale = torch.tensor([0.02], device="cuda")
    for n in ns:
        x = torch.randn(ELEMENTS // n, n, device="cuda", dtype=torch.bfloat16)
        residual, dy = torch.randn_like(x), torch.randn_like(x)
        w = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        _, rstd = torch.ops.rmsnorm.rms_norm_fwd_triton(x, w, 0.0, 1e-6, False)
        for elements, warps in itertools.product(ELEMENTS_PER_THREAD, MAX_NUM_WARPS):
            _configure(elements, warps)
            fwd = median_ms(lambda: torch.ops.rmsnorm.rms_norm_fwd_triton(x, w, 0.0, 1e-6, False))
            add = median_ms(lambda: torch.ops.rmsnorm.add_rms_norm_fwd_triton(x, residual, w, 0.0, 1e-6, False))
            bwd = median_ms(lambda: torch.ops.rmsnorm.rms_norm_bwd_triton(dy, x, None, w, 0.0, rstd, True, False))
            static = median_ms(lambda: triton_kernels.rms_norm_quant_fwd(x, None, w, 0.0, 1e-6, False, scale, None))
            dynamic = median_ms(lambda: triton_kernels.rms_norm_quant_fwd(x, None, w, 0.0, 1e-6, False, None, None))
            print(
                f"{n} | {elements} | {warps} | {_percent(fwd, 2, x, ceiling):.1f} | "
                f"{_percent(add, 4, x, ceiling):.1f} | {_percent(bwd, 3, x, ceiling):.1f} | "
                # rms_norm_quant reads 2 bytes and writes 1 an element: 1.5 bf16 tensors
                f"{_percent(static, 1.5, x, ceiling):.1f} | {_percent(dynamic, 1.5, x, ceiling):.1f}",
                flush=True,
            )
    _configure(*defaults)


if __name__ == "__main__":
    assert rmsnorm.available_backends()[0] == "triton", "needs a CUDA GPU"
    main()
