"""Property-based tests (hypothesis): random problems against the float64 reference on every backend,
and random invalid calls, each of which must raise a clear error and leave the library usable.

tests/test_validation.py holds the fixed invalid cases; these are their randomized complement.
Hypothesis prints the falsifying example (and a @reproduce_failure blob); its search is seeded from
RMSNORM_TEST_SEED, so the seed in the report header replays a run. Triton's interpreter on CPU is
about a thousand times slower than the GPU: there the problems are smaller and fewer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from rmsnorm import add_rms_norm, rms_norm
from rmsnorm.functional import BACKENDS
from rmsnorm.reference import default_eps
from tests.conftest import BASE_SEED, DEVICE, ON_GPU
from tests.inputs import randn, random_weight
from tests.numerics import check_rms_norm

# The backend fixture is function-scoped, and so is conftest's seeding; both are fine to share across
# examples (each example seeds torch itself). Deadlines mean nothing while Triton compiles or interprets.
# Examples per test: the float64 comparison, and each kind of invalid call.
EXAMPLES = {"rmsnorm-cpu": (40, 8), "rmsnorm-gpu": (50, 15)}
for profile, (problems_count, invalid_count) in EXAMPLES.items():
    for suffix, examples in (("", problems_count), ("-invalid", invalid_count)):
        settings.register_profile(profile + suffix, max_examples=examples, deadline=None, print_blob=True,
                                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
PROFILE = settings.get_profile("rmsnorm-gpu" if ON_GPU else "rmsnorm-cpu")
INVALID_PROFILE = settings.get_profile("rmsnorm-gpu-invalid" if ON_GPU else "rmsnorm-cpu-invalid")

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP32_MAX = torch.finfo(torch.float32).max
# Widths: anything up to MAX_N, with the edges of warps, tiles and the split-row paths weighted in.
MAX_N = 2**17 if ON_GPU else 5000
EDGE_WIDTHS = tuple(w for w in (31, 32, 33, 127, 128, 129, 1023, 1024, 1025, 4095, 4096, 4097, 8191, 8192, 8193,
                                32767, 32768, 32769, 65535, 65537) if w <= MAX_N)  # fmt: skip
MAX_ELEMENTS = 2**22 if ON_GPU else 2**14  # per tensor; on CPU at most a few rows of the widest
MAX_LEADING = 64 if ON_GPU else 6
# x's layouts: in memory as drawn; every dim reversed (the normalized dims not last-contiguous); a
# window of a wider buffer; every other element of the last dim; one row repeated through stride 0.
LAYOUTS = ("contiguous", "transposed", "sliced", "strided", "expanded")
GRAD_LAYOUTS = ("contiguous", "transposed", "expanded")


@dataclass(frozen=True)
class Problem:
    """One call of rms_norm (or add_rms_norm, with a residual) and its backward, as hypothesis drew it."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    normalized_dims: int  # normalized over the trailing dims: (n,) or (shape[-2], n)
    layout: str
    scale: float  # x ~ N(0, scale^2)
    zero_rows: bool  # some rows all zeros (for add_rms_norm, x = -residual there)
    eps: float | None
    weight_dtype: torch.dtype | None  # None: no weight
    weight_strided: bool  # the weight a view with stride 2
    weight_offset: float
    zero_gain: bool  # weight elements may equal -weight_offset exactly
    residual_layout: str | None  # None: rms_norm
    residual_scale: float
    grad_layout: str
    torch_seed: int

    @property
    def normalized_shape(self) -> tuple[int, ...]:
        return self.shape[-self.normalized_dims :]


