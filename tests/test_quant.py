"""rms_norm_quant and add_rms_norm_quant: RMSNorm fused with float8_e4m3fn quantization, static or dynamic.

The kernels quantize the very y that rms_norm (add_rms_norm) would return, rounded to x's dtype, so
y_q and the dynamic per-row scales must be bitwise those of quantize_fp8_reference applied to the
same backend's own unquantized output; against the float reference they may differ only where the
backend's y does (summation order), by one fp8 step. Layouts, special rows and determinism are
checked backend against itself.

Triton's CPU interpreter converts fp32 to float8_e4m3fn wrongly (a mantissa carry into the exponent
is lost: 125.4 becomes 64, not 128; NaN becomes 384), so on CPU the triton backend's y_q is compared
with a reference only on the GPU: those tests check everything else first (the fp32 scales, exact
on CPU too; residual_out; shapes) and then skip with that reason. Comparisons of triton with
triton (layouts, row isolation, determinism) hold on CPU as well and are not skipped.
"""

import logging
import re

import pytest
import torch

import rmsnorm
from rmsnorm.reference import (
    FP8_E4M3_MAX,
    MIN_DYNAMIC_SCALE,
    add_rms_norm_reference,
    fp8_ordinal,
    quantize_fp8_reference,
    rms_norm_reference,
)
from tests.conftest import DEVICE, KERNEL_BACKENDS, ON_GPU
from tests.inputs import randn, random_weight
from tests.numerics import as_bits

FP8 = torch.float8_e4m3fn
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Sub-warp rows, an odd tail, one tile; on the GPU also a wide tile, the rows CUDA stages in shared
# memory (16384-65536), and, past 32768, the split rows whose dynamic scale comes from a second walk
# over y (rms_norm_quantize_rows_kernel).
WIDTHS = (1, 3, 127, 4097, 12288, 16384, 32768, 65536, 65537) if ON_GPU else (1, 3, 127, 4097)
# The float-reference comparison: one tile and, on the GPU, the split rows.
REFERENCE_WIDTHS = (127, 4097, 12288, 65537) if ON_GPU else (127, 4097)
# Special rows: many rows per program (64) and, on CPU too, the split rows (32769 > 32768).
SPECIAL_WIDTHS = (64, 4097, 65537) if ON_GPU else (64, 32769)
# Row isolation matters where one program holds several rows: N = 3 and 64 put 1024 and 64 rows in one.
ISOLATION_WIDTHS = (3, 64, 1000) if ON_GPU else (3, 64)
ADD_WIDTHS = (127, 4097, 12288, 65537) if ON_GPU else (127, 4097)
ROWS = 37 if ON_GPU else 3
# static: one positive scale for the tensor; dynamic: per-row scales; scale_ub: dynamic with an
# upper bound on the row maximum that binds on some rows and not on others.
MODES = ("static", "dynamic", "scale_ub")
# Against the float reference, y_q may differ only where the backend's y does (an ulp of x's dtype
# from another summation order), which moves an fp8 rounding only near its boundaries: rare.
MAX_FP8_DIFFERENCE_SHARE = 0.01
EPS = 1e-6
MIN_SCALE_FP32 = torch.tensor(MIN_DYNAMIC_SCALE, dtype=torch.float32).item()  # the floor as the kernels hold it

# The interpreter computes in NumPy, which warns of the Inf and NaN that special rows are made of.
EXPECTED_NUMPY_WARNINGS = pytest.mark.filterwarnings("ignore:(overflow|invalid value) encountered:RuntimeWarning")

INTERPRETER_FP8 = (
    "Triton's CPU interpreter converts fp32 to float8_e4m3fn wrongly (a mantissa carry into the exponent "
    "is lost: 125.4 -> 64, not 128; NaN -> 384): triton's y_q is compared with a reference on the GPU only "
    "(scales, residual_out and shapes were checked)"
)


def _fp8_is_emulated(backend: str) -> bool:
    return backend == "triton" and DEVICE.type == "cpu"


def skip_y_q_on_interpreter(backend: str) -> None:
    """Call after every check that holds under the interpreter: skips the y_q comparisons that follow."""
    if _fp8_is_emulated(backend):
        pytest.skip(INTERPRETER_FP8)


