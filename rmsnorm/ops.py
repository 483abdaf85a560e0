"""Our kernels as torch operators: schemas, fake implementations and autograd.

Each kernel backend has three ops on rows, [rows, n] tensors with a contiguous last dim:
  rms_norm_fwd(x, weight?, weight_offset, eps, round_xhat) -> (y, rstd)
  add_rms_norm_fwd(x, residual, weight?, weight_offset, eps, round_xhat) -> (y, residual_out, rstd)
  rms_norm_bwd(dy, x, dresidual_out?, weight?, weight_offset, rstd, needs_dweight, round_xhat) -> (dx, dweight)
where rstd is fp32 [rows], residual_out = x + residual in residual's dtype, dweight is an empty
tensor when it was not asked for (schemas have no optional outputs), and round_xhat is
casting_mode "llama": x * rstd rounded to x's dtype before the weight. The Triton ops are defined here
with torch.library.custom_op; the CUDA ops are declared by csrc/bindings.cpp (TORCH_LIBRARY
rmsnorm_cuda) and get their fake implementations and autograd here, once cuda_ext has loaded them.
Real operators with fake implementations are what lets torch.compile(fullgraph=True) and CUDA
graphs take the kernels as they are.
"""

from __future__ import annotations

import functools

import torch


def unit_column_stride(t: torch.Tensor) -> torch.Tensor:
    """t, [rows, n], with a contiguous last dim: itself when it has one (any row stride), else a copy."""
    return t if t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