# The torch backend is autograd through fp32 rsqrt, whose backward forms rstd**3: subnormal in fp32
# once a row's RMS passes ~4e12 (dx loses digits), infinite once rstd passes ~7e12, a RMS below
# ~1.4e-13 with eps below ~2e-26 (dx is Inf or NaN), exactly as in torch.nn.functional.rms_norm.
# The kernels form dx without rstd**3 and take the whole range; the torch backend is held inside.
TORCH_BACKEND_MAX_SCALE = 1e11
TORCH_BACKEND_MIN_SCALE_SMALL_EPS = 1e-8
TORCH_BACKEND_MIN_EPS = 1e-24  # a zero row's rstd is eps**-0.5
# Triton 3.6's CPU interpreter converts between fp32 and bf16 bit by bit and mangles subnormals
# (1e-39 becomes 4.2e-39; the GPU converts in hardware). With a bf16 tensor there, the scales stay
# where values and results are normal, and no weight cancels its offset exactly (g = 0 there makes
# dx = -xhat * mean(xhat * g) * rstd, subnormal for small xhat).
INTERPRETED_BF16_MIN_SCALE = 1e-30


def interpreted_bf16(backend: str, dtype: torch.dtype, weight_dtype: torch.dtype | None) -> bool:
    return backend == "triton" and not ON_GPU and torch.bfloat16 in (dtype, weight_dtype)


def scale_bounds(backend: str, dtype: torch.dtype, weight_dtype, n: int, eps: float | None) -> tuple[float, float]:
    """Scales of x whose float64 answer the backend's fp32 math can match.

    Above: squares summed in fp32 overflow once n * |x|^2 passes fp32's max (F.rms_norm then gives
    zeros too), and values must fit the dtype. Below: a mean square lost to fp32 underflow only
    matters when eps does not dominate it, so tiny scales need an eps well above fp32's smallest
    normal. Gaussian values reach ~5 sigma here, and x + residual twice that: a factor 256 keeps
    clear of both edges.
    """
    info = torch.finfo(dtype)
    high = min(info.max / 256, math.sqrt(FP32_MAX / (256 * n)))
    small_eps = (default_eps(dtype) if eps is None else eps) < 1e-20
    low = max(info.tiny, 1e-10) if small_eps else info.tiny
    if backend == "torch":
        high = min(high, TORCH_BACKEND_MAX_SCALE)
        low = max(low, TORCH_BACKEND_MIN_SCALE_SMALL_EPS) if small_eps else low
    if interpreted_bf16(backend, dtype, weight_dtype):
        low = max(low, INTERPRETED_BF16_MIN_SCALE)
    return low, high


def log_uniform(low: float, high: float):
    return st.floats(math.log10(low), math.log10(high)).map(lambda e: 10.0**e)


