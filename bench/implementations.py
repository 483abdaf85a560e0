"""The registry of what is timed: the library's backends, the PyTorch baselines and the peers.

Every implementation is a function ``(x [M, N], weight [N], eps) -> y [M, N]`` of x's dtype that autograd
can differentiate with respect to x and weight; some also have a fused add+norm for the add-forward mode,
``(x, residual, weight, eps) -> (y, residual_out)``. One that cannot be loaded here (a peer not installed,
the CUDA extension failing to build) is recorded with the reason and left out; the run goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from bench.cases import EPS
from bench.errors import first_line

# (x [M, N], weight [N], eps) -> y [M, N], all tensors of x's dtype
NormFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
# (x [M, N], residual [M, N], weight [N], eps) -> (y [M, N], residual_out [M, N]), all of x's dtype
AddNormFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]

# Tiny problem every implementation runs once at load time, so that one that cannot build or launch is
# reported once, with its reason, instead of failing every case.
PROBE_SHAPE = (4, 256)


@dataclass(frozen=True)
class Implementation:
    """One column of the results."""

    name: str  # column label and --impls name
    group: str  # "ours", "baseline" (PyTorch) or "peer"
    fn: NormFn
    # Guessed seconds of the first call on a new (dtype, N) and grad mode (JIT or compile), used only by
    # the printed run-time estimate; results.json records the measured first_call_s to correct it.
    first_call_guess_s: float
    add_fn: AddNormFn | None = None  # its fused add+norm; None where it has none or that failed to load


def hf_llama_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Hugging Face's LlamaRMSNorm.forward: fp32 statistics, x_hat rounded to x's dtype before the weight."""
    input_dtype = x.dtype
    hidden = x.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    return weight * hidden.to(input_dtype)


def torch_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The add+norm as users write it in PyTorch: the sum in x's dtype (one rounding), then F.rms_norm."""
    residual_out = x + residual
    return torch.nn.functional.rms_norm(residual_out, (x.shape[-1],), weight, eps), residual_out


def _probe(fn: NormFn) -> None:
    x = torch.randn(PROBE_SHAPE, device="cuda", dtype=torch.bfloat16)
    fn(x, torch.randn(PROBE_SHAPE[-1:], device="cuda", dtype=torch.bfloat16), EPS)
    torch.cuda.synchronize()


