"""Tensors past 2^31 and 2^32 elements: the offsets every kernel forms must not wrap.

A kernel reaches element (row, col) at row * row_stride + col; in 32 bits that wraps past 2^31
(signed) or 2^32 (unsigned) elements. Each case here puts 2^29 elements' worth of rows past one of
those boundaries (bf16 tensors of 5 and 9 GiB), at a width every kernel holds in one tile (4096)
and one that takes the split-row (Triton) and looped (CUDA) paths (65536), runs forward and
backward, and checks every row of y, dx (and residual_out) and dweight against float64.

The check walks the rows in chunks of CHUNK_ELEMENTS: a float64 copy of a whole tensor would not
fit, and torch's own kernels are not trusted on more than that at once (F.rms_norm is wrong past
2^32 elements on an H100), so inputs are drawn, outputs poisoned and references computed chunk by
chunk. The tolerances are check_rms_norm's (tests/numerics.py), applied to each chunk.
"""

from __future__ import annotations

import gc
import traceback

import pytest
import torch

import rmsnorm
from rmsnorm.reference import rms_norm_reference
from tests.conftest import ON_GPU
from tests.inputs import random_weight
from tests.numerics import (
    FP32_UNIT,
    assert_close,
    reduction_units,
    rounding_ulps,
    ulp,
)

pytestmark = pytest.mark.skipif(
    not ON_GPU,
    reason="tensors of 2^31 elements and more need a CUDA GPU with ~40-70 GiB free",
)

BACKENDS = ("triton", "cuda")
DTYPE = torch.bfloat16
EPS = 1e-6
# M·N of each case: 2^29 elements past the boundary, so that a ninth to a fifth of the rows lie
# beyond it; a wrapped offset then moves dweight far past its tolerance, not only some rows.
ELEMENTS = {"2^31": 2**31 + 2**29, "2^32": 2**32 + 2**29}
# 4096: one register tile in every kernel, forward and backward. 65536: wider than any tile,
# so Triton's split-row kernels and CUDA's looped and column kernels run.
WIDTHS = (4096, 65536)
# Elements per chunk of rows of the float64 check: 128 MiB a float64 chunk tensor.
CHUNK_ELEMENTS = 2**24
# M x N tensors alive at the peak: x, y, dy, dx; add_rms_norm adds residual, residual_out and
# the gradient arriving on residual_out (the residual's gradient is dx itself).
BIG_TENSORS = {"rms_norm": 4, "add_rms_norm": 7}
# The check's peak beside them: ~24 float64 chunk tensors (the reference, its autograd graph,
# the tolerances), and a margin for the kernels' workspaces and the allocator.
CHECK_BYTES = 24 * CHUNK_ELEMENTS * 8 + 2 * 2**30

CASES = [
    pytest.param(op, backend, n, past, id=f"{op}-{backend}-{n}-past{past}")
    for op in ("rms_norm", "add_rms_norm")
    for past in ELEMENTS
    for n in WIDTHS
    for backend in BACKENDS
]


@pytest.mark.parametrize("op, backend, n, past", CASES)
def test_big_tensor(op, backend, n, past):
    """Forward and backward of `op` on M·N = ELEMENTS[past] bf16 elements, every row checked."""
    rows = ELEMENTS[past] // n
    gc.collect()
    torch.cuda.empty_cache()
    element_bytes = torch.finfo(DTYPE).bits // 8
    need = BIG_TENSORS[op] * rows * n * element_bytes + CHECK_BYTES
    free = torch.cuda.mem_get_info()[0]
    if need > free:
        gib = 2**30
        pytest.skip(f"needs {need / gib:.0f} GiB of GPU memory, {free / gib:.0f} free")
    try:
        run_and_check(op, backend, rows, n)
    except BaseException as error:
        # A failure's traceback holds the frames, and their tensors, for pytest's report: free
        # the GiBs now, or every case after this one skips for want of memory.
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        gc.collect()
        torch.cuda.empty_cache()


