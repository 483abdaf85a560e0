"""Where the host time of one small call goes: each layer of rms_norm timed on its own.

`python -m bench.host_breakdown` times, per call, bf16 x of [1, 4096] without grad (the decode case
of the latency table), from F.rms_norm to the raw Triton launch: the whole call, the validation,
the backend choice, the torch operator (with and without autograd's Python kernel above it), the
Triton host wrapper, and the bare kernel launch; then the same x through a forward+backward (the
training step of the latency table's "fwd+bwd host" column) and its layers. The GPU work per call
is a few microseconds, so the wall time of a long run of calls is the host's. Prints one table
(microseconds per call), then a profile of Triton's training step.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from typing import Callable

import torch
import torch.nn.functional as F

import rmsnorm
from rmsnorm import functional, ops, triton_kernels

CALLS = 3000
TOP = 25  # functions printed from the training step's profile
N = 4096
EPS = 1e-6


def host_us(fn: Callable[[], object]) -> float:
    """Wall microseconds per call over CALLS calls, after as many untimed ones; best of three."""
    for _ in range(CALLS):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / CALLS * 1e6)
    return best


def layers() -> dict[str, Callable[[], object]]:
    x = torch.randn(1, N, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    rstd = torch.empty(1, device="cuda")
    cfg = triton_kernels.tile_config(N)
    sizes, strides = triton_kernels.row_layout(x)
    args = (x, x, w, y, y, rstd, rstd, x, *sizes, *strides, *strides, 1, N, EPS, 0.0)
    constexprs = {
        "HAS_RESIDUAL": False, "HAS_WEIGHT": True, "STORE_RSTD": True, "ROUND_XHAT": False,
        "QUANT": triton_kernels.NO_QUANT.value, "HAS_SCALE_UB": False, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
    }  # fmt: skip
    cases = {
        "F.rms_norm": lambda: F.rms_norm(x, (N,), w, EPS),
        "torch.empty x2 (the outputs)": lambda: (torch.empty_like(x), torch.empty(1, device="cuda")),
        "rms_norm: validation (_check_args)": lambda: functional._check_args(x, None, w, EPS, 0.0, "cuda", "fp32"),
        "rms_norm: backend choice (_resolve_backend)": lambda: functional._resolve_backend(
            "auto", "cuda", x.dtype, w.dtype, False
        ),
        "rms_norm: as_rows": lambda: functional.as_rows(x, N),
        "triton: raw kernel launch (kernel[grid])": lambda: triton_kernels.rms_norm_fwd_kernel[(1,)](
            *args, **constexprs, num_warps=cfg.num_warps, enable_fp_fusion=False
        ),
        "triton: KernelLauncher, compiled kernel cached": lambda: triton_kernels._launch_fwd(
            (1,), args, constexprs, cfg.num_warps, x.device.index
        ),
        "triton: host wrapper (triton_kernels.rms_norm_fwd)": lambda: triton_kernels.rms_norm_fwd(
            x, None, w, 0.0, EPS
        ),
        "triton: host wrapper without rstd (inference)": lambda: triton_kernels.rms_norm_fwd(
            x, None, w, 0.0, EPS, False, False
        ),
        "triton: inference forward from its plan (rms_norm_fwd_planned)": lambda: (
            triton_kernels.rms_norm_fwd_planned(x, w, 0.0, EPS, False, False)
        ),
        "triton: training forward from its plan, rstd too": lambda: (
            triton_kernels.rms_norm_fwd_planned(x, w, 0.0, EPS, False, True)
        ),
        "triton: torch op (custom_op)": lambda: torch.ops.rmsnorm.rms_norm_fwd_triton(x, w, 0.0, EPS, False),
        "triton: rms_norm(backend='triton')": lambda: rmsnorm.rms_norm(x, (N,), w, EPS, backend="triton"),
    }
    if "cuda" in rmsnorm.available_backends():
        rmsnorm.cuda_ext.load()
        op = torch.ops.rmsnorm_cuda.rms_norm_fwd.default
        below_autograd = ops._below_autograd(op)
        untracked, _ = ops.untracked_forward_ops("cuda")
        cases |= {
            "cuda: torch op (C++ kernel + Python autograd kernel)": lambda: op(x, w, 0.0, EPS, False),
            "cuda: torch op below autograd": lambda: below_autograd(x, w, 0.0, EPS, False),
            "cuda: direct entry, no dispatcher (inference)": lambda: untracked(x, w, 0.0, EPS, False),
            "cuda: rms_norm(backend='cuda')": lambda: rmsnorm.rms_norm(x, (N,), w, EPS, backend="cuda"),
        }
    cases["forward_ops lookup"] = lambda: ops.forward_ops("triton")
    return cases | training_layers(x, w)


def _on_this_thread(step: Callable[[], object]) -> object:
    """step with autograd's backward run on the calling thread instead of its device thread: the
    difference from the plain step is the cost of handing the backward (and the GIL) to that thread."""
    with torch.autograd.set_multithreading_enabled(False):
        return step()


def _backward_replay(y: torch.Tensor, xg: torch.Tensor, wg: torch.Tensor, dy: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.autograd.grad(y, (xg, wg), dy, retain_graph=True)


def training_layers(x: torch.Tensor, w: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The layers of a forward+backward through autograd (the latency table's "fwd+bwd host"): the
    whole step, the same step through the torch operators (the path before bench/NOTES.md v0.17),
    the backward alone as the sweep's backward mode times it, the forward recorded by autograd, and
    the backward op and its host wrapper called on this thread, where autograd runs them on its
    device thread."""
    xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
    dy = torch.randn_like(x)
    rstd = torch.rsqrt(x.float().square().mean(-1) + EPS)
    cases = {
        "F.rms_norm forward+backward": lambda: torch.autograd.grad(F.rms_norm(xg, (N,), wg, EPS), (xg, wg), dy),
        "F.rms_norm backward alone": _backward_replay(F.rms_norm(xg, (N,), wg, EPS), xg, wg, dy),
    }
    backends = ["triton"] + (["cuda"] if "cuda" in rmsnorm.available_backends() else [])
    if "cuda" in backends:
        rmsnorm.cuda_ext.load()  # torch.ops.rmsnorm_cuda exists once loaded, and this may run first
    for backend in backends:
        bwd_op = torch.ops.rmsnorm.rms_norm_bwd_triton if backend == "triton" else torch.ops.rmsnorm_cuda.rms_norm_bwd

        def step(backend: str = backend) -> object:
            return torch.autograd.grad(rmsnorm.rms_norm(xg, (N,), wg, EPS, backend=backend), (xg, wg), dy)

        cases |= {
            f"{backend}: forward+backward (autograd.grad)": step,
            f"{backend}: forward+backward through the torch operators": lambda fwd_op=ops.forward_ops(backend)[0]: (
                torch.autograd.grad(fwd_op(xg, wg, 0.0, EPS, False)[0], (xg, wg), dy)
            ),
            f"{backend}: forward+backward, backward on this thread": lambda step=step: _on_this_thread(step),
            f"{backend}: backward alone (one graph replayed, as the sweep times it)": _backward_replay(
                rmsnorm.rms_norm(xg, (N,), wg, EPS, backend=backend), xg, wg, dy
            ),
            f"{backend}: forward recorded by autograd": lambda backend=backend: rmsnorm.rms_norm(
                xg, (N,), wg, EPS, backend=backend
            ),
            f"{backend}: backward op, dweight too": lambda bwd_op=bwd_op: bwd_op(
                dy, x, None, w, 0.0, rstd, True, False
            ),
        }
    wrapper = "triton: backward host wrapper, from its plan (triton_kernels.rms_norm_bwd)"
    cases[wrapper] = lambda: triton_kernels.rms_norm_bwd(dy, x, None, w, 0.0, rstd, True)
    return cases


def profile(name: str, fn: Callable[[], object], calls: int = CALLS, top: int = TOP) -> None:
    """cProfile of `calls` calls of fn, already warm: the `top` functions with the most time of their
    own (cProfile inflates Python calls: read shares, not absolute numbers)."""
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    profiler.disable()
    print(f"=== {name}, {calls} calls", flush=True)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main() -> None:
    print(f"host time per call, bf16 [1, {N}], no grad inputs; {torch.cuda.get_device_name()}", flush=True)
    cases = layers()
    for name, fn in cases.items():
        print(f"{host_us(fn):8.1f} us  {name}", flush=True)
    # Its backward on this thread, where the profile sees it.
    on_this_thread = "triton: forward+backward, backward on this thread"
    profile(on_this_thread, cases[on_this_thread])


if __name__ == "__main__":
    main()
