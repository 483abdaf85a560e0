"""rms_norm and add_rms_norm: validate the arguments once, choose a backend, run it.

This is the one place that checks user input and picks a backend; kernels and bindings below it
assume what is checked here.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import numbers
import os
import warnings

import torch

from . import cuda_ext, ops
from .reference import (
    CASTING_MODES,
    add_rms_norm_reference,
    default_eps,
    quantize_fp8_reference,
    rms_norm_reference,
)

logger = logging.getLogger("rmsnorm")

BACKENDS = ("auto", "triton", "cuda", "torch")
BACKEND_ENV_VAR = "RMSNORM_BACKEND"
# dtypes rms_norm accepts; the kernel backends run all but float64, which "auto" sends to the reference.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_warned_cuda_fallback = False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def available_backends() -> list[str]:
    """Names of the backends that can run here, without compiling anything.

    "torch" always; "triton" with a CUDA GPU, or on CPU tensors under TRITON_INTERPRET=1; "cuda"
    with a CUDA GPU, a CUDA build of torch, and nvcc or a prebuilt extension.
    """
    names = []
    if _triton_installed() and (torch.cuda.is_available() or _interpreting()):
        names.append("triton")
    if cuda_ext.available():
        names.append("cuda")
    names.append("torch")
    return names


def _check_dtype(t: torch.Tensor, name: str) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def _is_int(value) -> bool:
    # type() first: the numbers ABCs' isinstance costs about a microsecond a call on the hot path.
    return type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool))


def _is_real(value) -> bool:
    return type(value) is float or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def _normalized_shape(x: torch.Tensor, normalized_shape, weight: torch.Tensor | None) -> tuple[int, ...]:
    # The common call first, without generators: one int, or a 1-tuple of one, naming x's last dim.
    if type(normalized_shape) is tuple and len(normalized_shape) == 1:
        n = normalized_shape[0]
        if type(n) is int and x.dim() >= 1 and x.shape[-1] == n:
            return normalized_shape
    elif type(normalized_shape) is int and x.dim() >= 1 and x.shape[-1] == normalized_shape:
        return (normalized_shape,)
    if normalized_shape is None:
        shape = tuple(weight.shape) if weight is not None else tuple(x.shape[-1:])
    elif _is_int(normalized_shape):
        shape = (int(normalized_shape),)
    elif isinstance(normalized_shape, (tuple, list, torch.Size)) and all(_is_int(d) for d in normalized_shape):
        shape = tuple(int(d) for d in normalized_shape)
    else:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}")
    if len(shape) == 0:
        raise ValueError("normalized_shape must name at least one dim, got ()")
    if len(shape) > x.dim() or tuple(x.shape[x.dim() - len(shape) :]) != shape:
        what = "normalized_shape" if normalized_shape is not None or weight is None else "weight's shape"
        raise ValueError(f"{what} {shape} must match the trailing dims of x, got x of shape {tuple(x.shape)}")
    return shape


_INFINITIES = (math.inf, -math.inf)


def _is_finite(value) -> bool:
    # Comparisons, not math.isfinite: under torch.compile(dynamic=True) a float argument arrives as
    # a symbolic float, which comparisons handle (as guards) and math.isfinite does not.
    return value == value and value not in _INFINITIES


def _as_float(value):
    """A Python int or float as float; a symbolic float (torch.compile, dynamic=True) unchanged."""
    return value if type(value) is float else float(value) if isinstance(value, numbers.Integral) else value


def _check_args(x, normalized_shape, weight, eps, weight_offset, backend, casting_mode) -> tuple[int, ...]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    _check_dtype(x, "x")
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")
        _check_dtype(weight, "weight")
        if weight.device != x.device:
            raise ValueError(f"weight must be on x's device {x.device}, got {weight.device}")
    shape = _normalized_shape(x, normalized_shape, weight)
    if weight is not None and weight.shape != shape:  # a torch.Size equals the tuple of its sizes
        raise ValueError(f"weight must have shape {shape} to match normalized_shape, got {tuple(weight.shape)}")
    if eps is not None:
        if not _is_real(eps):
            raise TypeError(f"eps must be a real number or None, got {eps!r}")
        if not _is_finite(eps) or eps < 0:
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if not _is_real(weight_offset):
        raise TypeError(f"weight_offset must be a real number, got {weight_offset!r}")
    if not _is_finite(weight_offset):
        raise ValueError(f"weight_offset must be finite, got {weight_offset}")
    if weight_offset != 0 and weight is None:
        raise ValueError("weight_offset needs a weight: it is added to the weight")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if not isinstance(casting_mode, str) or casting_mode not in CASTING_MODES:
        raise ValueError(f"casting_mode must be one of {', '.join(map(repr, CASTING_MODES))}, got {casting_mode!r}")
    return shape


# Leading dims the kernels take with their own strides: enough for a per-head view of a fused QKV
# projection, qkv[..., :H * D].view(B, S, H, D), whose B and S merge, and more.
MAX_LEAD_DIMS = 4


def _merged_lead(t: torch.Tensor, normalized_dims: int) -> list[int]:
    """The leading dims of t (all but the trailing normalized_dims), with size-1 dims dropped and
    neighbours merged where their strides allow, as Tensor.view would merge them."""
    sizes: list[int] = []
    strides: list[int] = []
    lead = t.dim() - normalized_dims
    for size, stride in zip(t.shape[:lead], t.stride()[:lead]):
        if size == 1:
            continue
        if sizes and strides[-1] == stride * size:
            sizes[-1] *= size
            strides[-1] = stride
        else:
            sizes.append(size)
            strides.append(stride)
    return sizes or [1]


def _trailing_contiguous(t: torch.Tensor, normalized_dims: int) -> bool:
    """Whether the trailing normalized_dims dims of t are one contiguous run of memory."""
    expected = 1
    for size, stride in zip(reversed(t.shape[t.dim() - normalized_dims :]), reversed(t.stride())):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def as_rows(t: torch.Tensor, n: int, normalized_dims: int = 1) -> torch.Tensor:
    """t as [*lead, n] with a unit column stride and at most MAX_LEAD_DIMS leading dims.

    A 2-D view when one exists (any row stride); else a view keeping the leading dims that cannot
    merge (a per-head slice of a fused projection); else a contiguous copy. The trailing
    normalized_dims dims of t are the n elements of a row. Decided from sizes and strides, not by
    trying views: under torch.compile a failed view is an error, not an exception to catch.
    """
    if t.dim() == 2 and t.shape[1] == n and (n <= 1 or t.stride(1) == 1):
        return t  # already rows: no view to make (a view costs microseconds of host time per call)
    if not _trailing_contiguous(t, normalized_dims):
        return t.reshape(-1, n).contiguous()
    lead = _merged_lead(t, normalized_dims)
    if len(lead) == 1:
        return t.view(-1, n)
    if len(lead) > MAX_LEAD_DIMS:
        return t.reshape(-1, n).contiguous()
    return t.view(*lead, n)


def _as_matching_rows(x: torch.Tensor, residual: torch.Tensor, n: int, normalized_dims: int):
    """as_rows of x and residual, of one shape as the kernels require: where their layouts differ,
    the one with more leading dims gives its shape to the other, as a view where that one is 2-D
    (splitting its rows is always a view), else as a copy."""
    x_rows, res_rows = as_rows(x, n, normalized_dims), as_rows(residual, n, normalized_dims)
    if x_rows.shape == res_rows.shape:
        return x_rows, res_rows
    if x_rows.dim() < res_rows.dim():
        res_rows, x_rows = _as_matching_rows(residual, x, n, normalized_dims)
        return x_rows, res_rows
    if res_rows.dim() == 2:
        return x_rows, res_rows.view(x_rows.shape)
    return x_rows, res_rows.contiguous().view(x_rows.shape)


def _check_residual(x: torch.Tensor, residual: torch.Tensor) -> None:
    """Checks residual beside x: its shape, device, and dtype (x's, or an fp32 residual stream)."""
    if residual.shape != x.shape:
        raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if residual.device != x.device:
        raise ValueError(f"residual must be on x's device {x.device}, got {residual.device}")
    wider_residual = residual.dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16)
    if residual.dtype != x.dtype and not wider_residual:
        raise TypeError(
            f"residual must have x's dtype {x.dtype}, or float32 beside float16/bfloat16 x (an fp32 residual "
            f"stream), got {residual.dtype}"
        )


