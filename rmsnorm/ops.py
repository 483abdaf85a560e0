"""Our kernels as torch operators: schemas, fake implementations and autograd.

Each kernel backend has four ops on rows: [*lead, n] tensors with 1 to 4 leading dims of any
strides and a contiguous last dim (a 2-D [rows, n] view, or a per-head view of a fused QKV
projection), read in place:
  rms_norm_fwd(x, weight?, weight_offset, eps, round_xhat) -> (y, rstd)
  add_rms_norm_fwd(x, residual, weight?, weight_offset, eps, round_xhat) -> (y, residual_out, rstd)
  rms_norm_bwd(dy, x, dresidual_out?, weight?, weight_offset, rstd, needs_dweight, round_xhat) -> (dx, dweight)
  rms_norm_quant_fwd(x, residual?, weight?, weight_offset, eps, round_xhat, scale?, scale_ub?)
      -> (y_q, residual_out, row_scale)
where y, residual_out and dx are contiguous in x's shape, rstd is fp32 of shape lead,
residual_out = x + residual in residual's dtype, round_xhat is casting_mode "llama" (x * rstd
rounded to x's dtype before the weight), and outputs that do not apply are empty tensors
(schemas have no optional outputs): dweight when it was not asked for, residual_out without a
residual, row_scale with a static scale. y_q is float8_e4m3fn; row_scale, fp32 of shape lead + (1,),
holds the dynamic per-row scales. The quant op is forward only. The Triton ops are defined here
with torch.library.custom_op; the CUDA ops are declared by csrc/bindings.cpp (TORCH_LIBRARY
rmsnorm_cuda) and get their fake implementations and autograd here, once cuda_ext has loaded them.
Real operators with fake implementations are what lets torch.compile(fullgraph=True) and CUDA
graphs take the kernels as they are. Eager calls nothing watches skip the operators' host cost
(untracked_forward_ops, eager_autograd_forward_ops): the CUDA forwards then go through the
extension's direct entries (cuda_ext.direct()), the same C++ functions without the dispatcher.
"""

from __future__ import annotations

import functools

import torch

from . import cuda_ext


