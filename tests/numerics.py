"""What every test compares against: the float64 reference, with tolerances derived from the dtypes.

Each backend computes in fp32 and rounds once to the output dtype, so an output may differ from the
exact (float64) result by
  - the final rounding: half an ulp of the output dtype (a whole ulp under Triton's CPU interpreter,
    which truncates fp32 to bf16 where the GPU rounds to nearest), plus
  - the fp32 arithmetic before it, dominated by the reductions. A sum of n terms done as per-thread
    sequential sums followed by a tree errs by at most (terms per thread + tree depth) fp32 units of
    the sum of |terms|; no backend puts more than sqrt(n) terms in one thread's sequential sum, so
    we allow sqrt(n) + log2(n) units plus a few for the elementwise roundings.
For bf16 and fp16 outputs the second part is far below one ulp; for fp32 outputs it dominates.
"""

from __future__ import annotations

import math

import pytest
import torch

import rmsnorm
from rmsnorm.reference import rms_norm_reference

FP32_UNIT = 2.0**-24  # unit roundoff of fp32
# Spacing of fp32's subnormals: the absolute error of an fp32 product that underflows, whatever its size.
FP32_SUBNORMAL_SPACING = 2.0**-149
# Roundings outside the reductions: rstd's sqrt and division, the products x*rstd*w and dy*w.
FP32_ELEMENTWISE_UNITS = 4


def reduction_units(n: int) -> float:
    """Bound on the relative fp32 error of a backend's sum of n terms, in units of FP32_UNIT."""
    return math.sqrt(n) + math.log2(max(n, 1)) + FP32_ELEMENTWISE_UNITS


def rounding_ulps(dtype: torch.dtype, backend: str, device: torch.device) -> float:
    """Ulps of the final rounding to `dtype`: half an ulp when it rounds to nearest."""
    if backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        return 1.0  # Triton's interpreter truncates fp32 to bf16
    return 0.5


_INTEGER_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """t's elements viewed as integers of their size: compared, they compare bits, NaN payloads too."""
    return t.view(_INTEGER_OF_SIZE[t.element_size()])