def _no_dweight(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(0)


# --- the Triton ops ---------------------------------------------------------------------------
# triton_kernels is imported inside: Triton decides when its module is imported whether it
# interprets (TRITON_INTERPRET), so it is imported on first use, not with rmsnorm.


def _rms_norm_fwd_triton(
    x: torch.Tensor, weight: torch.Tensor | None, weight_offset: float, eps: float, round_xhat: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton_kernels

    y, _, rstd = triton_kernels.rms_norm_fwd(unit_column_stride(x), None, weight, weight_offset, eps, round_xhat)
    return y, rstd


def _add_rms_norm_fwd_triton(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None,
    weight_offset: float,
    eps: float,
    round_xhat: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton_kernels

    return triton_kernels.rms_norm_fwd(
        unit_column_stride(x), unit_column_stride(residual), weight, weight_offset, eps, round_xhat
    )


rms_norm_fwd_triton = torch.library.custom_op("rmsnorm::rms_norm_fwd_triton", mutates_args=())(_rms_norm_fwd_triton)
add_rms_norm_fwd_triton = torch.library.custom_op("rmsnorm::add_rms_norm_fwd_triton", mutates_args=())(
    _add_rms_norm_fwd_triton
)


@torch.library.custom_op("rmsnorm::rms_norm_bwd_triton", mutates_args=())
def rms_norm_bwd_triton(
    dy: torch.Tensor,
    x: torch.Tensor,
    dresidual_out: torch.Tensor | None,
    weight: torch.Tensor | None,
    weight_offset: float,
    rstd: torch.Tensor,
    needs_dweight: bool,
    round_xhat: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton_kernels

    dres = None if dresidual_out is None else unit_column_stride(dresidual_out)
    dx, dweight = triton_kernels.rms_norm_bwd(
        unit_column_stride(dy), unit_column_stride(x), dres, weight, weight_offset, rstd, needs_dweight, round_xhat
    )
    return dx, dweight if dweight is not None else _no_dweight(x)


# --- fake implementations and autograd, shared by both backends ---------------------------------


def _fake_rms_norm_fwd(x, weight, weight_offset, eps, round_xhat):
    return x.new_empty(x.shape), x.new_empty(x.shape[0], dtype=torch.float32)


def _fake_add_rms_norm_fwd(x, residual, weight, weight_offset, eps, round_xhat):
    return x.new_empty(x.shape), residual.new_empty(x.shape), x.new_empty(x.shape[0], dtype=torch.float32)


def _fake_rms_norm_bwd(dy, x, dresidual_out, weight, weight_offset, rstd, needs_dweight, round_xhat):
    dweight = weight.new_empty(x.shape[1]) if needs_dweight and weight is not None else _no_dweight(x)
    return x.new_empty(x.shape), dweight


def _autograd_for(bwd_op):
    """setup_context and backward of both forward ops, whose gradients come from bwd_op.

    rms_norm_fwd saves x; add_rms_norm_fwd saves residual_out, the tensor it normalized, and its
    backward adds the gradient arriving on residual_out to dx, which is then also the residual's.
    """

    def setup_context(ctx, inputs, output) -> None:
        has_residual = len(output) == 3
        if has_residual:
            _x, residual, weight, weight_offset, _eps, round_xhat = inputs
            _y, normalized, rstd = output
            ctx.x_dtype, ctx.residual_dtype = _x.dtype, residual.dtype
        else:
            normalized, weight, weight_offset, _eps, round_xhat = inputs
            _y, rstd = output
        ctx.has_residual = has_residual
        ctx.weight_offset = weight_offset
        ctx.round_xhat = round_xhat
        ctx.save_for_backward(normalized, weight, rstd)
        # A gradient that does not arrive (residual_out unused) stays None instead of a zero tensor.
        ctx.set_materialize_grads(False)

    def backward(ctx, dy, *output_grads):
        normalized, weight, rstd = ctx.saved_tensors
        weight_index = 2 if ctx.has_residual else 1
        needs_dweight = weight is not None and ctx.needs_input_grad[weight_index]
        dresidual_out = output_grads[0] if ctx.has_residual else None
        if dy is None:
            dy = torch.zeros_like(normalized)
        dres = None if dresidual_out is None else unit_column_stride(dresidual_out)
        dx, dweight = bwd_op(
            unit_column_stride(dy), normalized, dres, weight, ctx.weight_offset, rstd, needs_dweight, ctx.round_xhat
        )
        dweight = dweight if needs_dweight else None
        if ctx.has_residual:
            # dx is in residual_out's dtype, the residual's: x's may be narrower (an fp32 residual stream).
            return dx.to(ctx.x_dtype), dx.to(ctx.residual_dtype), dweight, None, None, None
        return dx, dweight, None, None, None

    return setup_context, backward


def _register(namespace: str, suffix: str) -> None:
    ops = getattr(torch.ops, namespace)
    names = {kind: f"{namespace}::{kind}{suffix}" for kind in ("rms_norm_fwd", "add_rms_norm_fwd", "rms_norm_bwd")}
    torch.library.register_fake(names["rms_norm_fwd"], _fake_rms_norm_fwd)
    torch.library.register_fake(names["add_rms_norm_fwd"], _fake_add_rms_norm_fwd)
    torch.library.register_fake(names["rms_norm_bwd"], _fake_rms_norm_bwd)
    setup_context, backward = _autograd_for(getattr(ops, f"rms_norm_bwd{suffix}"))
    for kind in ("rms_norm_fwd", "add_rms_norm_fwd"):
        torch.library.register_autograd(names[kind], backward, setup_context=setup_context)


_register("rmsnorm", "_triton")


def register_cuda_ops() -> None:
    """Fake implementations and autograd of the CUDA ops; cuda_ext calls it once, after loading them."""
    _register("rmsnorm_cuda", "")


def forward_ops(backend: str):
    """(rms_norm_fwd, add_rms_norm_fwd) of a kernel backend, "triton" or "cuda"."""
    if backend == "triton":
        return torch.ops.rmsnorm.rms_norm_fwd_triton, torch.ops.rmsnorm.add_rms_norm_fwd_triton
    return torch.ops.rmsnorm_cuda.rms_norm_fwd, torch.ops.rmsnorm_cuda.add_rms_norm_fwd


def _below_autograd(op):
    def call(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    return call


@functools.cache
def _untracked_cuda_ops():
    return (
        _below_autograd(torch.ops.rmsnorm_cuda.rms_norm_fwd.default),
        _below_autograd(torch.ops.rmsnorm_cuda.add_rms_norm_fwd.default),
    )


def untracked_forward_ops(backend: str):
    """forward_ops without the torch operator layers autograd needs, for eager calls with nothing to record.

    The same kernels and bits, minus their host cost: the Triton functions themselves, the CUDA ops
    dispatched below their (Python) autograd kernel. Never under torch.compile, which needs the ops.
    """
    if backend == "triton":
        return _rms_norm_fwd_triton, _add_rms_norm_fwd_triton
    return _untracked_cuda_ops()
