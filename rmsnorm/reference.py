"""The one PyTorch reference of RMSNorm: the "torch" backend, and the yardstick of every test and benchmark."""

from __future__ import annotations

import torch


def default_eps(dtype: torch.dtype) -> float:
    """eps used when the caller passes None.

    As torch.nn.functional.rms_norm does in practice: the machine epsilon of the dtype the math runs in
    (float32 for float32, float16 and bfloat16 inputs; float64 for float64), not that of the input dtype.
    """
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


# How the normalized x meets the weight:
#   "fp32":  y = round(xhat * (w + offset)), all in fp32: one rounding at the end, as
#            torch.nn.functional.rms_norm and Hugging Face's GemmaRMSNorm do;
#   "llama": y = round(round(xhat) * (w + offset)): xhat is first rounded to x's dtype, as Hugging
#            Face's LlamaRMSNorm does (`self.weight * hidden_states.to(input_dtype)`).
CASTING_MODES = ("fp32", "llama")


def rms_norm_reference(
    x: torch.Tensor,
    normalized_shape: tuple[int, ...],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    compute_dtype: torch.dtype | None = None,
    weight_offset: float = 0.0,
    casting_mode: str = "fp32",
    xhat_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """RMSNorm over the trailing ``normalized_shape`` dims of ``x``, written out in PyTorch.

    Math runs in ``compute_dtype`` (default: float32, or float64 for float64 inputs); the result is
    rounded once, to ``x.dtype``, unless ``compute_dtype`` is given, in which case it is returned in
    ``compute_dtype`` unrounded (tests compare kernels against the float64 result). The weight is
    scaled as weight + weight_offset. casting_mode "llama" rounds x * rstd to ``xhat_dtype`` (default
    x's dtype; tests pass the dtype of the inputs they upcast) before the weight (see CASTING_MODES),
    also in ``compute_dtype``. Differentiable through ordinary PyTorch autograd, the rounding passing
    gradients through unchanged (not rounded).
    """
    out_dtype = x.dtype if compute_dtype is None else compute_dtype
    if compute_dtype is None:
        compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if eps is None:
        eps = default_eps(x.dtype)
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))
    xc = x.to(compute_dtype)
    rstd = torch.rsqrt(xc.pow(2).mean(dim=dims, keepdim=True) + eps)
    y = xc * rstd
    if casting_mode == "llama":
        # Rounded forward, gradient passed through exactly: written as y.to(dtype), autograd would
        # round the gradient to that dtype too, which the kernels do not.
        y = y + (y.to(xhat_dtype or x.dtype).to(compute_dtype) - y).detach()
    if weight is not None:
        y = y * (weight.to(compute_dtype) + weight_offset)
    return y.to(out_dtype)


def add_rms_norm_reference(
    x: torch.Tensor,
    residual: torch.Tensor,
    normalized_shape: tuple[int, ...],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    compute_dtype: torch.dtype | None = None,
    weight_offset: float = 0.0,
    casting_mode: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm_reference(residual_out), residual_out), residual_out = x + residual summed in fp32
    (float64 for float64 inputs) and rounded to residual's dtype, which y then normalizes.

    y has x's dtype, also when the residual stream is wider (an fp32 residual beside bf16 x); "llama"
    casting rounds x * rstd to y's dtype.
    """
    sum_dtype = torch.float64 if torch.float64 in (x.dtype, residual.dtype) else torch.float32
    residual_out = (x.to(sum_dtype) + residual.to(sum_dtype)).to(residual.dtype)
    y = rms_norm_reference(residual_out, normalized_shape, weight, eps, compute_dtype, weight_offset, casting_mode, x.dtype)
    return (y if compute_dtype is not None else y.to(x.dtype)), residual_out


# The largest finite float8_e4m3fn (torch.finfo(torch.float8_e4m3fn).max), and vLLM's floor on a
# dynamic scale, which keeps an all-zero row from dividing zero by zero. The kernels hold the same two.
FP8_E4M3_MAX = 448.0
MIN_DYNAMIC_SCALE = 1.0 / (FP8_E4M3_MAX * 512.0)


def _divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Tensor by tensor of one shape: divided by a scalar, PyTorch multiplies by its rounded
    # reciprocal on the GPU, which is not the IEEE quotient the kernels compute.
    return torch.div(a, b.expand_as(a).contiguous())


def quantize_fp8_reference(
    y: torch.Tensor,
    normalized_dims: int = 1,
    scale: torch.Tensor | None = None,
    scale_ub: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(saturate(y * (1 / scale)) as float8_e4m3fn, scale), all in fp32.

    scale: a one-element fp32 tensor (static), returned as given; or None (dynamic): each row's
    scale, over the trailing normalized_dims dims, is max|y| (clamped to scale_ub when given; NaN
    when the row holds one) / FP8_E4M3_MAX, at least MIN_DYNAMIC_SCALE, shaped as y with those dims
    kept as 1. 1 / scale is an IEEE division, once per scale, and y is multiplied by it (as vLLM's
    kernels do; y / scale differs from it in the last fp32 bit now and then, which moved the fp8
    result one step in 14 of 42 million fp32 normal values, and in none of 84 million bf16 ones).
    The product is clamped to +-FP8_E4M3_MAX, then rounded to nearest even; NaN stays NaN.
    """
    yf = y.float()
    if scale is None:
        amax = yf.abs().amax(dim=tuple(range(-normalized_dims, 0)), keepdim=True)
        if scale_ub is not None:
            ub = scale_ub.float().reshape(())
            amax = torch.where(amax > ub, ub, amax)
        row_scale = _divide(amax, torch.full_like(amax, FP8_E4M3_MAX))
        row_scale = torch.where(row_scale < MIN_DYNAMIC_SCALE, MIN_DYNAMIC_SCALE, row_scale)
        divisor, returned = row_scale, row_scale
    else:
        divisor, returned = scale.float().reshape(()), scale
    inverse = _divide(torch.ones_like(divisor), divisor)
    y_q = (yf * inverse).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return y_q, returned


def fp8_ordinal(q: torch.Tensor) -> torch.Tensor:
    """Position of float8_e4m3fn values on their number line: neighbours differ by one, +0 and -0 are
    both 0. The distance in fp8 steps between two quantizations is the difference of their ordinals."""
    bits = q.view(torch.uint8).to(torch.int16)
    magnitude = bits & 0x7F
    return torch.where(bits >= 0x80, -magnitude, magnitude)