def _kernel_dtypes_ok(x_dtype: torch.dtype, w_dtype: torch.dtype | None) -> bool:
    return x_dtype in KERNEL_DTYPES and (w_dtype is None or w_dtype in KERNEL_DTYPES)


def _require_kernel_dtypes(backend: str, x_dtype: torch.dtype, w_dtype: torch.dtype | None) -> None:
    if not _kernel_dtypes_ok(x_dtype, w_dtype):
        got = f"x {x_dtype}" + (f", weight {w_dtype}" if w_dtype is not None else "")
        raise TypeError(f"the {backend} backend supports float32, float16 and bfloat16; got {got}")


# Row widths, as (first, last) ranges, where "auto" prefers triton to cuda, per op, where the H100
# benchmark has triton ahead beyond run-to-run noise: add_rms_norm's forward above 8192 (bench/NOTES.md
# v0.4: the CUDA register kernel holding 1 or 2 row blocks per SM reached 94% and 92% of copy at 16384
# and 32768, triton 99% and 98%; since v0.9 the two tie, 98 / 97% against 98 / 98%); rms_norm_quant up
# to 8192 (triton 99 / 98% static / dynamic against cuda's 98 / 97%), beyond which CUDA stages rows
# in shared memory (v0.9: at 16384 98 / 94% against triton's 96 / 92%, at 32768 97 / 93% against
# 78 / 76%); add_rms_norm_quant up to 32768 (triton 97-99% against cuda's 96-98% since v0.9, ahead
# by 10-25 points before); rms_norm up to 8192 and from 16384, forward and backward. From 16384
# since v0.23 (triton's split-row forward 90-92% at 65536-2^20 against cuda's 94 / 89 / 84 / 71 /
# 64%, its one-pass backward 82-87% against 77-86% beyond 32768); up to 8192 since v0.47, once the
# benchmark timed kernels rather than the host (v0.46): bf16 forward+backward 94-96% against cuda's
# 89-94%, backward 90-92 against 85-92, forward 97-98 against 97-98, GPU time a call at M = 1 1.6 us
# against 2.4 (its host time 30 against 21 us, both within the targets). cuda keeps 8193-16383:
# at 12288 its forward+backward reads 92% against 89, its backward 89 against 84. A function of N
# alone, so a row's backend, and bits, never depend on M.
_AUTO_TRITON_WIDTHS = {
    "rms_norm": ((1, 8192), (16384, None)),
    "add_rms_norm": ((8193, None),),
    "rms_norm_quant": ((1, 8192),),
    "add_rms_norm_quant": ((1, 32768),),
}


