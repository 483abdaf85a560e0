"""Reliability: the same bits on every run and wherever a row sits in its batch; a NaN or an Inf stays
in its row; every input layout; the tiniest rows. rms_norm and add_rms_norm, forward and backward.

tests/test_rms_norm.py's TestReproducibility covers rms_norm's forward, 3 runs, and a row alone
against the same row in its batch; this file adds the backward, add_rms_norm, 20 runs, and a row at
index 0 against the same row at index 4000 among other rows. Triton's interpreter on CPU is about a
thousand times slower than the GPU: there the runs, rows and widths shrink.
"""

import math

import pytest
import torch

from rmsnorm import add_rms_norm, rms_norm
from tests.conftest import DEVICE, ON_GPU
from tests.inputs import randn, random_weight
from tests.numerics import as_bits, check_rms_norm

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
OPS = ("rms_norm", "add_rms_norm")

# --- determinism and batch invariance ------------------------------------------------------------
RUNS = 20 if ON_GPU else 3
# (rows, n): rows enough for several persistent backward programs, whose dweight partials are
# summed afterwards (the order that must not change); n in one register tile, then rows split into
# chunks (backward beyond 8K, forward too beyond 32K).
DETERMINISM_SHAPES = ((4097, 1000), (1024, 12288), (64, 65537)) if ON_GPU else ((33, 1000), (3, 12288))
# A row alone (M = 1), at index 0 of BATCH_ROWS rows, and at index FAR_INDEX of other BATCH_ROWS rows.
BATCH_ROWS = 4097 if ON_GPU else 33
FAR_INDEX = 4000 if ON_GPU else 32
INVARIANCE_WIDTHS = (127, 4096, 12288, 32769) if ON_GPU else (127, 1000)


def op_inputs(op, shape, dtype):
    """x, and for add_rms_norm a residual of a larger scale, as add_rms_norm sees in a transformer."""
    x = randn(*shape, dtype=dtype)
    return (x,) if op == "rms_norm" else (x, randn(*shape, dtype=dtype, scale=4.0))