def poison_quant_outputs(x: torch.Tensor) -> None:
    """Next GPU allocations of y_q's and the row scales' sizes come back NaN (numerics.poison_next_allocation)."""
    if x.device.type == "cuda":
        rows = max(1, x.numel() // max(1, x.shape[-1]))
        held = (
            torch.full((x.numel(),), 0x7F, dtype=torch.uint8, device=x.device),  # 0x7f: NaN in float8_e4m3fn
            torch.full((rows,), float("nan"), dtype=torch.float32, device=x.device),
        )
        del held


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """Same shape, dtype and bits; NaN where expected has NaN (any NaN encoding), bits equal elsewhere."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    nan_actual, nan_expected = torch.isnan(actual.float()), torch.isnan(expected.float())
    if not torch.equal(nan_actual, nan_expected):
        where = (nan_actual != nan_expected).nonzero()[:5].tolist()
        raise AssertionError(f"{what}: NaN where the reference has none, or the reverse, at {where}")
    differ = (as_bits(actual) != as_bits(expected)) & ~nan_expected
    if differ.any():
        idx = tuple(differ.nonzero()[0].tolist())
        raise AssertionError(
            f"{what}: {int(differ.sum())} of {differ.numel()} elements differ; first at {idx}: got "
            f"{actual[idx].float().item()!r} (bits {int(as_bits(actual)[idx]):#x}), expected "
            f"{expected[idx].float().item()!r} (bits {int(as_bits(expected)[idx]):#x})"
        )


# Triton chooses each kernel's register layout from its types and the alignment of its arguments,
# and the layout fixes the order of a row's sum of squares: the quantizing kernel (an fp8 store)
# and the plain one, or a strided and a contiguous x, may get rstd one fp32 ulp apart (H100 and
# H200; the CUDA kernels' order is their own and fixed). Comparisons across two Triton kernels on
# the GPU then allow what such an rstd moves: a dynamic scale a few fp32 ulps, a y_q one fp8 step
# in a small share of the elements. A dynamic scale is a row's max|y| after y is rounded to its
# dtype, so where that rstd carries the largest element across a rounding boundary the scale moves
# by one step of y's dtype (fp16 rows of 32768 in casting_mode "llama", H100, session 29): given
# y_dtype, a scale may differ by that much.
TRITON_SCALE_RELATIVE = 2.0**-20
TRITON_LAYOUT_NOTE = "across two Triton kernel variants"


def assert_alike(
    backend: str, actual: torch.Tensor, expected: torch.Tensor, what: str, y_dtype: torch.dtype | None = None
) -> None:
    """assert_same, except for triton on the GPU comparing two kernel variants (see TRITON_SCALE_RELATIVE);
    y_dtype: that of the y whose row maxima fp32 scales are."""
    if backend != "triton" or not ON_GPU or actual.dtype not in (FP8, torch.float32):
        assert_same(actual, expected, what)
        return
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    nan_actual, nan_expected = torch.isnan(actual.float()), torch.isnan(expected.float())
    assert torch.equal(nan_actual, nan_expected), f"{what}: NaN where the reference has none, or the reverse"
    if actual.dtype == FP8:
        steps = (fp8_ordinal(actual) - fp8_ordinal(expected)).abs()[~nan_expected]
        assert steps.numel() == 0 or int(steps.max()) <= 1, f"{what}: {TRITON_LAYOUT_NOTE}, more than one fp8 step"
        share = float((steps > 0).float().mean()) if steps.numel() else 0.0
        assert share <= MAX_FP8_DIFFERENCE_SHARE, f"{what}: {TRITON_LAYOUT_NOTE}, {share:.2%} of elements differ"
    else:
        a, e = actual[~nan_expected], expected[~nan_expected]
        relative = TRITON_SCALE_RELATIVE if y_dtype is None else max(TRITON_SCALE_RELATIVE, torch.finfo(y_dtype).eps)
        close = (a == e) | ((a - e).abs() <= relative * e.abs())
        assert bool(close.all()), f"{what}: {TRITON_LAYOUT_NOTE}, scales more than a few ulps apart"


def test_fp8_ordinal_counts_steps():
    """Every finite float8_e4m3fn value, in increasing order, has ordinals one apart (+0 and -0 both 0)."""
    values = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(torch.float8_e4m3fn)
    finite = values[~torch.isnan(values.float())]
    ordered = finite[torch.argsort(finite.float(), stable=True)]
    steps = fp8_ordinal(ordered).diff()
    assert int(fp8_ordinal(ordered)[0]) == -126 and int(fp8_ordinal(ordered)[-1]) == 126
    assert set(steps.tolist()) == {0, 1} and int((steps == 0).sum()) == 1  # -0 beside +0


def static_scale(y: torch.Tensor) -> torch.Tensor:
    """A positive random scale, [1] fp32, about max|y| / 448: below it the largest values saturate."""
    amax = y.float().abs().amax()
    return (amax / FP8_E4M3_MAX * (0.5 + torch.rand((), device=y.device))).reshape(1)


def binding_scale_ub(y: torch.Tensor) -> torch.Tensor:
    """A [1] fp32 bound on the rows' max|y| that binds on every row but the one of smallest maximum,
    which stays strictly below it; half the smallest maximum (binding everywhere) where all rows
    share one maximum (N = 1)."""
    amax = y.float().abs().amax(dim=-1)
    lo, hi = amax.min(), amax.max()
    above_lo = torch.nextafter(lo, torch.tensor(float("inf"), device=y.device))
    return (above_lo if hi > above_lo else lo / 2).reshape(1)


def quant_kwargs(mode: str, y: torch.Tensor) -> dict:
    """rms_norm_quant's scale arguments for `mode`, drawn from y (the backend's own output)."""
    if mode == "static":
        return {"scale": static_scale(y)}
    if mode == "dynamic":
        return {}
    ub = binding_scale_ub(y)
    assert (y.float().abs().amax(dim=-1) > ub).any(), "scale_ub binds on no row: the case tests nothing"
    return {"scale_ub": ub}


def check_outputs(x, y_q, scale, kwargs, normalized_dims=1) -> None:
    """Layout of rms_norm_quant's outputs; a static scale returned as the very tensor passed in."""
    assert y_q.dtype == FP8 and y_q.shape == x.shape and y_q.is_contiguous()
    if "scale" in kwargs:
        assert scale is kwargs["scale"]
    else:
        assert scale.dtype == torch.float32
        assert scale.shape == (*x.shape[: x.dim() - normalized_dims], *(1,) * normalized_dims)


