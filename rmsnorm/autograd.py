"""The autograd Function shared by the kernel backends: forward and backward both run our kernels."""

from __future__ import annotations

from types import ModuleType

import torch


def as_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """t as [rows, n] with a unit column stride; a view when one exists (any row stride), else a copy."""
    try:
        rows = t.view(-1, n)
    except RuntimeError:  # the leading dims cannot be merged into one stride
        return t.reshape(-1, n).contiguous()
    if n > 1 and rows.stride(1) != 1:
        return rows.contiguous()
    return rows


class RMSNormFunction(torch.autograd.Function):
    """y = x * rstd * weight over the last n elements of each row, computed by `kernels`.

    `kernels` is a backend module with rms_norm_fwd(x_rows, weight, eps) -> (y, rstd) and
    rms_norm_bwd(dy_rows, x_rows, weight, rstd, needs_dweight) -> (dx, dweight or None).
    weight, when given, is 1-D, contiguous and has n elements.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, n: int, eps: float, kernels: ModuleType):
        x_rows = as_rows(x, n)
        y, rstd = kernels.rms_norm_fwd(x_rows, weight, eps)
        ctx.save_for_backward(x_rows, weight, rstd)
        ctx.kernels = kernels
        ctx.n = n
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x_rows, weight, rstd = ctx.saved_tensors
        dx, dweight = ctx.kernels.rms_norm_bwd(as_rows(dy, ctx.n), x_rows, weight, rstd, ctx.needs_input_grad[1])
        return dx.view(dy.shape), dweight, None, None, None