def forward_backward(op, backend, inputs, weight, output_grads, eps=1e-6, weight_offset=0.0):
    """Outputs then gradients of `op` on fresh leaves: (y, dx, dweight) for rms_norm,
    (y, residual_out, dx, dresidual, dweight) for add_rms_norm."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    w = weight.detach().requires_grad_()
    if op == "rms_norm":
        outputs = (rms_norm(leaves[0], None, w, eps, weight_offset=weight_offset, backend=backend),)
    else:
        outputs = add_rms_norm(*leaves, w, eps, weight_offset=weight_offset, backend=backend)
    grads = torch.autograd.grad(outputs, leaves + [w], output_grads[: len(outputs)])
    return tuple(o.detach() for o in outputs) + grads


def result_names(op):
    return ("y", "dx", "dweight") if op == "rms_norm" else ("y", "residual_out", "dx", "dresidual", "dweight")


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows, n", DETERMINISM_SHAPES)
def test_same_bits_every_run(backend, rows, n, dtype, op):
    """Outputs and every gradient, dweight included, are bitwise the same on each of RUNS runs."""
    inputs = op_inputs(op, (rows, n), dtype)
    weight = random_weight(n, dtype, mean=0.0)
    output_grads = (randn(rows, n, dtype=dtype), randn(rows, n, dtype=dtype))
    first = forward_backward(op, backend, inputs, weight, output_grads, weight_offset=1.0)
    for run in range(1, RUNS):
        again = forward_backward(op, backend, inputs, weight, output_grads, weight_offset=1.0)
        for name, a, b in zip(result_names(op), first, again):
            assert torch.equal(a, b), f"{name} of run {run} differs from run 0"


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", INVARIANCE_WIDTHS)
def test_row_same_alone_and_anywhere_in_a_batch(backend, n, dtype, op):
    """A row's outputs and its row of every gradient (dx, dresidual) are bitwise the same alone (M = 1),
    at index 0 of a batch and at index FAR_INDEX of a batch of other rows (dweight sums all the rows)."""
    if backend == "torch":
        pytest.skip("the torch reference makes no promise of batch invariance")
    row = op_inputs(op, (1, n), dtype)
    row_grads = (randn(1, n, dtype=dtype), randn(1, n, dtype=dtype))
    weight = random_weight(n, dtype)

    def placed(index):
        """The row and its gradients at `index` among BATCH_ROWS freshly drawn rows."""
        inputs = op_inputs(op, (BATCH_ROWS, n), dtype)
        grads = (randn(BATCH_ROWS, n, dtype=dtype), randn(BATCH_ROWS, n, dtype=dtype))
        for batch, alone in zip(inputs + grads, row + row_grads):
            batch[index] = alone[0]
        return inputs, grads

    alone = forward_backward(op, backend, row, weight, row_grads)
    for index in (0, FAR_INDEX):
        inputs, grads = placed(index)
        in_batch = forward_backward(op, backend, inputs, weight, grads)
        for name, a, b in zip(result_names(op)[:-1], alone, in_batch):
            assert torch.equal(a[0], b[index]), f"{name} of the row alone differs from row {index} of {BATCH_ROWS}"


# --- NaN and Inf ---------------------------------------------------------------------------------
BAD_VALUES = ("nan", "inf", "-inf")
BAD_ROWS, BAD_ROW = 6, 2
# 40000: Triton's one tile of rms_norm's 16-bit rows held as loaded (triton_kernels.FWD_HELD_MAX_TILE_N),
# a third of it masked; the split rows elsewhere. GPU only: 20-45 s a case in Triton's interpreter.
BAD_WIDTHS = (200, 40000) if ON_GPU else (200,)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad", BAD_VALUES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", BAD_WIDTHS)
def test_nan_or_inf_stays_in_its_row(backend, n, dtype, bad, op):
    """One NaN or Inf element (in x; for add_rms_norm in the residual) changes only its row.

    Every other row of y, residual_out, dx and dresidual is bitwise what it is without the bad
    element. The bad row is what the float64 reference makes of it (check_rms_norm: NaN exactly where
    the reference has NaN), which is:
      - NaN: rstd is NaN, so y and dx are NaN across the whole row, and dweight is NaN in every
        column (each column's sum has the row's NaN xhat in it);
      - +-Inf: the mean square is Inf and rstd = 1/sqrt(Inf) = 0, so y is NaN at the Inf's column
        (Inf * 0) and 0 elsewhere; dx is NaN across the row (the row's dot(xhat, dy * w) is NaN);
        dweight is NaN in the Inf's column only, and the other columns are finite: the bad row
        adds dy * 0 to them.
    """
    column = int(torch.randint(n, ()))
    clean = op_inputs(op, (BAD_ROWS, n), dtype)
    dirty = tuple(t.clone() for t in clean)
    dirty[-1][BAD_ROW, column] = float(bad)
    weight = random_weight(n, dtype)
    output_grads = (randn(BAD_ROWS, n, dtype=dtype), randn(BAD_ROWS, n, dtype=dtype))
    residual = dirty[1] if op == "add_rms_norm" else None
    check_rms_norm(backend, dirty[0], (n,), weight, 1e-6, residual=residual, dy=output_grads[0],
                   dresidual_out=output_grads[1] if residual is not None else None)  # fmt: skip

    expected = forward_backward(op, backend, clean, weight, output_grads)
    got = forward_backward(op, backend, dirty, weight, output_grads)
    others = [r for r in range(BAD_ROWS) if r != BAD_ROW]
    for name, a, b in zip(result_names(op)[:-1], expected, got):
        assert torch.equal(a[others], b[others]), f"{name}: a {bad} in row {BAD_ROW} changed other rows"
    got = dict(zip(result_names(op), got))
    y, dx, dweight = got["y"], got["dx"], got["dweight"]
    nan_columns = torch.zeros(n, dtype=torch.bool, device=DEVICE)
    nan_columns[column] = True
    if bad == "nan":
        nan_columns[:] = True
    assert torch.equal(torch.isnan(y[BAD_ROW]), nan_columns), f"y's NaN in the {bad} row"
    if bad != "nan":
        assert torch.equal(y[BAD_ROW][~nan_columns], torch.zeros_like(y[BAD_ROW][~nan_columns]))
    assert torch.isnan(dx[BAD_ROW]).all(), f"dx of the {bad} row"
    assert torch.equal(torch.isnan(dweight), nan_columns), f"dweight's NaN columns with a {bad}"
    assert torch.isfinite(dweight[~nan_columns]).all()


# --- layouts -------------------------------------------------------------------------------------
# (batch, sequence, heads, head dim): normalized over the head dim, or over heads and head dim.
LAYOUT_SHAPE = (4, 33, 8, 128) if ON_GPU else (2, 3, 4, 40)
LAYOUTS = ("transposed", "strided_last_dim", "expanded_rows", "slice_of_larger", "qkv_heads", "contiguous")
GRAD_LAYOUTS = ("contiguous", "transposed", "expanded")


def in_layout(layout, shape, dtype):
    """Random values of `shape` laid out as `layout`. Memory around a view that the view does not
    cover holds NaN: a kernel that reads past its rows or columns fails the comparison."""
    b, s, h, d = shape
    if layout == "contiguous":
        return randn(*shape, dtype=dtype)
    if layout == "transposed":  # every dim reversed in memory: the normalized dims are not last-contiguous
        return randn(*reversed(shape), dtype=dtype).permute(3, 2, 1, 0)
    if layout in ("expanded_rows", "expanded"):  # one row seen through stride 0 in every leading dim
        return randn(1, 1, 1, d, dtype=dtype).expand(shape)
    if layout == "qkv_heads":  # k of a fused QKV projection, split into heads
        return randn(b, s, 3 * h * d, dtype=dtype)[..., h * d : 2 * h * d].view(shape)
    if layout == "strided_last_dim":
        base = torch.full((b, s, h, 2 * d), float("nan"), dtype=dtype, device=DEVICE)
        view = base[..., ::2]
    else:  # slice_of_larger: offset in three dims, rows of stride d + 5
        base = torch.full((b + 1, s + 2, h, d + 5), float("nan"), dtype=dtype, device=DEVICE)
        view = base[1:, 2:, :, 3 : 3 + d]
    view.copy_(randn(*shape, dtype=dtype))
    return view


@pytest.mark.parametrize("grad_layout", GRAD_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("normalized_dims", (1, 2))
@pytest.mark.parametrize("layout", LAYOUTS[:-1])
def test_rms_norm_any_layout(backend, layout, normalized_dims, dtype, grad_layout):
    """Any view of x, and a gradient in any layout: right against float64 (check_rms_norm, which also
    checks that y is contiguous with x's shape and dtype)."""
    x = in_layout(layout, LAYOUT_SHAPE, dtype)
    shape = LAYOUT_SHAPE[-normalized_dims:]
    weight = random_weight(math.prod(shape), dtype).view(shape)
    dy = in_layout(grad_layout, LAYOUT_SHAPE, dtype)
    check_rms_norm(backend, x, shape, weight, 1e-5, dy=dy)


@pytest.mark.parametrize("grad_layout", GRAD_LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("normalized_dims", (1, 2))
@pytest.mark.parametrize("layout", LAYOUTS[:-1])
def test_add_rms_norm_any_layout(backend, layout, normalized_dims, dtype, grad_layout):
    """x in one layout, the residual in the next one of LAYOUTS, both gradients in grad_layout."""
    x = in_layout(layout, LAYOUT_SHAPE, dtype)
    residual = in_layout(LAYOUTS[LAYOUTS.index(layout) + 1], LAYOUT_SHAPE, dtype)
    shape = LAYOUT_SHAPE[-normalized_dims:]
    weight = random_weight(math.prod(shape), dtype).view(shape)
    dy, dresidual_out = (in_layout(grad_layout, LAYOUT_SHAPE, dtype) for _ in range(2))
    check_rms_norm(backend, x, shape, weight, 1e-5, residual=residual, dy=dy, dresidual_out=dresidual_out)


# --- tiny rows -----------------------------------------------------------------------------------
TINY_WIDTHS = (1, 2, 3, 4)
# M = 1, and a few rows: a tile of rows mostly masked off.
TINY_ROWS = (1, 5)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("weighted", (True, False), ids=("weight", "no_weight"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", TINY_WIDTHS)
@pytest.mark.parametrize("rows", TINY_ROWS)
def test_tiny_rows(backend, rows, n, dtype, weighted, op):
    """Rows of 1 to 4 elements: every gradient against the float64 analytic gradient of the reference.

    At n = 1, y = x / sqrt(x^2 + eps) * w is nearly sign(x) * w, dx = w * dy * eps / (x^2 + eps)^1.5
    is a near-total cancellation, and dweight = sum over rows of dy * xhat: the classic garbage cases.
    """
    x = randn(rows, n, dtype=dtype)
    residual = randn(rows, n, dtype=dtype) if op == "add_rms_norm" else None
    weight = random_weight(n, dtype) if weighted else None
    check_rms_norm(backend, x, (n,), weight, 1e-6, residual=residual)


def _triton_kernels_or_skip():
    from rmsnorm import available_backends, triton_kernels

    if "triton" not in available_backends():
        pytest.skip("the triton backend needs a CUDA GPU, or TRITON_INTERPRET=1 on CPU")
    return triton_kernels


# --- the Triton split-row forward's lag ----------------------------------------------------------
# Wider than one Triton forward tile (triton_kernels.FWD_MAX_TILE_N): rows cut into chunks, each
# summed by one program and normalized by a later one (rms_norm_fwd_split_kernel).
SPLIT_N = 32769
SPLIT_ROWS = 64 if ON_GPU else 3


@pytest.mark.parametrize("residual", (False, True), ids=("rms_norm", "add_rms_norm"))
def test_triton_split_forward_lag_changes_no_bits(residual, monkeypatch):
    """How far behind its row's sums a chunk is normalized is a matter of speed: the least lag (a row
    and a chunk an SM), the default, and all sums first give the same bits, a NaN row and an Inf row
    among them, and the NaN and Inf stay in their rows."""
    triton_kernels = _triton_kernels_or_skip()
    assert SPLIT_N > triton_kernels.FWD_MAX_TILE_N
    # bf16 rms_norm rows this wide are otherwise one tile (FWD_HELD_MAX_TILE_N).
    monkeypatch.setattr(triton_kernels, "FWD_HELD_MAX_TILE_N", triton_kernels.FWD_MAX_TILE_N)
    x = randn(SPLIT_ROWS, SPLIT_N, dtype=torch.bfloat16)
    x[1, 5] = float("nan")
    x[2, SPLIT_N - 1] = float("inf")
    res = randn(SPLIT_ROWS, SPLIT_N, dtype=torch.bfloat16) if residual else None
    w = random_weight(SPLIT_N, torch.bfloat16)
    results = []
    for lag_bytes in (0, triton_kernels.FWD_SPLIT_LAG_BYTES, 1 << 50):
        monkeypatch.setattr(triton_kernels, "FWD_SPLIT_LAG_BYTES", lag_bytes)
        y, residual_out, rstd = triton_kernels.rms_norm_fwd(x, res, w, 0.5, 1e-6)
        results.append((y.view(torch.int16), rstd.view(torch.int32)))
        if residual:
            results[-1] += (residual_out.view(torch.int16),)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
    y = results[0][0].view(torch.bfloat16)
    assert y[1].isnan().all() and y[2].isnan().any() and not y[[0, *range(3, SPLIT_ROWS)]].isnan().any()


# --- the Triton wide-row backward in one pass ----------------------------------------------------
# Wider than one Triton backward tile (triton_kernels.BWD_MAX_TILE_N): rms_norm_bwd_split_kernel,
# whose programs wait for each row's chunk partials, flagged READY over a scratch of zeros; or, where
# the GPU cannot hold one program a chunk, the two passes (a dot-product kernel, then dx).
BWD_SPLIT_N = 16385 if ON_GPU else 8193


def test_triton_split_backward_partials_of_any_value():
    """A chunk's partial dot product may be any float: -1.0 (the forward's PENDING), 0.0, -0.0 and
    a negative one whose bits sign-extend, each in a chunk of its own, pass through the READY flag
    unchanged (on the GPU, a partial mistaken for "not yet" would hang the kernel)."""
    triton_kernels = _triton_kernels_or_skip()
    chunk = triton_kernels._bwd_split_plan(BWD_SPLIT_N, 4, 4).chunk_n
    n = 4 * chunk + chunk // 2 + 1  # four whole chunks, then a partly masked one
    assert triton_kernels.BWD_MAX_TILE_N < n and triton_kernels._bwd_split_plan(n, 4, 4).chunk_n == chunk
    x = torch.ones(2, n, dtype=torch.float32, device=DEVICE)
    dy = torch.zeros_like(x)
    dy[:, :chunk] = -1.0 / chunk  # partial -1.0 (x * rstd = 1, weight 1)
    dy[:, chunk : 2 * chunk] = 0.0  # partial 0.0
    dy[:, 2 * chunk : 3 * chunk] = -0.0  # partial -0.0
    dy[:, 3 * chunk : 4 * chunk] = -3.0 / chunk  # partial -3.0: sign bit and high exponent bits
    dy[:, 4 * chunk :] = 0.25  # the last chunks, partly masked
    rstd = torch.ones(2, dtype=torch.float32, device=DEVICE)
    w = torch.ones(n, dtype=torch.float32, device=DEVICE)
    dx, dw = triton_kernels.rms_norm_bwd(dy, x, None, w, 0.0, rstd, True)
    # The same formula in float64: dx = dy - x * mean(x * dy) with x = 1 and rstd = 1.
    dy64 = dy.double()
    expected = dy64 - dy64.mean(dim=1, keepdim=True)
    tolerance = 8 * torch.finfo(torch.float32).eps * (dy64.abs() + expected.abs().max())
    assert ((dx.double() - expected).abs() <= tolerance).all()
    assert torch.equal(dw, dy.sum(dim=0))


@pytest.mark.parametrize("passes", ("one pass", "two passes"))
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float32), ids=str)
def test_triton_split_backward_either_path(passes, op, dtype, monkeypatch):
    """The one-pass backward and the two passes it falls back to both match the reference, NaN and
    Inf rows kept in their rows."""
    triton_kernels = _triton_kernels_or_skip()
    if passes == "two passes":
        monkeypatch.setattr(triton_kernels, "_backward_split", lambda *args: None)
        monkeypatch.setattr(triton_kernels, "_bwd_plans", {})  # no plan of the one pass from an earlier test
    rows = 64 if ON_GPU else 3
    x = randn(rows, BWD_SPLIT_N, dtype=dtype)
    x[1, 7] = float("nan")
    x[2, BWD_SPLIT_N - 1] = float("inf")
    residual = randn(rows, BWD_SPLIT_N, dtype=dtype) if op == "add_rms_norm" else None
    check_rms_norm("triton", x, (BWD_SPLIT_N,), random_weight(BWD_SPLIT_N, dtype), 1e-6, residual=residual)


# --- the CUDA wide-row backward in one pass ------------------------------------------------------
# Rows over 64 KB a tensor (csrc/rms_norm_bwd.cuh, kBwdStagedMaxRowBytes): rms_norm_bwd_split_kernel,
# one-warp blocks of one column chunk each, all resident at once, each waiting for every chunk's share
# of a row's c, flagged over a workspace of zeros, one row after its own. A chunk is 32 lanes of
# kBwdSplitItems (4) 16-byte Vecs: 1024 16-bit or 512 fp32 columns.
CUDA_SPLIT_FP32_CHUNK_N = 512
# Aligned (16-bit rows held in registers until their c is known) and misaligned (loaded again).
CUDA_SPLIT_WIDTHS = (32768 + 1024, 32768 + 1025)
CUDA_SPLIT_ROWS = 300


def _cuda_or_skip():
    from rmsnorm import cuda_ext

    if not ON_GPU:
        pytest.skip("the cuda backend runs only on a CUDA GPU; none here")
    cuda_ext.load()


@pytest.mark.parametrize("n", (32 * CUDA_SPLIT_FP32_CHUNK_N + 2 * CUDA_SPLIT_FP32_CHUNK_N,
                               32 * CUDA_SPLIT_FP32_CHUNK_N + CUDA_SPLIT_FP32_CHUNK_N + 257))  # fmt: skip
def test_cuda_split_backward_partials_of_any_value(n):
    """A chunk's share of c may be any float: -1.0, 0.0, -0.0 and a negative one whose bits set the
    sign and high exponent bits, each in a chunk of its own, pass through the flag unchanged (a share
    mistaken for "not yet" would hang the kernel), in whole chunks and with a partly masked last one."""
    _cuda_or_skip()
    chunk = CUDA_SPLIT_FP32_CHUNK_N
    x = torch.ones(2, n, dtype=torch.float32, device=DEVICE)
    dy = torch.full_like(x, 0.25)
    dy[:, :chunk] = -1.0 / chunk  # share -1.0 (x * rstd = 1, weight 1)
    dy[:, chunk : 2 * chunk] = 0.0  # share 0.0
    dy[:, 2 * chunk : 3 * chunk] = -0.0  # share -0.0
    dy[:, 3 * chunk : 4 * chunk] = -3.0 / chunk  # share -3.0
    rstd = torch.ones(2, dtype=torch.float32, device=DEVICE)
    w = torch.ones(n, dtype=torch.float32, device=DEVICE)
    dx, dw = torch.ops.rmsnorm_cuda.rms_norm_bwd(dy, x, None, w, 0.0, rstd, True, False)
    # The same formula in float64: dx = dy - x * mean(x * dy) with x = 1 and rstd = 1.
    dy64 = dy.double()
    expected = dy64 - dy64.mean(dim=1, keepdim=True)
    tolerance = 8 * torch.finfo(torch.float32).eps * (dy64.abs() + expected.abs().max())
    assert ((dx.double() - expected).abs() <= tolerance).all()
    assert torch.equal(dw, dy.sum(dim=0))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", CUDA_SPLIT_WIDTHS)
def test_cuda_split_backward_rows_alone_and_in_a_batch(n, dtype, op):
    """The one-pass backward matches the reference, a NaN row and an Inf row among the others and
    kept in their rows; a row's dx (and dresidual) has the same bits alone and wherever it sits among
    CUDA_SPLIT_ROWS rows (each block group then walks several rows), and dweight is the same every run."""
    _cuda_or_skip()
    inputs = op_inputs(op, (CUDA_SPLIT_ROWS, n), dtype)
    inputs[-1][1, 7] = float("nan")
    inputs[-1][2, n - 1] = float("inf")
    weight = random_weight(n, dtype)
    grads = (randn(CUDA_SPLIT_ROWS, n, dtype=dtype), randn(CUDA_SPLIT_ROWS, n, dtype=dtype))
    residual = inputs[1] if op == "add_rms_norm" else None
    check_rms_norm("cuda", inputs[0], (n,), weight, 1e-6, residual=residual, dy=grads[0],
                   dresidual_out=grads[1] if residual is not None else None)  # fmt: skip
    in_batch = forward_backward(op, "cuda", inputs, weight, grads)
    again = forward_backward(op, "cuda", inputs, weight, grads)
    for name, a, b in zip(result_names(op), in_batch, again):
        assert torch.equal(as_bits(a), as_bits(b)), f"{name} differs from run to run"
    for index in (0, 2, CUDA_SPLIT_ROWS - 1):
        row = tuple(t[index : index + 1].clone() for t in inputs)
        row_grads = tuple(g[index : index + 1].clone() for g in grads)
        alone = forward_backward(op, "cuda", row, weight, row_grads)
        for name, a, b in zip(result_names(op)[:-1], alone, in_batch):
            # As integers: the NaN and Inf rows' NaNs compare too.
            assert torch.equal(as_bits(a[0]), as_bits(b[index])), (
                f"{name} of row {index} alone differs from the row among {CUDA_SPLIT_ROWS}"
            )