@st.composite
def problems(draw, backend: str) -> Problem:
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.one_of(st.integers(1, 16), st.sampled_from(EDGE_WIDTHS), st.integers(1, MAX_N)))
    leading, rows_left = [], max(1, MAX_ELEMENTS // n)
    for _ in range(draw(st.integers(1, 3))):
        leading.append(draw(st.integers(1, max(1, min(MAX_LEADING, rows_left)))))
        rows_left //= leading[-1]
    weight_dtype = draw(st.one_of(st.none(), st.just(dtype), st.sampled_from(DTYPES)))
    has_residual = draw(st.booleans())
    # add_rms_norm normalizes over weight.shape, without a weight over the last dim only
    normalized_dims = 1 if has_residual and weight_dtype is None else draw(st.sampled_from((1, 2)))
    min_eps = TORCH_BACKEND_MIN_EPS if backend == "torch" else 1e-30
    eps = draw(st.one_of(st.none(), st.just(0.0), log_uniform(min_eps, 1.0)))
    shape = (*leading, n)
    low, high = scale_bounds(backend, dtype, weight_dtype, math.prod(shape[-normalized_dims:]), eps)
    scale = min(max(draw(log_uniform(1e-30, 1e30)), low), high)
    return Problem(
        dtype=dtype,
        shape=shape,
        normalized_dims=normalized_dims,
        layout=draw(st.sampled_from(LAYOUTS)),
        scale=scale,
        zero_rows=draw(st.booleans()),
        eps=eps,
        weight_dtype=weight_dtype,
        weight_strided=weight_dtype is not None and draw(st.booleans()),
        weight_offset=0.0 if weight_dtype is None else draw(st.sampled_from((0.0, 1.0, -0.5, 2.75))),
        zero_gain=not interpreted_bf16(backend, dtype, None),
        residual_layout=draw(st.sampled_from(LAYOUTS)) if has_residual else None,
        # the residual's scale within 16x of x's, both inside the bounds
        residual_scale=min(max(scale * draw(st.sampled_from((1 / 16, 1.0, 16.0))), low), high),
        grad_layout=draw(st.sampled_from(GRAD_LAYOUTS)),
        torch_seed=draw(st.integers(0, 2**31 - 1)),
    )


def lay_out(values: torch.Tensor, layout: str) -> torch.Tensor:
    """values in `layout`; the memory a view skips holds NaN, so that reading it fails the check."""
    if layout == "contiguous":
        return values
    if layout == "transposed":
        dims = tuple(reversed(range(values.dim())))
        return values.permute(dims).contiguous().permute(dims)
    if layout == "expanded":  # the first row, seen through stride 0 in every leading dim
        return values[(slice(0, 1),) * (values.dim() - 1)].expand(values.shape)
    n = values.shape[-1]
    width, columns = (n + 3, slice(1, n + 1)) if layout == "sliced" else (2 * n, slice(None, None, 2))
    base = torch.full((*values.shape[:-1], width), float("nan"), dtype=values.dtype, device=values.device)
    return base[..., columns].copy_(values)


def problem_tensors(p: Problem):
    """x, weight, residual (or None), dy, dresidual_out (or None) of problem p, from p.torch_seed."""
    torch.manual_seed(p.torch_seed)
    x = randn(*p.shape, dtype=torch.float32, scale=p.scale)
    residual = None if p.residual_layout is None else randn(*p.shape, dtype=torch.float32, scale=p.residual_scale)
    if p.zero_rows:
        rows = x.view(-1, *p.normalized_shape)
        zero = torch.rand(rows.shape[0], device=DEVICE) < 0.5
        zero[int(torch.randint(rows.shape[0], ()))] = True
        if residual is None:
            rows[zero] = 0.0
        else:  # x = -residual: residual_out is exactly zero there
            rows[zero] = -residual.view_as(rows)[zero]
    x = lay_out(x.to(p.dtype), p.layout)
    if residual is not None:
        residual = lay_out(residual.to(p.dtype), p.residual_layout)
    weight = None
    if p.weight_dtype is not None:
        n = math.prod(p.normalized_shape)
        weight = random_weight(n, p.weight_dtype, mean=1.0 - p.weight_offset)
        if not p.zero_gain:
            cancels = weight.float() + p.weight_offset == 0
            weight[cancels] *= 1 + 2**-6
        if p.weight_strided:
            weight = lay_out(weight.view(1, n), "strided")[0]
        weight = weight.view(p.normalized_shape)
    grads = [lay_out(randn(*p.shape, dtype=p.dtype), p.grad_layout) for _ in range(2)]
    return x, weight, residual, grads[0], grads[1] if residual is not None else None


@PROFILE
@seed(BASE_SEED)
@given(data=st.data())
def test_matches_float64_reference(backend, data):
    """Any shape, layout, dtype, eps, scale and weight: forward and every gradient within the
    tolerances of tests/numerics.py, outputs contiguous with x's shape."""
    problem = data.draw(problems(backend), label="problem")
    x, weight, residual, dy, dresidual_out = problem_tensors(problem)
    check_rms_norm(backend, x, problem.normalized_shape, weight, problem.eps, weight_offset=problem.weight_offset,
                   residual=residual, dy=dy, dresidual_out=dresidual_out)  # fmt: skip


# --- invalid calls ---------------------------------------------------------------------------------
BAD_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64,
              torch.complex128, torch.float8_e4m3fn, torch.float8_e5m2)  # fmt: skip