def ulp(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of `dtype` numbers at |value| (float64), never below the spacing at the smallest normal."""
    info = torch.finfo(dtype)
    magnitude = value.abs().clamp_min(info.tiny)
    return torch.exp2(torch.floor(torch.log2(magnitude))) * info.eps


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, tolerance: torch.Tensor, dtype: torch.dtype, what: str
) -> None:
    """Elementwise |actual - expected| <= tolerance, where expected is the exact (float64) result.

    NaN exactly where expected is NaN; infinity where expected is infinite, or so large that
    rounding it to `dtype` overflows (fp16 gradients of tiny inputs do).
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.detach().to(torch.float64)
    nan_expected = torch.isnan(expected)
    if not torch.equal(torch.isnan(actual), nan_expected):
        where = (torch.isnan(actual) != nan_expected).nonzero()[:5].tolist()
        raise AssertionError(f"{what}: NaN where the reference has none, or the reverse, at {where}")
    rounded = expected.to(dtype).to(torch.float64)
    infinite = torch.isinf(rounded)
    assert torch.equal(actual[infinite], rounded[infinite]), f"{what}: infinities differ from the reference"
    checked = torch.isfinite(rounded)
    excess = torch.where(checked, (actual - expected).abs() - tolerance, torch.zeros_like(expected))
    if (excess > 0).any():
        idx = tuple(int(i) for i in torch.unravel_index(excess.argmax().cpu(), expected.shape))
        raise AssertionError(
            f"{what}: {int((excess > 0).sum())} of {expected.numel()} elements out of tolerance; worst at {idx}: "
            f"got {actual[idx].item()!r}, expected {expected[idx].item()!r}, tolerance {tolerance[idx].item():.3g}"
        )


def poison_next_allocation(like: torch.Tensor) -> None:
    """Make the next allocation of like's size on its GPU come back full of NaN.

    The CUDA caching allocator hands a freed block to the next request of the same size, so the
    kernel's output starts as NaN: an element the kernel forgets to write fails the comparison.
    (CPU allocations come from the OS, zeroed or recycled unpredictably; nothing to do there.)
    """
    if like.device.type == "cuda":
        torch.full_like(like, float("nan"), memory_format=torch.contiguous_format)


# Device bytes per element of x that check_rms_norm holds at its peak: the float64 reference with
# its autograd graph and gradients (~10 float64 tensors of x's size), plus the kernel's tensors.
CHECK_BYTES_PER_ELEMENT = 96


def skip_if_too_big(x: torch.Tensor) -> None:
    """Skip, with the reason, a case whose check would not fit in the GPU's free memory."""
    if x.device.type == "cuda":
        need, free = x.numel() * CHECK_BYTES_PER_ELEMENT, torch.cuda.mem_get_info(x.device)[0]
        if need > free:
            pytest.skip(f"needs ~{need / 2**30:.1f} GiB of GPU memory, {free / 2**30:.1f} GiB free")


def check_rms_norm(
    backend: str,
    x: torch.Tensor,
    normalized_shape: tuple[int, ...],
    weight: torch.Tensor | None,
    eps: float | None,
    *,
    weight_offset: float = 0.0,
    residual: torch.Tensor | None = None,
    backward: bool = True,
    dy: torch.Tensor | None = None,
    dresidual_out: torch.Tensor | None = None,
    casting_mode: str = "fp32",
) -> None:
    """Run rms_norm (add_rms_norm when a residual is given) on `backend`, forward and, when asked,
    backward, and compare with float64.

    add_rms_norm's residual_out must be x + residual rounded once; its y is held to rms_norm's
    standard against the float64 RMSNorm of the residual_out it returned (y normalizes residual_out
    as stored), and the gradients of x and residual to the float64 gradients through that.
    dy, dresidual_out: the gradients arriving at y and residual_out, in any layout; dy random by
    default, dresidual_out random by default when there is a residual.
    casting_mode "llama": the model rounds the float64 x * rstd to x's dtype before the weight. The
    kernels round their fp32 x * rstd, which lands on the other side of a rounding boundary where
    the two straddle one ("tie zone", or everywhere under the interpreter's truncation to bf16):
    there y may differ by |w + offset| times an ulp of x * rstd, and dweight by |dy| times it.
    """
    skip_if_too_big(x)
    leaves = [x.detach().requires_grad_(backward)]
    if residual is not None:
        leaves.append(residual.detach().requires_grad_(backward))
    if weight is not None:
        weight = weight.detach().requires_grad_(backward)
    x = leaves[0]
    n = math.prod(normalized_shape)
    dims = tuple(range(x.dim() - len(normalized_shape), x.dim()))
    lead = tuple(range(x.dim() - len(normalized_shape)))
    eps_value = rmsnorm.reference.default_eps(x.dtype) if eps is None else eps
    rounding = rounding_ulps(x.dtype, backend, x.device)

    poison_next_allocation(x)
    if residual is None:
        y = rmsnorm.rms_norm(
            x, normalized_shape, weight, eps, weight_offset=weight_offset, casting_mode=casting_mode, backend=backend
        )
        normalized = x
    else:
        y, normalized = rmsnorm.add_rms_norm(
            x, leaves[1], weight, eps, weight_offset=weight_offset, casting_mode=casting_mode, backend=backend
        )
        exact_sum = x.detach().to(torch.float64) + leaves[1].detach().to(torch.float64)
        assert normalized.dtype == leaves[1].dtype and normalized.shape == x.shape and normalized.is_contiguous()
        assert_close(normalized, exact_sum, rounding * ulp(exact_sum, normalized.dtype), normalized.dtype,
                     f"{backend} residual_out")  # fmt: skip
    assert y.dtype == x.dtype and y.shape == x.shape and y.is_contiguous()

    # The float64 model: y64 = RMSNorm(normalized64), where normalized64 stands for x (rms_norm) or
    # residual_out (add_rms_norm, whose gradient then flows on to x and residual unchanged).
    normalized64 = normalized.detach().to(torch.float64).requires_grad_(backward)
    w64 = None if weight is None else weight.detach().to(torch.float64).requires_grad_(backward)
    y64 = rms_norm_reference(
        normalized64, normalized_shape, w64, eps_value, torch.float64, weight_offset, casting_mode, x.dtype
    )
    # The fp32 errors before the final rounding; that rounding is then taken at the largest value they
    # reach (a y just below a power of two may round up into the next binade, of twice the ulp).
    y_spread = reduction_units(n) * FP32_UNIT * y64.detach().abs()
    # casting_mode "llama": one ulp of x * rstd where the kernel's fp32 value may round the other way.
    xhat_flip = torch.zeros_like(y64.detach())
    if casting_mode == "llama":
        rstd64 = torch.rsqrt(normalized64.detach().pow(2).mean(dim=dims, keepdim=True) + eps_value)
        xhat64 = normalized64.detach() * rstd64
        xhat_ulp = ulp(xhat64, x.dtype)  # "llama" rounds x * rstd to y's dtype, x's
        if rounding == 1.0:  # the interpreter truncates: any element may land one ulp away
            near_boundary = torch.ones_like(xhat64, dtype=torch.bool)
        else:
            to_boundary = ((xhat64 - xhat64.to(x.dtype).to(torch.float64)).abs() - xhat_ulp / 2).abs()
            near_boundary = to_boundary <= (reduction_units(n) + FP32_ELEMENTWISE_UNITS) * FP32_UNIT * xhat64.abs()
        xhat_flip = torch.where(near_boundary, xhat_ulp, 0.0)
        scale = (w64.detach() + weight_offset).abs() if w64 is not None else 1.0
        y_spread = y_spread + xhat_flip * scale
    y_tolerance = rounding * ulp(y64.detach().abs() + y_spread, x.dtype) + y_spread
    assert_close(y, y64.detach(), y_tolerance, x.dtype, f"{backend} y")
    if not backward:
        return

    if dy is None:
        dy = torch.randn_like(y)
    outputs, output_grads = [y], [dy]
    if residual is not None:
        if dresidual_out is None:
            dresidual_out = torch.randn_like(normalized)
        outputs.append(normalized)
        output_grads.append(dresidual_out)
    poison_next_allocation(x)
    grads = torch.autograd.grad(outputs, leaves + ([weight] if weight is not None else []), output_grads)
    grads64 = torch.autograd.grad(y64, [normalized64] + ([w64] if w64 is not None else []), dy.to(torch.float64))
    dx64 = grads64[0] + (0.0 if dresidual_out is None else dresidual_out.to(torch.float64))

    # dx = rstd * (g - xhat * mean(xhat * g)) (+ dresidual_out), g = dy * (w + offset): each term's
    # fp32 error is bounded by the reduction bound times its magnitude. rstd's own error (a sum of n
    # squares) enters the second term three times, once in each factor (xhat = x * rstd): where g is
    # 0 (a zero gain) that term is all of dx, and once its bound alone was short (hypothesis, fp32,
    # 5 ulps against 4.9 allowed, on the torch reference as on cuda).
    rstd = torch.rsqrt(normalized64.detach().pow(2).mean(dim=dims, keepdim=True) + eps_value)
    x_hat = normalized64.detach() * rstd
    g = dy.to(torch.float64) * ((w64.detach() + weight_offset) if w64 is not None else 1.0)
    dx_scale = rstd * (g.abs() + 3 * x_hat.abs() * (x_hat * g).abs().mean(dim=dims, keepdim=True))
    if dresidual_out is not None:
        dx_scale = dx_scale + dresidual_out.to(torch.float64).abs()
    for leaf, grad, name in zip(leaves, grads, ("dx", "dresidual")):
        tolerance = rounding * ulp(dx64, leaf.dtype) + reduction_units(n) * FP32_UNIT * dx_scale
        # Tiny rows: xhat * mean(xhat * g) can underflow into fp32's subnormals, where its error is
        # absolute, before rstd scales it up (bf16 x of 1e-24 on the H100: 0.52 ulp off, not 0.5).
        tolerance = tolerance + FP32_ELEMENTWISE_UNITS * FP32_SUBNORMAL_SPACING * rstd
        if backend == "torch" and dresidual_out is not None:
            # PyTorch's autograd rounds the gradient through y to residual_out's dtype before it
            # adds the one arriving on residual_out: a second rounding the fused kernels do not do.
            tolerance = tolerance + 0.5 * ulp(grads64[0], leaf.dtype)
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape
        assert_close(grad, dx64, tolerance, leaf.dtype, f"{backend} {name}")
    if weight is None:
        return
    dweight = grads[len(leaves)]
    assert dweight.dtype == weight.dtype and dweight.shape == weight.shape
    # dweight = sum over rows of dy * xhat: a reduction over the rows of terms that carry xhat's error.
    rows = x.numel() // max(n, 1)
    terms = (dy.to(torch.float64) * x_hat).abs()
    magnitude = terms.sum(dim=lead) if lead else terms
    units = reduction_units(rows) + reduction_units(n) / 2
    w_rounding = rounding_ulps(weight.dtype, backend, x.device)
    dw_tolerance = w_rounding * ulp(grads64[1], weight.dtype) + units * FP32_UNIT * magnitude
    flips = dy.to(torch.float64).abs() * xhat_flip  # casting_mode "llama": terms whose rounded xhat may differ
    dw_tolerance = dw_tolerance + (flips.sum(dim=lead) if lead else flips)
    assert_close(dweight, grads64[1], dw_tolerance, weight.dtype, f"{backend} dweight")
