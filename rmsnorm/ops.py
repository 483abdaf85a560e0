"""Our kernels as torch operators: schemas, fake implementations and autograd.

Each kernel backend has a forward op, (x [rows, n], weight [n] or None, eps) -> (y [rows, n],
rstd [rows] fp32), and a backward op, (dy, x, weight, rstd, needs_dweight) -> (dx, dweight or an
empty tensor). The Triton ops are defined here with torch.library.custom_op; the CUDA ops are
declared by csrc/bindings.cpp (TORCH_LIBRARY rmsnorm_cuda) and get their fake implementations and
autograd here, once cuda_ext has loaded the library. Real operators with fake implementations are
what lets torch.compile(fullgraph=True) and CUDA graphs take the kernels as they are.
"""

from __future__ import annotations

import torch

# Returned as the dweight of a backward op that was not asked for one: schemas have no Optional outputs.
NO_DWEIGHT_NUMEL = 0


def unit_column_stride(t: torch.Tensor) -> torch.Tensor:
    """t, [rows, n], with a contiguous last dim: itself when it has one (any row stride), else a copy."""
    return t if t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


@torch.library.custom_op("rmsnorm::rms_norm_fwd_triton", mutates_args=())
def rms_norm_fwd_triton(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton_kernels  # Triton decides at import whether it interprets: import on first use

    return triton_kernels.rms_norm_fwd(unit_column_stride(x), weight, eps)


@torch.library.custom_op("rmsnorm::rms_norm_bwd_triton", mutates_args=())
def rms_norm_bwd_triton(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor, needs_dweight: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton_kernels

    dx, dweight = triton_kernels.rms_norm_bwd(unit_column_stride(dy), unit_column_stride(x), weight, rstd, needs_dweight)
    return dx, dweight if dweight is not None else x.new_empty(NO_DWEIGHT_NUMEL)


def _fake_fwd(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape[0], dtype=torch.float32)


def _fake_bwd(dy, x, weight, rstd, needs_dweight) -> tuple[torch.Tensor, torch.Tensor]:
    dweight = weight.new_empty(x.shape[1]) if needs_dweight and weight is not None else x.new_empty(NO_DWEIGHT_NUMEL)
    return x.new_empty(x.shape), dweight


def _setup_context(ctx, inputs, output) -> None:
    x, weight, _eps = inputs
    _y, rstd = output
    ctx.save_for_backward(x, weight, rstd)


def _backward_through(bwd_op):
    """The autograd formula of a forward op: its backward op, on the saved x, weight and rstd."""

    def backward(ctx, dy: torch.Tensor, _drstd: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        needs_dweight = weight is not None and ctx.needs_input_grad[1]
        dx, dweight = bwd_op(unit_column_stride(dy), x, weight, rstd, needs_dweight)
        return dx, dweight if needs_dweight else None, None

    return backward


def _register(fwd_name: str, bwd_name: str) -> None:
    torch.library.register_fake(fwd_name, _fake_fwd)
    torch.library.register_fake(bwd_name, _fake_bwd)
    namespace, name = bwd_name.split("::")
    bwd_op = getattr(getattr(torch.ops, namespace), name)
    torch.library.register_autograd(fwd_name, _backward_through(bwd_op), setup_context=_setup_context)


_register("rmsnorm::rms_norm_fwd_triton", "rmsnorm::rms_norm_bwd_triton")


def register_cuda_ops() -> None:
    """Fake implementations and autograd of the CUDA ops; cuda_ext calls it once, after loading them."""
    _register("rmsnorm_cuda::rms_norm_fwd", "rmsnorm_cuda::rms_norm_bwd")