# Each kind of invalid call: which argument it gets wrong, the name its message must contain.
INVALID_KINDS = {
    "x_dtype": ("x",),
    "x_not_a_tensor": ("x",),
    "weight_dtype": ("weight",),
    "float64_on_a_kernel_backend": ("x", "weight"),
    # with normalized_shape left out (add_rms_norm has none) the weight's shape is taken as normalized_shape,
    # and the message speaks of normalized_shape not matching x
    "weight_shape": ("weight", "normalized_shape"),
    "weight_device": ("weight",),
    "normalized_shape_empty": ("normalized_shape",),
    "normalized_shape_too_long": ("normalized_shape",),
    "normalized_shape_mismatch": ("normalized_shape",),
    "normalized_shape_type": ("normalized_shape",),
    "eps_value": ("eps",),
    "eps_type": ("eps",),
    "weight_offset_value": ("weight_offset",),
    "weight_offset_without_weight": ("weight_offset",),
    "weight_offset_type": ("weight_offset",),
    "backend": ("backend",),
    "residual_shape": ("residual",),
    "residual_dtype": ("residual",),
    "residual_not_a_tensor": ("residual",),
}
# add_rms_norm has no normalized_shape argument: it normalizes over weight.shape.
RMS_NORM_ONLY = {kind for kind in INVALID_KINDS if kind.startswith("normalized_shape")}


@dataclass(frozen=True)
class InvalidCall:
    """A valid call with one argument made invalid: `bad` is what replaces it (a dtype, a shape, a value)."""

    op: str
    kind: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    has_weight: bool
    bad: object


def other_shape(shape):
    """Shapes of 1 to 3 dims that are not a trailing part of `shape` (which add_rms_norm, normalizing
    over weight.shape, would take as valid)."""
    return st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple).filter(lambda s: s != shape[-len(s) :])


@st.composite
def invalid_calls(draw, kind: str) -> InvalidCall:
    op = "rms_norm" if kind in RMS_NORM_ONLY else draw(st.sampled_from(("rms_norm", "add_rms_norm")))
    if kind.startswith("residual"):
        op = "add_rms_norm"
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from(DTYPES))
    has_weight = kind.startswith(("weight_dtype", "weight_shape", "weight_device", "weight_offset_value",
                                  "weight_offset_type", "float64")) or draw(st.booleans())  # fmt: skip
    bad = {
        "x_dtype": st.sampled_from(BAD_DTYPES),
        "weight_dtype": st.sampled_from(BAD_DTYPES),
        "x_not_a_tensor": st.sampled_from(("list", "float", "numpy", "none")),
        "residual_not_a_tensor": st.sampled_from(("list", "float", "numpy", "none")),
        "float64_on_a_kernel_backend": st.sampled_from(("x", "weight", "both")),
        "weight_shape": other_shape(shape),
        "residual_shape": other_shape(shape),
        "weight_device": st.sampled_from(("meta", "cpu") if ON_GPU else ("meta",)),
        # any other dtype, except the fp32 residual stream beside 16-bit x, which is allowed
        "residual_dtype": st.sampled_from(
            [d for d in (*DTYPES, torch.float64) if d != dtype and not (d == torch.float32 and dtype != torch.float32)]
        ),
        "normalized_shape_empty": st.sampled_from(((), [], torch.Size([]))),
        # longer than x has dims, x's shape at its end
        "normalized_shape_too_long": st.lists(st.integers(1, 8), min_size=1, max_size=2).map(lambda s: (*s, *shape)),
        "normalized_shape_mismatch": other_shape(shape),
        "normalized_shape_type": st.sampled_from((1.5, "16", (2.0,), (True,), [shape[-1], None], b"\x10", 1 + 2j)),
        "eps_value": st.one_of(st.floats(max_value=-1e-300), st.sampled_from((math.nan, math.inf, -math.inf))),
        "eps_type": st.sampled_from(("1e-5", True, False, 1e-5j, [1e-5], torch.tensor(1e-5))),
        "weight_offset_value": st.sampled_from((math.nan, math.inf, -math.inf)),
        "weight_offset_without_weight": st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != 0),
        "weight_offset_type": st.sampled_from(("1", True, None, 1j, [1.0])),
        "backend": st.one_of(st.text(max_size=12).filter(lambda s: s not in BACKENDS), st.sampled_from((None, 3, b"torch", ["torch"]))),
    }[kind]  # fmt: skip
    if kind == "weight_offset_without_weight":
        has_weight = False
    return InvalidCall(op, kind, dtype, shape, has_weight, draw(bad))