def _auto_prefers_triton(op: str, n: int) -> bool:
    """Whether "auto" should take triton over cuda for `op` on rows of n elements."""
    # Branches, not a returned comparison: under torch.compile with a dynamic row width they become
    # guards on the width and a constant here, which _resolve_backend needs.
    for first, last in _AUTO_TRITON_WIDTHS.get(op, ()):
        if n >= first:
            if last is None or n <= last:
                return True
    return False


def _auto_backend(device_type: str, x_dtype: torch.dtype, w_dtype: torch.dtype | None, prefer_triton: bool) -> str:
    global _warned_cuda_fallback
    if device_type != "cuda" or not _kernel_dtypes_ok(x_dtype, w_dtype):
        return "torch"
    try:
        cuda_ext.load()
        return "triton" if prefer_triton else "cuda"
    except RuntimeError as error:
        if not _warned_cuda_fallback:
            _warned_cuda_fallback = True
            warnings.warn(f"rmsnorm: the cuda backend is unavailable, using triton instead: {error}", stacklevel=5)
        return "triton"


# A function of constants (names, dtypes, the environment, what loads here): torch.compile runs it
# once while tracing and keeps its answer, instead of tracing the build, the warning or the
# environment lookup into the graph.
@torch.compiler.assume_constant_result
def _resolve_backend(
    backend: str, device_type: str, x_dtype: torch.dtype, w_dtype: torch.dtype | None, prefer_triton: bool = False
) -> str:
    """The backend that will run this call; raises if an explicitly named one cannot.

    prefer_triton: "auto" takes triton even where cuda loads (see _auto_prefers_triton).
    """
    if backend == "auto" and os.environ.get(BACKEND_ENV_VAR):
        backend = os.environ[BACKEND_ENV_VAR]
        if backend not in BACKENDS:
            raise ValueError(f"${BACKEND_ENV_VAR} must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "auto":
        return _auto_backend(device_type, x_dtype, w_dtype, prefer_triton)
    if backend == "triton":
        _require_kernel_dtypes(backend, x_dtype, w_dtype)
        if device_type == "cpu":
            if not _interpreting():
                raise RuntimeError(
                    "the triton backend needs a CUDA tensor; to run it on CPU tensors, set TRITON_INTERPRET=1 "
                    "in the environment before the first use of rmsnorm (Triton's interpreter, slow, for testing)"
                )
        elif device_type != "cuda":
            raise RuntimeError(f"the triton backend runs on CUDA tensors, got one on {device_type}")
    elif backend == "cuda":
        _require_kernel_dtypes(backend, x_dtype, w_dtype)
        if device_type != "cuda":
            where = "no CUDA GPU is available" if not torch.cuda.is_available() else "move x to the GPU"
            raise RuntimeError(f"the cuda backend needs a CUDA tensor, got one on {device_type} ({where})")
        cuda_ext.load()
    return backend


def _log_call(op: str, backend: str, x: torch.Tensor) -> None:
    # Logging is host-side chatter that torch.compile cannot trace (Logger.isEnabledFor included):
    # eager calls only, is_compiling first.
    if not torch.compiler.is_compiling() and logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s: backend=%s shape=%s dtype=%s", op, backend, tuple(x.shape), x.dtype)


# Tensor types the kernels may be called with directly, below the torch operators: a subclass
# (a __torch_function__ or __torch_dispatch__ one, such as DTensor) must see the operators.
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _forward_ops(name: str, *tensors: torch.Tensor | None):
    """(rms_norm_fwd, add_rms_norm_fwd) of backend `name` for this call: through our torch operators,
    through an autograd.Function without them, or straight to the kernels.

    The operators are needed where something watches the call: torch.compile tracing it, a
    dispatch mode (FakeTensorMode, FlopCounterMode, ...) or a tensor subclass. A plain eager call
    that autograd records skips their host cost through ops.eager_autograd_forward_ops, and one with
    no input requiring grad (inference) skips autograd too. Same kernels, same bits.
    """
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return ops.forward_ops(name)
    tracked = False
    for t in tensors:  # a loop, not any() over a generator: host time of every eager call
        if t is not None:
            if type(t) not in _PLAIN_TENSOR_TYPES:
                return ops.forward_ops(name)
            tracked = tracked or t.requires_grad
    if tracked and torch.is_grad_enabled():
        return ops.eager_autograd_forward_ops(name)
    return ops.untracked_forward_ops(name)


def _flat_weight(weight: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The weight as the kernels take it: 1-D and contiguous (autograd sees the reshape)."""
    if weight is not None and (weight.dim() != 1 or not weight.is_contiguous()):
        return weight.contiguous().view(n)
    return weight


def rms_norm(
    x: torch.Tensor,
    normalized_shape: int | tuple[int, ...] | list[int] | torch.Size | None = None,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    weight_offset: float = 0.0,
    casting_mode: str = "fp32",
    backend: str = "auto",
) -> torch.Tensor:
    """RMSNorm over the trailing dims of x, as torch.nn.functional.rms_norm.

    x: [..., *normalized_shape], float32, float16, bfloat16 (or float64 on the torch backend), any
        strides. Read in place, without a copy, when the normalized dims are contiguous and the
        leading dims merge into at most four strided dims: any [rows, N] view, and per-head views
        such as q = qkv[..., :H * D].view(B, S, H, D) normalized over (D,) (QK-norm).
    normalized_shape: the trailing dims to normalize over; default weight.shape, else x.shape[-1:].
    weight: tensor of shape normalized_shape, on x's device, of any supported floating dtype, or None.
    eps: added to the mean square; None means the fp32 machine epsilon (float64's for float64 x),
        which is what torch.nn.functional.rms_norm does.
    weight_offset: added to the weight in fp32: y = xhat * (weight + weight_offset); Gemma uses
        1.0 with a zero-initialised weight. Needs a weight when nonzero.
    casting_mode: "fp32" (all math in fp32, one rounding at the end, as F.rms_norm and Hugging
        Face's GemmaRMSNorm) or "llama" (x * rstd rounded to x's dtype before the weight, as Hugging
        Face's LlamaRMSNorm: `weight * hidden_states.to(input_dtype)`).
    backend: "triton", "cuda", "torch" (the reference) or "auto" (the environment variable
        RMSNORM_BACKEND overrides it; otherwise, on CUDA tensors, the faster kernel backend for this
        op and row width, cuda falling back to triton, and the reference elsewhere).

    Returns y, contiguous, with x's shape and dtype; math in fp32, rounded as casting_mode says.
    Differentiable in x and weight.
    """
    shape = _check_args(x, normalized_shape, weight, eps, weight_offset, backend, casting_mode)
    eps = _as_float(default_eps(x.dtype) if eps is None else eps)
    n = math.prod(shape)
    w_dtype = None if weight is None else weight.dtype
    name = _resolve_backend(backend, x.device.type, x.dtype, w_dtype, _auto_prefers_triton("rms_norm", n))
    _log_call("rms_norm", name, x)
    if name == "torch" or x.numel() == 0:
        return rms_norm_reference(x, shape, weight, eps, None, weight_offset, casting_mode).contiguous()
    fwd_op, _ = _forward_ops(name, x, weight)
    round_xhat = casting_mode == "llama"
    rows = as_rows(x, n, len(shape))
    y, _rstd = fwd_op(rows, _flat_weight(weight, n), _as_float(weight_offset), eps, round_xhat)
    # rows is x itself where x is already [M, N] rows (the common call): y has its shape.
    return y if rows is x else y.view(x.shape)


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    weight_offset: float = 0.0,
    casting_mode: str = "fp32",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm transformer step: residual_out = x + residual, y = rms_norm(residual_out), fused.

    x, residual: the same shape and device, any strides; residual has x's dtype, or float32 beside
        float16/bfloat16 x (an fp32 residual stream). The sum is taken in fp32 and stored in
        residual's dtype, and y normalizes residual_out as stored, over weight.shape (or the last
        dim without a weight).
    weight, eps, weight_offset, casting_mode, backend: as in rms_norm.

    Returns (y, residual_out), both contiguous with x's shape, y in x's dtype and residual_out in
    residual's; one pass over the data on the kernel backends. Differentiable in x, residual and
    weight, also when a gradient arrives on residual_out.
    """
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"residual must be a torch.Tensor, got {type(residual).__name__}")
    shape = _check_args(x, None, weight, eps, weight_offset, backend, casting_mode)
    _check_residual(x, residual)
    eps = _as_float(default_eps(x.dtype) if eps is None else eps)
    n = math.prod(shape)
    w_dtype = None if weight is None else weight.dtype
    name = _resolve_backend(backend, x.device.type, x.dtype, w_dtype, _auto_prefers_triton("add_rms_norm", n))
    _log_call("add_rms_norm", name, x)
    if name == "torch" or x.numel() == 0:
        y, residual_out = add_rms_norm_reference(x, residual, shape, weight, eps, None, weight_offset, casting_mode)
        return y.contiguous(), residual_out.contiguous()
    _, add_fwd_op = _forward_ops(name, x, residual, weight)
    x_rows, res_rows = _as_matching_rows(x, residual, n, len(shape))
    y, residual_out, _rstd = add_fwd_op(
        x_rows, res_rows, _flat_weight(weight, n), _as_float(weight_offset), eps, casting_mode == "llama"
    )
    if y.shape == x.shape:
        return y, residual_out
    return y.view(x.shape), residual_out.view(x.shape)


QUANT_DTYPES = (torch.float8_e4m3fn,)


def _check_quant_args(x: torch.Tensor, scale, scale_ub, out_dtype) -> None:
    if out_dtype not in QUANT_DTYPES:
        raise TypeError(f"out_dtype must be torch.float8_e4m3fn, the one fp8 format written here; got {out_dtype}")
    for name, t in (("scale", scale), ("scale_ub", scale_ub)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a float32 tensor of one element, or None; got {type(t).__name__}")
        if t.dtype != torch.float32:
            raise TypeError(f"{name} must be a float32 tensor, got {t.dtype}")
        if t.numel() != 1:
            raise ValueError(f"{name} must hold one element, got shape {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")
    if scale is not None and scale_ub is not None:
        raise ValueError("scale_ub bounds the dynamic per-row scales; it cannot be given with a static scale")


def _quant(
    x, residual, weight, eps, scale, scale_ub, out_dtype, weight_offset, casting_mode, backend
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """rms_norm_quant and add_rms_norm_quant: (y_q, residual_out or None, scale)."""
    shape = _check_args(x, None, weight, eps, weight_offset, backend, casting_mode)
    _check_quant_args(x, scale, scale_ub, out_dtype)
    if residual is not None:
        _check_residual(x, residual)
    eps = _as_float(default_eps(x.dtype) if eps is None else eps)
    n, k = math.prod(shape), len(shape)
    if n == 0 and scale is None:
        raise ValueError("dynamic scales need rows of at least one element: a row of zero elements has no maximum")
    w_dtype = None if weight is None else weight.dtype
    op = "rms_norm_quant" if residual is None else "add_rms_norm_quant"
    name = _resolve_backend(backend, x.device.type, x.dtype, w_dtype, _auto_prefers_triton(op, n))
    _log_call(op, name, x)
    if name == "torch" or x.numel() == 0:
        if residual is None:
            y, residual_out = rms_norm_reference(x, shape, weight, eps, None, weight_offset, casting_mode), None
        else:
            y, residual_out = add_rms_norm_reference(x, residual, shape, weight, eps, None, weight_offset, casting_mode)
            residual_out = residual_out.contiguous()
        y_q, scale = quantize_fp8_reference(y, k, scale, scale_ub)
        return y_q.contiguous(), residual_out, scale
    if residual is None:
        x_rows, res_rows = as_rows(x, n, k), None
    else:
        x_rows, res_rows = _as_matching_rows(x, residual, n, k)
    round_xhat = casting_mode == "llama"
    y_q, residual_out, row_scale = ops.quant_op(name)(
        x_rows, res_rows, _flat_weight(weight, n), _as_float(weight_offset), eps, round_xhat, scale, scale_ub
    )
    if scale is None:
        scale = row_scale.view(*x.shape[: x.dim() - k], *(1,) * k)
    return y_q.view(x.shape), None if residual is None else residual_out.view(x.shape), scale


def rms_norm_quant(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float | None = None,
    *,
    scale: torch.Tensor | None = None,
    scale_ub: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float8_e4m3fn,
    weight_offset: float = 0.0,
    casting_mode: str = "fp32",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """rms_norm followed by fp8 quantization, fused: one pass over x, y never stored in x's dtype.

    y is rms_norm(x, weight.shape (x.shape[-1:] without a weight), weight, eps, weight_offset=...,
    casting_mode=...) as rms_norm returns it, rounded to x's dtype; then
      static (scale, a float32 tensor of one element, given): y_q = saturate(y * (1 / scale));
      dynamic (scale None): each row's scale is max|y_row| / 448, the row maximum first clamped to
        scale_ub when given (a float32 tensor of one element, as vLLM's per-token quantization),
        and floored at 1 / (448 * 512) so that an all-zero row divides by a positive number;
        y_q = saturate(y * (1 / row scale)).
    1 / scale is an IEEE fp32 division, once per scale, and y is multiplied by it, as vLLM's kernels
    do (y / scale differs in the last fp32 bit now and then: the fp8 result moved one step in 14
    of 42 million fp32 values, none of 84 million bf16 ones). The product is saturated to +-448
    (Inf too), rounded to nearest even to out_dtype (float8_e4m3fn, the one format supported);
    NaN stays NaN, and a row holding a NaN gets a NaN scale. Forward only: not differentiable.

    Returns (y_q, scale): y_q contiguous with x's shape; scale the given tensor (static), or the
    row scales, float32 of shape x.shape with the normalized dims as 1 (x.shape[:-1] + (1,)).
    """
    y_q, _, scale = _quant(x, None, weight, eps, scale, scale_ub, out_dtype, weight_offset, casting_mode, backend)
    return y_q, scale


def add_rms_norm_quant(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float | None = None,
    *,
    scale: torch.Tensor | None = None,
    scale_ub: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float8_e4m3fn,
    weight_offset: float = 0.0,
    casting_mode: str = "fp32",
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """add_rms_norm followed by fp8 quantization, fused: residual_out = x + residual, y_q the
    quantized rms_norm(residual_out).

    x, residual: as in add_rms_norm (residual in x's dtype, or an fp32 residual stream); the
    quantization as in rms_norm_quant. Returns (y_q, residual_out, scale), residual_out contiguous
    with x's shape in residual's dtype. Forward only.
    """
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"residual must be a torch.Tensor, got {type(residual).__name__}")
    return _quant(x, residual, weight, eps, scale, scale_ub, out_dtype, weight_offset, casting_mode, backend)