def run_and_check(op: str, backend: str, rows: int, n: int) -> None:
    add = op == "add_rms_norm"
    x = randn_chunked(rows, n).requires_grad_()
    leaves = [x]
    if add:
        leaves.append(randn_chunked(rows, n).requires_grad_())
    weight = random_weight(n, DTYPE).requires_grad_()

    poison_next_allocations(2 if add else 1, rows, n)
    if add:
        y, normalized = rmsnorm.add_rms_norm(x, leaves[1], weight, EPS, backend=backend)
    else:
        y, normalized = rmsnorm.rms_norm(x, (n,), weight, EPS, backend=backend), x
    outputs, output_grads = [y], [randn_chunked(rows, n)]
    if add:
        outputs.append(normalized)
        output_grads.append(randn_chunked(rows, n))

    poison_next_allocations(1, rows, n)
    grads = torch.autograd.grad(outputs, [*leaves, weight], output_grads)
    check_chunks(backend, leaves, normalized, weight, y, output_grads, grads)


def randn_chunked(rows: int, n: int) -> torch.Tensor:
    """A [rows, n] bf16 tensor of standard normal values, drawn chunk by chunk.

    Each chunk is drawn by its own call, so the rows past 2^32 elements differ from those before
    it whatever torch's generator does with offsets that large: a kernel that reads a wrapped
    row gets other values and fails the check.
    """
    t = torch.empty(rows, n, dtype=DTYPE, device="cuda")
    for chunk in row_chunks(rows, n):
        t[chunk].normal_()
    return t


def poison_next_allocations(count: int, rows: int, n: int) -> None:
    """Make the next `count` [rows, n] allocations come back full of NaN, so that an element a
    kernel leaves unwritten fails the check (tests.numerics.poison_next_allocation, chunked).

    The cache is emptied first: the poisoned blocks are then the only free blocks that size, and
    the caching allocator hands them to the next requests of that size.
    """
    torch.cuda.empty_cache()
    blocks = [torch.empty(rows, n, dtype=DTYPE, device="cuda") for _ in range(count)]
    for block in blocks:
        for chunk in row_chunks(rows, n):
            block[chunk].fill_(float("nan"))