def unit_column_stride(t: torch.Tensor) -> torch.Tensor:
    """t, [*lead, n], with a contiguous last dim: itself when it has one (any other strides), else a copy."""
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _no_dweight(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(0)


# --- the Triton ops ---------------------------------------------------------------------------
# triton_kernels is imported inside: Triton decides when its module is imported whether it
# interprets (TRITON_INTERPRET), so it is imported on first use, not with rmsnorm.


def _rms_norm_fwd_triton(
    x: torch.Tensor, weight: torch.Tensor | None, weight_offset: float, eps: float, round_xhat: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    from . import triton_kernels

    return triton_kernels.rms_norm_fwd_planned(unit_column_stride(x), weight, weight_offset, eps, round_xhat, True)


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


def _rms_norm_bwd_triton(
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


rms_norm_bwd_triton = torch.library.custom_op("rmsnorm::rms_norm_bwd_triton", mutates_args=())(_rms_norm_bwd_triton)


@torch.library.custom_op("rmsnorm::rms_norm_quant_fwd_triton", mutates_args=())
def rms_norm_quant_fwd_triton(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    weight_offset: float,
    eps: float,
    round_xhat: bool,
    scale: torch.Tensor | None,
    scale_ub: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from . import triton_kernels

    res = None if residual is None else unit_column_stride(residual)
    y_q, residual_out, row_scale = triton_kernels.rms_norm_quant_fwd(
        unit_column_stride(x), res, weight, weight_offset, eps, round_xhat, scale, scale_ub
    )
    # Separate empty tensors: an op's outputs may not alias one another (x.new_empty(0).float() is
    # the same tensor for fp32 x).
    residual_out = x.new_empty(0) if residual_out is None else residual_out
    return y_q, residual_out, x.new_empty(0, dtype=torch.float32) if row_scale is None else row_scale


# --- fake implementations and autograd, shared by both backends ---------------------------------


def _fake_rms_norm_fwd(x, weight, weight_offset, eps, round_xhat):
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)


def _fake_add_rms_norm_fwd(x, residual, weight, weight_offset, eps, round_xhat):
    return x.new_empty(x.shape), residual.new_empty(x.shape), x.new_empty(x.shape[:-1], dtype=torch.float32)


def _fake_rms_norm_bwd(dy, x, dresidual_out, weight, weight_offset, rstd, needs_dweight, round_xhat):
    dweight = weight.new_empty(x.shape[-1]) if needs_dweight and weight is not None else _no_dweight(x)
    return x.new_empty(x.shape), dweight


def _fake_rms_norm_quant_fwd(x, residual, weight, weight_offset, eps, round_xhat, scale, scale_ub):
    y_q = x.new_empty(x.shape, dtype=torch.float8_e4m3fn)
    residual_out = x.new_empty(0) if residual is None else residual.new_empty(x.shape)
    row_scale_shape = (0,) if scale is not None else (*x.shape[:-1], 1)
    return y_q, residual_out, x.new_empty(row_scale_shape, dtype=torch.float32)


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
    kinds = ("rms_norm_fwd", "add_rms_norm_fwd", "rms_norm_bwd", "rms_norm_quant_fwd")
    names = {kind: f"{namespace}::{kind}{suffix}" for kind in kinds}
    torch.library.register_fake(names["rms_norm_fwd"], _fake_rms_norm_fwd)
    torch.library.register_fake(names["add_rms_norm_fwd"], _fake_add_rms_norm_fwd)
    torch.library.register_fake(names["rms_norm_bwd"], _fake_rms_norm_bwd)
    torch.library.register_fake(names["rms_norm_quant_fwd"], _fake_rms_norm_quant_fwd)
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


def quant_op(backend: str):
    """rms_norm_quant_fwd of a kernel backend, "triton" or "cuda"."""
    if backend == "triton":
        return torch.ops.rmsnorm.rms_norm_quant_fwd_triton
    return torch.ops.rmsnorm_cuda.rms_norm_quant_fwd


def _below_autograd(op):
    def call(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    return call


@functools.cache
def _direct_cuda_forwards(store_rstd: bool):
    """The CUDA forward ops' kernels through the extension's direct entries, without the dispatcher
    (bindings.cpp), rstd stored or not (None): for eager calls with no dispatch mode to see them."""
    direct = cuda_ext.direct()
    return (
        lambda x, weight, weight_offset, eps, round_xhat: direct.rms_norm_fwd(
            x, weight, weight_offset, eps, round_xhat, store_rstd
        ),
        lambda x, residual, weight, weight_offset, eps, round_xhat: direct.add_rms_norm_fwd(
            x, residual, weight, weight_offset, eps, round_xhat, store_rstd
        ),
    )


def untracked_forward_ops(backend: str):
    """forward_ops without the torch operator layers autograd needs, for eager calls with nothing to record.

    The same kernels and bits, minus their host cost: the Triton functions themselves and the CUDA
    extension's direct entries, neither of which allocates or stores rstd (it is returned as None).
    Never under torch.compile or a dispatch mode, which need the ops.
    """
    if backend == "triton":
        return _rms_norm_fwd_triton_inference, _add_rms_norm_fwd_triton_inference
    return _direct_cuda_forwards(False)


class _RaisesIfDifferentiated(torch.autograd.Function):
    """Passes gradients through, tied to the anchors (tensors that require grad) so that
    differentiating them again reaches this node, which raises."""

    @staticmethod
    def forward(ctx, anchor_count, *tensors):
        return tensors[anchor_count:]

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "rmsnorm: the gradients of rms_norm and add_rms_norm cannot be differentiated again "
            "(double backward through them is not supported)"
        )


def _eager_autograd(name: str, forward, bwd):
    """forward (a kernel backend's rms_norm_fwd or add_rms_norm_fwd, below the torch operators) as a
    torch.autograd.Function named `name`, with the operators' autograd (_autograd_for) around bwd,
    the backward below its operator.

    The same kernels, saved tensors and backward as the operators, minus their layers: a custom op's
    dispatch and its generated autograd.Function cost about 70 of the 140 us a Triton forward+backward
    spends in Python (bench/NOTES.md v0.17). A backward that builds a graph (create_graph=True) ties
    its gradients to a node that raises when they are differentiated again, rather than leaving
    rms_norm's share out of a second-order gradient.
    """
    setup_context, backward = _autograd_for(bwd)

    def forward_and_save(ctx, *inputs):
        output = forward(*inputs)
        ctx.mark_non_differentiable(output[-1])  # rstd
        setup_context(ctx, inputs, output)
        return output

    def backward_once(ctx, *grads):
        if not torch.is_grad_enabled():
            return backward(ctx, *grads)
        with torch.no_grad():
            input_grads = backward(ctx, *grads)
        anchors = [t for t in (*grads, *ctx.saved_tensors) if t is not None and t.requires_grad]
        computed = [g for g in input_grads if g is not None]
        marked = iter(_RaisesIfDifferentiated.apply(len(anchors), *anchors, *computed))
        return tuple(None if g is None else next(marked) for g in input_grads)

    # type(), not a class statement: autograd names the grad_fn class after the Function's name (here
    # f"{name}Backward") when the class is made.
    members = {"forward": staticmethod(forward_and_save), "backward": staticmethod(backward_once)}
    return type(name, (torch.autograd.Function,), members).apply


@functools.cache
def eager_autograd_forward_ops(backend: str):
    """forward_ops for eager calls autograd records, without the torch operator layers (see
    _eager_autograd). Never under torch.compile or a dispatch mode, which need the operators."""
    if backend == "triton":
        bwd, forwards = _rms_norm_bwd_triton, (_rms_norm_fwd_triton, _add_rms_norm_fwd_triton)
    else:
        bwd, forwards = _below_autograd(torch.ops.rmsnorm_cuda.rms_norm_bwd.default), _direct_cuda_forwards(True)
    suffix = "Triton" if backend == "triton" else "Cuda"
    return tuple(
        _eager_autograd(f"{kind}{suffix}", forward, bwd) for kind, forward in zip(("RMSNorm", "AddRMSNorm"), forwards)
    )


# The untracked Triton forwards: no backward will need rstd, so it is neither allocated nor stored.
def _rms_norm_fwd_triton_inference(x, weight, weight_offset, eps, round_xhat):
    from . import triton_kernels

    return triton_kernels.rms_norm_fwd_planned(unit_column_stride(x), weight, weight_offset, eps, round_xhat, False)


def _add_rms_norm_fwd_triton_inference(x, residual, weight, weight_offset, eps, round_xhat):
    from . import triton_kernels

    return triton_kernels.rms_norm_fwd(
        unit_column_stride(x), unit_column_stride(residual), weight, weight_offset, eps, round_xhat, False
    )