def not_a_tensor(what: str, like: torch.Tensor):
    return {"list": like.tolist(), "float": 1.0, "numpy": like.float().cpu().numpy(), "none": None}[what]


def invalid_arguments(call: InvalidCall, backend: str) -> tuple[dict, bool]:
    """The arguments of `call` on `backend`, and whether they are in fact valid (a float64 weight or x
    is for the torch backend only)."""
    x = randn(*call.shape, dtype=call.dtype)
    n = call.shape[-1]
    args = {"x": x, "normalized_shape": (n,), "weight": random_weight(n, call.dtype) if call.has_weight else None,
            "eps": 1e-5, "weight_offset": 0.0, "backend": backend}  # fmt: skip
    if call.op == "add_rms_norm":
        del args["normalized_shape"]
        args["residual"] = randn(*call.shape, dtype=call.dtype)
    valid = False
    kind, bad = call.kind, call.bad
    if kind == "x_dtype":
        args["x"] = torch.ones(call.shape, device=DEVICE).to(bad)
        if "residual" in args:
            args["residual"] = args["x"].clone()
    elif kind == "x_not_a_tensor":
        args["x"] = not_a_tensor(bad, x)
    elif kind == "weight_dtype":
        args["weight"] = torch.ones(n, device=DEVICE).to(bad)
    elif kind == "float64_on_a_kernel_backend":
        valid = backend == "torch"
        if bad in ("x", "both"):
            args["x"] = x.double()
            if "residual" in args:
                args["residual"] = args["residual"].double()
        if bad in ("weight", "both"):
            args["weight"] = args["weight"].double()
    elif kind == "weight_shape":
        args["weight"] = torch.ones(bad, device=DEVICE, dtype=call.dtype)
    elif kind == "weight_device":
        args["weight"] = args["weight"].to(bad)
    elif kind.startswith("normalized_shape"):
        args["normalized_shape"] = bad
    elif kind.startswith("eps"):
        args["eps"] = bad
    elif kind.startswith("weight_offset"):
        args["weight_offset"] = bad
    elif kind == "backend":
        args["backend"] = bad
    elif kind == "residual_shape":
        args["residual"] = randn(*bad, dtype=call.dtype)
    elif kind == "residual_dtype":
        args["residual"] = args["residual"].to(bad)
    elif kind == "residual_not_a_tensor":
        args["residual"] = not_a_tensor(bad, x)
    return args, valid


def call(op: str, args: dict):
    if op == "rms_norm":
        return rms_norm(args.pop("x"), args.pop("normalized_shape"), args.pop("weight"), args.pop("eps"), **args)
    return add_rms_norm(args.pop("x"), args.pop("residual"), args.pop("weight"), args.pop("eps"), **args)


@pytest.mark.parametrize("kind", sorted(INVALID_KINDS))
@INVALID_PROFILE
@seed(BASE_SEED)
@given(data=st.data())
def test_invalid_call_raises_and_library_stays_usable(backend, kind, data):
    """An invalid argument raises ValueError, TypeError or RuntimeError whose message names the argument;
    then a valid call on the same backend gives the right answer."""
    invalid = data.draw(invalid_calls(kind), label="invalid")
    args, valid = invalid_arguments(invalid, backend)
    if valid:
        outputs = call(invalid.op, args)
        assert all(torch.isfinite(t).all() for t in (outputs if isinstance(outputs, tuple) else (outputs,)))
    else:
        with pytest.raises((ValueError, TypeError, RuntimeError)) as error:
            call(invalid.op, args)
        message = str(error.value)
        names = INVALID_KINDS[invalid.kind]
        assert any(re.search(rf"\b{name}\b", message) for name in names), f"{message!r} names none of {names}"
    x = randn(3, 40, dtype=invalid.dtype)
    residual = randn(3, 40, dtype=invalid.dtype) if invalid.op == "add_rms_norm" else None
    check_rms_norm(backend, x, (40,), random_weight(40, invalid.dtype), 1e-5, residual=residual)