# --- 1. bitwise the quantization of the backend's own y ------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", WIDTHS)
def test_exact_against_own_output(backend, n, dtype, mode):
    """y_q and the scales are quantize_fp8_reference of what rms_norm returns on the same backend, bit for bit."""
    x, w = randn(ROWS, n, dtype=dtype), random_weight(n, dtype)
    y = rmsnorm.rms_norm(x, None, w, EPS, backend=backend)
    kwargs = quant_kwargs(mode, y)
    poison_quant_outputs(x)
    y_q, scale = rmsnorm.rms_norm_quant(x, w, EPS, backend=backend, **kwargs)
    expected_q, expected_scale = quantize_fp8_reference(y, 1, **kwargs)
    check_outputs(x, y_q, scale, kwargs)
    if mode != "static":
        assert_alike(backend, scale, expected_scale, f"{backend} row scales", y.dtype)
    skip_y_q_on_interpreter(backend)
    assert_alike(backend, y_q, expected_q, f"{backend} y_q")


# --- 2. against the float reference --------------------------------------------------------------


@pytest.mark.parametrize("mode", ("static", "dynamic"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", REFERENCE_WIDTHS)
def test_against_float_reference(backend, n, dtype, mode):
    """y_q differs from the quantized reference only where the backend's y does, by one fp8 step, rarely."""
    x, w = randn(ROWS, n, dtype=dtype), random_weight(n, dtype)
    own_y = rmsnorm.rms_norm(x, None, w, EPS, backend=backend)
    ref_y = rms_norm_reference(x, (n,), w, EPS)  # rounded to x's dtype, as rms_norm returns it
    kwargs = quant_kwargs(mode, ref_y)
    y_q, scale = rmsnorm.rms_norm_quant(x, w, EPS, backend=backend, **kwargs)
    ref_q, ref_scale = quantize_fp8_reference(ref_y, 1, **kwargs)
    y_differs = as_bits(own_y) != as_bits(ref_y)
    may_differ = y_differs
    if mode == "dynamic":
        # A row's scale is a function of its max|y| alone: equal maxima, equal scales.
        same_amax = own_y.float().abs().amax(-1, keepdim=True) == ref_y.float().abs().amax(-1, keepdim=True)
        what = f"{backend} row scales where max|y| matches the reference"
        assert_alike(backend, scale[same_amax], ref_scale[same_amax], what)
        may_differ = may_differ | ~same_amax  # another scale moves every element of its row
    skip_y_q_on_interpreter(backend)
    steps = (fp8_ordinal(y_q) - fp8_ordinal(ref_q)).abs()
    if not (backend == "triton" and ON_GPU):  # Triton's quantizing kernel may sum in another order (assert_alike)
        assert not steps[~may_differ].any(), f"{backend}: y_q differs from the reference where y does not"
    assert int(steps.max()) <= 1, f"{backend}: y_q up to {int(steps.max())} fp8 steps from the reference"
    share = (steps != 0).double().mean().item()
    assert share <= MAX_FP8_DIFFERENCE_SHARE, f"{backend}: {100 * share:.2f}% of y_q differs from the reference"


# --- 3. special rows ---------------------------------------------------------------------------


def special_rows(n: int, dtype: torch.dtype) -> torch.Tensor:
    """Seven rows: normal, zeros, one NaN, one +Inf, all ~1e30 (the fp32 sum of squares overflows:
    rstd 0, y signed zeros), one 1e30 among normal values (the same), normal."""
    x = randn(7, n, dtype=torch.float32)
    col = int(torch.randint(n, ()))
    x[1] = 0.0
    x[2, col] = float("nan")
    x[3, col] = float("inf")
    x[4] *= 1e30
    x[5, col] = 1e30
    return x.to(dtype)


@EXPECTED_NUMPY_WARNINGS
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)  # 1e30 overflows fp16
@pytest.mark.parametrize("n", SPECIAL_WIDTHS)
def test_special_rows(backend, n, dtype, mode):
    """Zero, NaN, Inf and huge rows: scales and y_q bitwise the quantization of the backend's own y."""
    x, w = special_rows(n, dtype), random_weight(n, dtype)
    y = rmsnorm.rms_norm(x, None, w, EPS, backend=backend)
    # Scales drawn from the normal rows 0 and 6 (the others hold NaN or nothing to scale).
    kwargs = quant_kwargs(mode, y[0::6])
    poison_quant_outputs(x)
    y_q, scale = rmsnorm.rms_norm_quant(x, w, EPS, backend=backend, **kwargs)
    expected_q, expected_scale = quantize_fp8_reference(y, 1, **kwargs)
    check_outputs(x, y_q, scale, kwargs)
    if mode != "static":
        assert_alike(backend, scale, expected_scale, f"{backend} row scales", y.dtype)
        # What the reference says, spelled out: the floor for a zero row, NaN for a row holding one.
        assert scale[1].item() == scale[4].item() == scale[5].item() == MIN_SCALE_FP32
        assert torch.isnan(scale[2]).item() and torch.isnan(scale[3]).item()
    skip_y_q_on_interpreter(backend)
    assert_alike(backend, y_q, expected_q, f"{backend} y_q")
    assert (y_q[1].float() == 0).all(), "a zero row must quantize to zeros (signed as the weight)"
    assert torch.isnan(y_q[2].float()).all(), "a row holding a NaN is NaN throughout (its rstd is NaN)"


@EXPECTED_NUMPY_WARNINGS
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", ISOLATION_WIDTHS)
def test_special_rows_affect_only_themselves(backend, n, mode):
    """Each row's y_q and scale are those of the row quantized alone: a NaN or zero row leaks into no other."""
    x, w = special_rows(n, torch.float32), random_weight(n, torch.float32)
    kwargs = quant_kwargs(mode, rmsnorm.rms_norm(x[0::6], None, w, EPS, backend=backend))
    y_q, scale = rmsnorm.rms_norm_quant(x, w, EPS, backend=backend, **kwargs)
    for row in range(x.shape[0]):
        alone_q, alone_scale = rmsnorm.rms_norm_quant(x[row : row + 1], w, EPS, backend=backend, **kwargs)
        assert_same(y_q[row : row + 1], alone_q, f"{backend} y_q of row {row}")
        if mode != "static":
            assert_same(scale[row : row + 1], alone_scale, f"{backend} scale of row {row}")


@EXPECTED_NUMPY_WARNINGS
@pytest.mark.parametrize("mode", MODES)
def test_huge_and_infinite_y_saturate(backend, mode):
    """y of +-2.5e30 (a weight of +-1e30) and +Inf (fp32's maximum times xhat > 1): +-448 under a static
    scale (or a bounded dynamic one); dynamic: an infinite row maximum gives an infinite scale, or scale_ub."""
    n = 64
    x, w = randn(4, n, dtype=torch.float32), random_weight(n, torch.float32)
    x[:, :3] = 3.0  # xhat > 2 there (the rows' RMS is about 1.2): times fp32's maximum, y overflows to Inf
    w[0], w[1], w[2] = 1e30, torch.finfo(torch.float32).max, -1e30  # y = 2.5e30, +Inf, -2.5e30 in columns 0, 1, 2
    y = rmsnorm.rms_norm(x, None, w, EPS, backend=backend)
    assert (y[:, 0] > 1e30).all() and (y[:, 1] == float("inf")).all() and (y[:, 2] < -1e30).all()
    kwargs = {
        "static": {"scale": torch.ones(1, device=DEVICE)},
        "dynamic": {},
        "scale_ub": {"scale_ub": torch.full((1,), 1e3, device=DEVICE)},
    }[mode]
    y_q, scale = rmsnorm.rms_norm_quant(x, w, EPS, backend=backend, **kwargs)
    expected_q, expected_scale = quantize_fp8_reference(y, 1, **kwargs)
    check_outputs(x, y_q, scale, kwargs)
    if mode == "dynamic":
        assert_alike(backend, scale, expected_scale, f"{backend} row scales", y.dtype)
        assert torch.isinf(scale).all()
    if mode == "scale_ub":
        assert_alike(backend, scale, expected_scale, f"{backend} row scales", y.dtype)
        assert (scale == torch.tensor(1e3) / FP8_E4M3_MAX).all()
    skip_y_q_on_interpreter(backend)
    assert_alike(backend, y_q, expected_q, f"{backend} y_q")
    if mode != "dynamic":
        saturated = torch.tensor([0x7E, 0x7E, 0xFE], dtype=torch.uint8, device=DEVICE)  # 448, 448, -448
        assert (y_q[:, :3].view(torch.uint8) == saturated).all(), "+-2.5e30 and +Inf must saturate to +-448"


# --- 4. add_rms_norm_quant ----------------------------------------------------------------------

# x's dtype and residual's: the same, or an fp32 residual stream beside 16-bit x.
RESIDUAL_DTYPES = [(d, d) for d in DTYPES] + [(torch.bfloat16, torch.float32), (torch.float16, torch.float32)]


@pytest.mark.parametrize("mode", ("static", "dynamic"))
@pytest.mark.parametrize("dtype, residual_dtype", RESIDUAL_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("n", ADD_WIDTHS)
def test_add_rms_norm_quant_exact(backend, n, dtype, residual_dtype, mode):
    """residual_out bitwise add_rms_norm's; y_q and scales the quantization of its y; an fp32 residual stream too."""
    x, residual = randn(ROWS, n, dtype=dtype), randn(ROWS, n, dtype=residual_dtype, scale=4.0)
    w = random_weight(n, dtype)
    try:
        y, residual_out = rmsnorm.add_rms_norm(x, residual, w, EPS, backend=backend)
    except TypeError as refusal:
        # A backend that refuses this residual in add_rms_norm (cuda an fp32 stream, so far) refuses it here alike.
        with pytest.raises(TypeError, match=re.escape(str(refusal))):
            rmsnorm.add_rms_norm_quant(x, residual, w, EPS, backend=backend)
        return
    kwargs = quant_kwargs(mode, y)
    poison_quant_outputs(x)
    y_q, res_out_q, scale = rmsnorm.add_rms_norm_quant(x, residual, w, EPS, backend=backend, **kwargs)
    expected_q, expected_scale = quantize_fp8_reference(y, 1, **kwargs)
    check_outputs(x, y_q, scale, kwargs)
    assert res_out_q.dtype == residual_dtype and res_out_q.shape == x.shape and res_out_q.is_contiguous()
    assert_same(res_out_q, residual_out, f"{backend} residual_out")
    if mode != "static":
        assert_alike(backend, scale, expected_scale, f"{backend} row scales", y.dtype)
    skip_y_q_on_interpreter(backend)
    assert_alike(backend, y_q, expected_q, f"{backend} y_q")


def test_add_rms_norm_quant_against_reference(backend):
    """residual_out is x + residual rounded once (add_rms_norm_reference's, bit for bit); an fp32 stream keeps fp32."""
    n = 300
    for dtype, residual_dtype in ((torch.float16, torch.float16), (torch.bfloat16, torch.float32)):
        x, residual = randn(ROWS, n, dtype=dtype), randn(ROWS, n, dtype=residual_dtype, scale=8.0)
        try:
            _, residual_out, _ = rmsnorm.add_rms_norm_quant(x, residual, None, EPS, backend=backend)
        except TypeError:
            assert backend == "cuda" and dtype != residual_dtype  # a refusal test_add_rms_norm_quant_exact checks
            continue
        assert residual_out.dtype == residual_dtype
        _, expected = add_rms_norm_reference(x, residual, (n,))
        assert_same(residual_out, expected, f"{backend} residual_out")


@pytest.mark.skipif(not ON_GPU, reason="auto picks a kernel backend only on a CUDA GPU")
def test_auto_takes_an_fp32_residual_stream(caplog):
    """auto sends an fp32 residual beside bf16 x to a backend that takes it, and gives that backend's bits."""
    x, residual = randn(ROWS, 256, dtype=torch.bfloat16), randn(ROWS, 256, dtype=torch.float32)
    w = random_weight(256, torch.bfloat16)
    with caplog.at_level(logging.DEBUG, logger="rmsnorm"):
        got = rmsnorm.add_rms_norm_quant(x, residual, w, EPS)
    chosen = re.search(r"add_rms_norm_quant: backend=(\w+)", caplog.text)
    assert chosen is not None and chosen.group(1) in KERNEL_BACKENDS, caplog.text
    assert got[1].dtype == torch.float32
    expected = rmsnorm.add_rms_norm_quant(x, residual, w, EPS, backend=chosen.group(1))
    for a, b, what in zip(got, expected, ("y_q", "residual_out", "scale")):
        assert_same(a, b, f"auto ({chosen.group(1)}) {what}")


# --- 5. strided and N-D inputs -----------------------------------------------------------------

LAYOUTS = ("heads", "lead4", "transposed", "misaligned", "3d")


def strided_input(layout: str, dtype: torch.dtype) -> torch.Tensor:
    """x in a layout other than contiguous [rows, N], with N = its last dim."""
    if layout == "heads":  # QK-norm: q = qkv[..., :H * D].view(B, S, H, D), normalized over (D,)
        b, s, h, d = (2, 16, 8, 128) if ON_GPU else (2, 3, 4, 16)
        return randn(b, s, 3 * h * d, dtype=dtype)[..., : h * d].view(b, s, h, d)
    if layout == "lead4":  # four leading dims whose strides cannot merge: a 5-D view, read in place
        return randn(4, 6, 4, 6, 24, dtype=dtype)[::2, ::2, ::2, ::2]
    if layout == "transposed":  # a column stride != 1: copied
        return randn(300, ROWS + 2, dtype=dtype).t()
    if layout == "misaligned":  # starts one element into its row, row stride 301
        return randn(ROWS + 2, 301, dtype=dtype)[:, 1:]
    return randn(2, ROWS, 300, dtype=dtype)[:, :, :257]  # 3-D, row stride 300


@pytest.mark.parametrize("mode", ("static", "dynamic"))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_strided_inputs(backend, layout, dtype, mode):
    """Per-head views, transposed, misaligned and 3-D inputs: the results of x.contiguous() (kernel
    backends; the torch reference may sum in another order), scales of shape x.shape[:-1] + (1,),
    and bitwise the quantization of the backend's own y on the same input."""
    x = strided_input(layout, dtype)
    assert not x.is_contiguous()
    n = x.shape[-1]
    w = random_weight(n, dtype)
    y = rmsnorm.rms_norm(x, None, w, EPS, backend=backend)
    kwargs = quant_kwargs(mode, y)
    y_q, scale = rmsnorm.rms_norm_quant(x, w, EPS, backend=backend, **kwargs)
    check_outputs(x, y_q, scale, kwargs)
    if mode == "dynamic":
        assert scale.shape == (*x.shape[:-1], 1)
        assert_alike(backend, scale, quantize_fp8_reference(y, 1)[1], f"{backend} {layout} row scales", y.dtype)
    if backend != "torch":
        copy_q, copy_scale = rmsnorm.rms_norm_quant(x.contiguous(), w, EPS, backend=backend, **kwargs)
        assert_alike(backend, y_q, copy_q, f"{backend} {layout} y_q against x.contiguous()")
        if mode == "dynamic":
            assert_alike(backend, scale, copy_scale, f"{backend} {layout} scales against x.contiguous()", y.dtype)
        # add_rms_norm_quant: x strided, residual another layout (permuted: no row view, copied).
        residual = randn(*reversed(x.shape), dtype=dtype).permute(*reversed(range(x.dim())))
        got = rmsnorm.add_rms_norm_quant(x, residual, w, EPS, backend=backend, **kwargs)
        want = rmsnorm.add_rms_norm_quant(x.contiguous(), residual.contiguous(), w, EPS, backend=backend, **kwargs)
        for a, b, what in zip(got, want, ("y_q", "residual_out", "scale")):
            label = f"{backend} {layout} add_rms_norm_quant {what} against contiguous inputs"
            assert_alike(backend, a, b, label, y.dtype)
    skip_y_q_on_interpreter(backend)
    assert_alike(backend, y_q, quantize_fp8_reference(y, 1, **kwargs)[0], f"{backend} {layout} y_q")


# --- 6. weight=None, weight_offset, casting_mode "llama" -----------------------------------------

# An odd width; on the GPU also one that CUDA stages in shared memory.
VARIANT_WIDTHS = (257, 32768) if ON_GPU else (257,)
VARIANTS = {
    "no_weight": {"weight": False, "weight_offset": 0.0, "casting_mode": "fp32"},
    "weight_offset": {"weight": True, "weight_offset": 1.0, "casting_mode": "fp32"},
    "llama": {"weight": True, "weight_offset": 0.0, "casting_mode": "llama"},
    "llama_offset": {"weight": True, "weight_offset": 1.0, "casting_mode": "llama"},
}


@pytest.mark.parametrize("n", VARIANT_WIDTHS)
@pytest.mark.parametrize("mode", ("static", "dynamic"))
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("with_residual", (False, True), ids=("rms_norm_quant", "add_rms_norm_quant"))
@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_exact_against_own_output(backend, variant, with_residual, dtype, mode, n):
    """weight=None, weight_offset=1.0 (Gemma) and casting_mode="llama": the quantization of the backend's own y."""
    spec = VARIANTS[variant]
    x, residual = randn(ROWS, n, dtype=dtype), randn(ROWS, n, dtype=dtype)
    w = random_weight(n, dtype, mean=0.0 if spec["weight_offset"] else 1.0) if spec["weight"] else None
    options = {"weight_offset": spec["weight_offset"], "casting_mode": spec["casting_mode"], "backend": backend}
    if with_residual:
        y, residual_out = rmsnorm.add_rms_norm(x, residual, w, EPS, **options)
    else:
        y = rmsnorm.rms_norm(x, None, w, EPS, **options)
    kwargs = quant_kwargs(mode, y)
    if with_residual:
        y_q, res_out_q, scale = rmsnorm.add_rms_norm_quant(x, residual, w, EPS, **options, **kwargs)
        assert_same(res_out_q, residual_out, f"{backend} {variant} residual_out")
    else:
        y_q, scale = rmsnorm.rms_norm_quant(x, w, EPS, **options, **kwargs)
    expected_q, expected_scale = quantize_fp8_reference(y, 1, **kwargs)
    check_outputs(x, y_q, scale, kwargs)
    if mode != "static":
        assert_alike(backend, scale, expected_scale, f"{backend} {variant} row scales", y.dtype)
    skip_y_q_on_interpreter(backend)
    assert_alike(backend, y_q, expected_q, f"{backend} {variant} y_q")


def test_scale_tensor_forms(backend):
    """A static scale of shape (), (1,), (1, 1), or one element viewed inside a longer tensor: the same y_q,
    and each returned as given."""
    x, w = randn(ROWS, 200, dtype=torch.bfloat16), random_weight(200, torch.bfloat16)
    value = static_scale(rmsnorm.rms_norm(x, None, w, EPS, backend=backend))
    longer = torch.cat([torch.full((3,), 1e-3, device=DEVICE), value, torch.full((2,), 7.0, device=DEVICE)])
    forms = {"()": value.reshape(()), "(1,)": value.clone(), "(1, 1)": value.reshape(1, 1), "view": longer[3:4]}
    first = None
    for name, scale in forms.items():
        y_q, returned = rmsnorm.rms_norm_quant(x, w, EPS, scale=scale, backend=backend)
        assert returned is scale, name
        first = y_q if first is None else first
        assert_same(y_q, first, f"{backend} y_q with scale of form {name}")


def test_empty_rows(backend):
    """No rows: empty y_q, and dynamic scales of shape (0, 1)."""
    x = randn(0, 64, dtype=torch.bfloat16)
    y_q, scale = rmsnorm.rms_norm_quant(x, None, backend=backend)
    assert y_q.shape == (0, 64) and y_q.dtype == FP8 and scale.shape == (0, 1) and scale.dtype == torch.float32
    y_q, residual_out, scale = rmsnorm.add_rms_norm_quant(x, x, None, backend=backend)
    assert y_q.shape == residual_out.shape == (0, 64) and scale.shape == (0, 1)


# --- 7. validation ------------------------------------------------------------------------------


def _scalar(value, **kwargs):
    return lambda: torch.tensor([value], device=DEVICE, **kwargs)


BAD_ARGUMENTS = {
    "out_dtype_e5m2": ({"out_dtype": torch.float8_e5m2}, TypeError, "out_dtype must be torch.float8_e4m3fn"),
    "out_dtype_int8": ({"out_dtype": torch.int8}, TypeError, "out_dtype must be torch.float8_e4m3fn"),
    "out_dtype_bf16": ({"out_dtype": torch.bfloat16}, TypeError, "out_dtype must be torch.float8_e4m3fn"),
    "scale_float16": ({"scale": _scalar(0.5, dtype=torch.float16)}, TypeError, "scale must be a float32 tensor"),
    "scale_float64": ({"scale": _scalar(0.5, dtype=torch.float64)}, TypeError, "scale must be a float32 tensor"),
    "scale_two_elements": ({"scale": lambda: torch.ones(2, device=DEVICE)}, ValueError, "scale must hold one element"),
    "scale_empty": ({"scale": lambda: torch.ones(0, device=DEVICE)}, ValueError, "scale must hold one element"),
    "scale_float": ({"scale": 0.5}, TypeError, "scale must be a float32 tensor of one element, or None"),
    "scale_list": ({"scale": [0.5]}, TypeError, "scale must be a float32 tensor of one element, or None"),
    "scale_ub_bf16": ({"scale_ub": _scalar(1.0, dtype=torch.bfloat16)}, TypeError, "scale_ub must be a float32 tensor"),
    "scale_ub_1x2": ({"scale_ub": lambda: torch.ones(1, 2, device=DEVICE)}, ValueError, "scale_ub must hold one"),
    "scale_ub_float": ({"scale_ub": 1.0}, TypeError, "scale_ub must be a float32 tensor"),
    "scale_and_scale_ub": ({"scale": _scalar(0.5), "scale_ub": _scalar(1.0)}, ValueError, "scale_ub .* static scale"),
}  # fmt: skip


@pytest.mark.parametrize("with_residual", (False, True), ids=("rms_norm_quant", "add_rms_norm_quant"))
@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_quant_arguments(backend, case, with_residual):
    kwargs, error, message = BAD_ARGUMENTS[case]
    kwargs = {key: value() if callable(value) else value for key, value in kwargs.items()}
    x = randn(4, 16, dtype=torch.bfloat16)
    with pytest.raises(error, match=message):
        if with_residual:
            rmsnorm.add_rms_norm_quant(x, x.clone(), None, backend=backend, **kwargs)
        else:
            rmsnorm.rms_norm_quant(x, None, backend=backend, **kwargs)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU to put the scale on another device than x")
@pytest.mark.parametrize("name", ("scale", "scale_ub"))
def test_scale_on_another_device(backend, name):
    x = randn(4, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=f"{name} must be on x's device"):
        rmsnorm.rms_norm_quant(x, None, backend=backend, **{name: torch.ones(1)})
    with pytest.raises(ValueError, match=f"{name} must be on x's device"):
        rmsnorm.add_rms_norm_quant(x, x.clone(), None, backend=backend, **{name: torch.ones(1)})


def test_quant_still_checks_the_rms_norm_arguments(backend):
    """rms_norm's own checks apply: a bad weight, casting_mode or residual is refused as there."""
    x = randn(4, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="weight's shape"):
        rmsnorm.rms_norm_quant(x, torch.ones(8, device=DEVICE), backend=backend)
    with pytest.raises(ValueError, match="casting_mode must be one of"):
        rmsnorm.rms_norm_quant(x, None, casting_mode="bf16", backend=backend)
    with pytest.raises(ValueError, match="weight_offset needs a weight"):
        rmsnorm.rms_norm_quant(x, None, weight_offset=1.0, backend=backend)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        rmsnorm.add_rms_norm_quant(x, x[:, :-1], None, backend=backend)
    with pytest.raises(TypeError, match="residual must be a torch.Tensor"):
        rmsnorm.add_rms_norm_quant(x, x.tolist(), None, backend=backend)


# --- 8. real operators: opcheck, torch.compile ---------------------------------------------------


def test_opcheck(kernel_backend):
    op = rmsnorm.ops.quant_op(kernel_backend)
    x, residual = randn(5, 64, dtype=torch.bfloat16), randn(5, 64, dtype=torch.bfloat16)
    x32 = randn(5, 64, dtype=torch.float32)
    heads = randn(2, 3, 3 * 4 * 16, dtype=torch.bfloat16)[..., : 4 * 16].view(2, 3, 4, 16)
    w, w16 = random_weight(64, torch.bfloat16), random_weight(16, torch.bfloat16)
    scale, scale_ub = torch.full((1,), 0.01, device=DEVICE), torch.full((1,), 2.0, device=DEVICE)
    samples = [
        (x, None, w, 0.0, EPS, False, scale, None),  # static
        (x32, None, random_weight(64, torch.float32), 0.0, EPS, False, scale, None),  # static, fp32
        (x, None, w, 0.0, EPS, False, None, None),  # dynamic
        (x, None, None, 0.0, EPS, True, None, scale_ub),  # dynamic, bounded, no weight, llama
        (x, residual, w, 1.0, EPS, False, scale, None),  # residual, static
        (x, residual, w, 0.0, EPS, False, None, scale_ub),  # residual, dynamic
        (heads, None, w16, 0.0, EPS, False, None, None),  # a per-head view
    ]
    for args in samples:
        torch.library.opcheck(op, args)


def test_compiled_is_bitwise_eager(kernel_backend):
    def step(x, residual, w, scale, scale_ub):
        y_q, static = rmsnorm.rms_norm_quant(x, w, EPS, scale=scale, backend=kernel_backend)
        y_q_dynamic, dynamic = rmsnorm.rms_norm_quant(x, w, EPS, casting_mode="llama", backend=kernel_backend)
        add_q, residual_out, add_scale = rmsnorm.add_rms_norm_quant(
            x, residual, w, EPS, scale_ub=scale_ub, backend=kernel_backend
        )
        return y_q, static, y_q_dynamic, dynamic, add_q, residual_out, add_scale

    x, residual = randn(2, 9, 256, dtype=torch.bfloat16), randn(2, 9, 256, dtype=torch.bfloat16)
    w = random_weight(256, torch.bfloat16)
    args = (x, residual, w, torch.full((1,), 0.01, device=DEVICE), torch.full((1,), 2.0, device=DEVICE))
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True)(*args)
    for i, (a, b) in enumerate(zip(eager, compiled)):
        assert_same(b, a, f"{kernel_backend} compiled output {i}")


# --- 9. determinism -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", (300, 65537) if ON_GPU else (300,))
def test_deterministic(backend, n):
    x, residual = randn(ROWS, n, dtype=torch.bfloat16), randn(ROWS, n, dtype=torch.bfloat16)
    w = random_weight(n, torch.bfloat16)
    scale = torch.full((1,), 0.01, device=DEVICE)
    calls = (
        lambda: rmsnorm.rms_norm_quant(x, w, EPS, backend=backend),
        lambda: rmsnorm.rms_norm_quant(x, w, EPS, scale=scale, backend=backend),
        lambda: rmsnorm.add_rms_norm_quant(x, residual, w, EPS, backend=backend),
    )
    for i, call in enumerate(calls):
        for a, b in zip(call(), call()):
            assert_same(a, b, f"{backend} call {i} repeated")