def _probe_add(fn: AddNormFn) -> None:
    x, residual = (torch.randn(PROBE_SHAPE, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    fn(x, residual, torch.randn(PROBE_SHAPE[-1:], device="cuda", dtype=torch.bfloat16), EPS)
    torch.cuda.synchronize()


def _ours(backend: str) -> NormFn:
    import rmsnorm

    def fn(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rmsnorm.rms_norm(x, (x.shape[-1],), weight, eps, backend=backend)

    listed = rmsnorm.available_backends()
    if backend != "auto" and backend not in listed:
        _probe(fn)  # its error, e.g. the extension's build failure, is the better reason to report
        raise RuntimeError(f"backend {backend!r} not in rmsnorm.available_backends() = {listed}")
    return fn


def _ours_add(backend: str) -> AddNormFn:
    # Loaded only once _ours(backend) has loaded: a backend missing here is reported there.
    import rmsnorm

    def fn(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
        return rmsnorm.add_rms_norm(x, residual, weight, eps, backend=backend)

    return fn


def _torch_functional() -> NormFn:
    def fn(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)

    return fn


def _torch_compile() -> NormFn:
    # The backward-alone mode replays one autograd graph with retain_graph=True, which AOTAutograd
    # refuses for a backward compiled with donated buffers; donation saves memory, not bandwidth.
    import torch._functorch.config

    torch._functorch.config.donated_buffer = False
    return torch.compile(hf_llama_rms_norm, dynamic=False)


def _torch_compile_add() -> AddNormFn:
    # What Inductor makes of the eager formula: it fuses the add into the norm's kernel.
    return torch.compile(torch_add_rms_norm, dynamic=False)


def _liger() -> NormFn:
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    def fn(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # offset 0, Llama casting, in_place=False: in place, Liger writes dx into dy, which the
        # backward-alone mode passes again on every call.
        return LigerRMSNormFunction.apply(x, weight, eps, 0.0, "llama", False)

    return fn


def _quack() -> NormFn:
    # quack/__init__.py re-exports the function under the submodule's name, so `quack.rmsnorm` is
    # the function, not the module.
    from quack import rmsnorm as quack_rmsnorm

    def fn(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return quack_rmsnorm(x, weight, eps=eps)

    return fn


def _quack_add() -> AddNormFn:
    from quack import rmsnorm as quack_rmsnorm

    def fn(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
        # quack 0.6.5: with a residual and prenorm=True it returns (out, residual_out), the sum taken
        # in fp32 and stored in residual's dtype. It normalizes the fp32 sum, not the stored one as the
        # reference does: half an ulp of difference per element, inside the check's tolerance.
        return quack_rmsnorm(x, weight, residual=residual, eps=eps, prenorm=True)

    return fn


# name -> (group, loader, first-call guess in seconds), in the column order of every table and plot.
# The guesses: a Triton kernel compiles in ~0.1-0.3 s, Inductor needs ~1-2 s per graph, a CuTe DSL
# kernel ~1 s; "auto" reuses the JIT of the backend it picks.
REGISTRY: dict[str, tuple[str, Callable[[], NormFn], float]] = {
    "ours-triton": ("ours", lambda: _ours("triton"), 0.3),
    "ours-cuda": ("ours", lambda: _ours("cuda"), 0.02),
    "ours-auto": ("ours", lambda: _ours("auto"), 0.02),
    "hf-eager": ("baseline", lambda: hf_llama_rms_norm, 0.01),
    "torch-F": ("baseline", _torch_functional, 0.01),
    "torch-compile": ("baseline", _torch_compile, 1.5),
    "liger": ("peer", _liger, 0.3),
    "quack": ("peer", _quack, 1.0),
}
ALL_NAMES = tuple(REGISTRY)

# name -> loader of its fused add+norm, for the implementations that have one. torch-F's is the eager
# formula and torch-compile's that formula compiled (hf-eager has none of its own: Hugging Face models
# add in the model's code, as torch-F's formula does).
ADD_REGISTRY: dict[str, Callable[[], AddNormFn]] = {
    "ours-triton": lambda: _ours_add("triton"),
    "ours-cuda": lambda: _ours_add("cuda"),
    "ours-auto": lambda: _ours_add("auto"),
    "torch-F": lambda: torch_add_rms_norm,
    "torch-compile": _torch_compile_add,
    "quack": _quack_add,
}


def _load_add(name: str) -> tuple[AddNormFn | None, str | None]:
    """(its fused add+norm, None) for a loaded implementation, or (None, why it has none here)."""
    try:
        fn = ADD_REGISTRY[name]()
        _probe_add(fn)
    except Exception as exc:  # as for the norm: data, not a crash
        return None, first_line(exc)
    return fn, None


def load_implementations(
    names: tuple[str, ...], with_add: bool = False
) -> tuple[list[Implementation], dict[str, dict]]:
    """Load and probe the named implementations, in registry order; ``with_add``: their add+norm too.

    Returns the ones that work here, and for every name a record {group, present, reason, load_s}:
    reason is the first line of the error that kept it out, load_s the seconds its import, build and
    probe took (the CUDA extension's build and Inductor's start-up show here). With ``with_add``, the
    record of a loaded name in ADD_REGISTRY also has add_present and add_reason.
    """
    loaded, records = [], {}
    for name in (n for n in ALL_NAMES if n in names):
        group, loader, guess = REGISTRY[name]
        start = time.perf_counter()
        try:
            fn = loader()
            _probe(fn)
        except Exception as exc:  # a missing peer or a failed build is data, not a crash
            records[name] = {"group": group, "present": False, "reason": first_line(exc)}
        else:
            records[name] = {"group": group, "present": True, "reason": None}
            add_fn = None
            if with_add and name in ADD_REGISTRY:
                add_fn, reason = _load_add(name)
                records[name].update(add_present=add_fn is not None, add_reason=reason)
            loaded.append(Implementation(name, group, fn, guess, add_fn))
        records[name]["load_s"] = round(time.perf_counter() - start, 3)
    return loaded, records