def row_chunks(rows: int, n: int) -> list[slice]:
    """Consecutive row ranges of about CHUNK_ELEMENTS elements covering [0, rows)."""
    step = max(1, CHUNK_ELEMENTS // n)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def check_chunks(backend, leaves, normalized, weight, y, output_grads, grads) -> None:
    """Every row of y, residual_out, dx and dresidual, then dweight, against float64.

    The float64 model is check_rms_norm's: y64 = RMSNorm(normalized) with normalized = x
    (rms_norm) or residual_out as stored (add_rms_norm), gradients through rms_norm_reference.
    dweight, a sum over all rows, is summed here chunk by chunk in float64.
    """
    rows, n = normalized.shape
    add = len(leaves) == 2
    rounding = rounding_ulps(DTYPE, backend, normalized.device)
    row_error = reduction_units(n) * FP32_UNIT
    w64 = weight.detach().to(torch.float64).requires_grad_()
    dweight64 = torch.zeros(n, dtype=torch.float64, device="cuda")
    dweight_magnitude = torch.zeros_like(dweight64)
    for chunk in row_chunks(rows, n):
        where = f"{backend} {{}}, chunk of rows {chunk.start}..{chunk.stop - 1}"
        if add:
            exact_sum = sum(leaf.detach()[chunk].to(torch.float64) for leaf in leaves)
            sum_tolerance = rounding * ulp(exact_sum, DTYPE)
            what = where.format("residual_out")
            assert_close(normalized[chunk], exact_sum, sum_tolerance, DTYPE, what)
        x64 = normalized.detach()[chunk].to(torch.float64).requires_grad_()
        y64 = rms_norm_reference(x64, (n,), w64, EPS, torch.float64)
        expected = y64.detach()
        y_tolerance = rounding * ulp(expected, DTYPE) + row_error * expected.abs()
        assert_close(y[chunk], expected, y_tolerance, DTYPE, where.format("y"))

        dy64 = output_grads[0][chunk].to(torch.float64)
        dx64, dweight64_chunk = torch.autograd.grad(y64, (x64, w64), dy64)
        # check_rms_norm's dx tolerance: each term of rstd * (g - xhat * mean(xhat * g)),
        # g = dy * w, errs by at most the reduction bound times its magnitude.
        x64 = x64.detach()
        rstd = torch.rsqrt(x64.square().mean(dim=1, keepdim=True) + EPS)
        x_hat = x64 * rstd
        g = dy64 * w64.detach()
        mean_xg = (x_hat * g).abs().mean(dim=1, keepdim=True)
        dx_scale = rstd * (g.abs() + x_hat.abs() * mean_xg)
        if add:
            dresidual_out64 = output_grads[1][chunk].to(torch.float64)
            dx64 = dx64 + dresidual_out64
            dx_scale = dx_scale + dresidual_out64.abs()
        dx_tolerance = rounding * ulp(dx64, DTYPE) + row_error * dx_scale
        assert_close(grads[0][chunk], dx64, dx_tolerance, DTYPE, where.format("dx"))
        if add:  # the residual's gradient is x's, bit for bit (one sum, one rounding)
            same = torch.equal(grads[1][chunk], grads[0][chunk])
            assert same, where.format("dresidual differs from dx")
        dweight64 += dweight64_chunk
        dweight_magnitude += (dy64 * x_hat).abs().sum(dim=0)

    # check_rms_norm's dweight tolerance: a sum over the rows of terms that carry xhat's error.
    units = reduction_units(rows) + reduction_units(n) / 2
    w_rounding = rounding_ulps(weight.dtype, backend, normalized.device)
    dw_tolerance = w_rounding * ulp(dweight64, weight.dtype)
    dw_tolerance += units * FP32_UNIT * dweight_magnitude
    dweight = grads[-1]
    assert dweight.dtype == weight.dtype and dweight.shape == weight.shape
    assert_close(dweight, dweight64, dw_tolerance, weight.dtype, f"{backend} dweight")


# Rows past the CUDA grid's 65535 in y, as wide as the forward cuts across a thread block cluster
# (sm_90: rows over 128 KB): each cluster then walks several rows, and its two alternating mbarriers
# go round more than once. 65540: unaligned rows (walked from L2); 65544: aligned (staged).
CLUSTER_ROWS = 65535 + 4
CLUSTER_WIDTHS = (65540, 65544)
CLUSTER_SAMPLE_ROWS = (0, 3, 65534, 65535, 65538)


@pytest.mark.parametrize("n", CLUSTER_WIDTHS)
@pytest.mark.parametrize("op", ("rms_norm", "rms_norm_quant dynamic"))
def test_rows_past_the_grid_are_the_rows_alone(op, n):
    """The cuda forward's rows of a batch of CLUSTER_ROWS rows, first and second rows of a block
    alike, have the bits of each row normalized alone (rms_norm's y; rms_norm_quant's y_q and scale)."""
    gc.collect()
    torch.cuda.empty_cache()
    need = 3 * CLUSTER_ROWS * n * 2 + 2**30  # x, y or y_q, a margin
    free = torch.cuda.mem_get_info()[0]
    if need > free:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of GPU memory, {free / 2**30:.0f} free")
    try:
        x = randn_chunked(CLUSTER_ROWS, n)
        weight = random_weight(n, DTYPE)

        def normalize(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
            if op == "rms_norm":
                return (rmsnorm.rms_norm(rows, (n,), weight, EPS, backend="cuda"),)
            y_q, scale = rmsnorm.rms_norm_quant(rows, weight, EPS, backend="cuda")
            return y_q.view(torch.uint8), scale

        batch = normalize(x)
        for index in CLUSTER_SAMPLE_ROWS:
            alone = normalize(x[index : index + 1].clone())
            for name, a, b in zip(("y", "scale"), alone, batch):
                assert torch.equal(a[0], b[index]), f"{name} of row {index} differs from the row alone"
    finally:
        gc.collect()
        torch.cuda.empty_cache()
