"""Triton RMSNorm kernels, their launch configuration, and the functions that launch them.

Inputs are [*lead, N] views with a contiguous last dim and one to four leading dims of any
strides (a 2-D [M, N] view with any row stride, or a per-head view such as
qkv[..., :H * D].view(B * S, H, D)), read in place; outputs are contiguous. Each kernel's launch
configuration is a function of N and the operands' dtypes (the forward's also of whether there is a
residual or an fp8 store: _fwd_tile), never of the row count, so a row's bits never depend on how
many rows surround it (batch invariance) and every call on the same input gives the same bits.

Rows up to FWD_MAX_TILE_N (forward; rms_norm's 16-bit rows up to FWD_HELD_MAX_TILE_N) /
BWD_MAX_TILE_N (backward) elements are handled in one tile held in registers: x is read once. Wider
rows are split into chunks. Forward: one kernel sums each chunk's squares and, some thousands of
chunks later, normalizes it from L2 once its row's sums are in (rms_norm_fwd_split_kernel): x still
crosses DRAM once. Backward: a grid of [row groups, column chunks] programs, all resident at once,
each summing its chunk's share of a row's dot product of xhat and dy*w and, a row later, applying
the row's sum to the same chunk from L2 (rms_norm_bwd_split_kernel); where the GPU cannot hold a
program a chunk, a first kernel walks each row for the dot product, then a 2-D grid of column blocks
applies it, reading x and dy once more.

Launches go through triton_launch.KernelLauncher (Triton's own launch the first time an argument
specialization is seen, the compiled kernel directly after: host time). Every launch passes
enable_fp_fusion=False: Triton then emits mul.rn / add.rn, which ptxas may
not contract into FMAs; with fusion on it emits plain mul / add, which ptxas may contract where
its scheduling allows. Off, each product and sum is rounded as written, as in the CUDA kernels
(__fmul_rn, __fmaf_rn). What stays Triton's choice is the register layout of each kernel variant,
from its types and its arguments' alignment, and with it the order of a row's sum of squares:
the quantizing and the plain forward can compute rstd one fp32 ulp apart (H100 and H200), which
tests/test_quant.py allows for.

Row counts are not specialised on (do_not_specialize): nothing in the kernels gains from knowing
M, and every distinct M % 16 would otherwise compile its own copy.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from . import reference
from .triton_launch import KernelLauncher, LaunchPlan, sm_count

logger = logging.getLogger("rmsnorm")

# Quantization of the forward's output (rms_norm_quant): none, one given scale, or one per row.
NO_QUANT = tl.constexpr(0)
QUANT_STATIC = tl.constexpr(1)
QUANT_DYNAMIC = tl.constexpr(2)
# The largest finite float8_e4m3fn, and vLLM's floor on a dynamic scale: the reference's numbers.
FP8_E4M3_MAX = tl.constexpr(reference.FP8_E4M3_MAX)
MIN_DYNAMIC_SCALE = tl.constexpr(reference.MIN_DYNAMIC_SCALE)
# rms_norm_fwd_split_kernel's partial sums of squares before their chunk stores them: no sum of
# squares is negative (NaN and inf are sums too, and differ from it).
PENDING = tl.constexpr(-1.0)


@triton.jit
def _row_starts(rows, size1, size2, size3, stride0, stride1, stride2, stride3):
    """Offsets of rows' first elements in a view [size0, size1, size2, size3, N] with any strides.

    Rows are counted row-major over the four leading dims. A 2-D [M, N] view passes sizes 1, which
    Triton specialises to the constant 1: the divisions fold away and rows * stride0 remains.
    """
    i3 = rows % size3
    rows = rows // size3
    i2 = rows % size2
    rows = rows // size2
    return (rows // size1) * stride0 + (rows % size1) * stride1 + i2 * stride2 + i3 * stride3


@triton.jit
def _nan_max(a, b):
    # NaN-propagating, as torch.amax: a row holding a NaN gets a NaN scale, not its finite maximum.
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _dynamic_scale(amax, scale_ub_ptr, HAS_SCALE_UB: tl.constexpr):
    """A row's fp8 scale from the maximum of |y|: clamped to scale_ub, divided by the fp8 maximum, floored."""
    if HAS_SCALE_UB:
        scale_ub = tl.load(scale_ub_ptr)
        amax = tl.where(amax > scale_ub, scale_ub, amax)  # NaN stays NaN, as torch.clamp
    scale = tl.div_rn(amax, FP8_E4M3_MAX)
    return tl.where(scale < MIN_DYNAMIC_SCALE, MIN_DYNAMIC_SCALE, scale)


@triton.jit
def _quantize(y, scale, out_dtype: tl.constexpr):
    """saturate(y * (1 / scale)) in out_dtype, clamped first so that the rounding to fp8 never overflows.

    The reciprocal once per row (IEEE division), then a product per element, as vLLM does: an IEEE
    division per element made the quantizing forward compute-bound (bench/NOTES.md v0.6).
    """
    q = y * tl.div_rn(1.0, scale)
    q = tl.clamp(q, -FP8_E4M3_MAX, FP8_E4M3_MAX, propagate_nan=tl.PropagateNan.ALL)
    return q.to(out_dtype, fp_downcast_rounding="rtne")


@triton.jit
def _residual_sum(x, residual, out_dtype: tl.constexpr):
    """x + residual in fp32, rounded to residual_out's dtype: what add_rms_norm stores and normalizes."""
    return (x.to(tl.float32) + residual.to(tl.float32)).to(out_dtype)


@triton.jit
def _row_input(
    x_ptr, x_offsets, res_ptr, res_offsets, res_out_ptr, res_out_offsets, mask,
    HAS_RESIDUAL: tl.constexpr, STORE_RESIDUAL: tl.constexpr, CACHE_MODIFIER: tl.constexpr,
):  # fmt: skip
    """The values a row is normalized from, as stored (callers widen them to fp32): x, or x + residual
    rounded to the residual's dtype.

    add_rms_norm normalizes residual_out as stored, rounded, so that y == rms_norm(residual_out).
    """
    x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0, cache_modifier=CACHE_MODIFIER)
    if HAS_RESIDUAL:
        residual = tl.load(res_ptr + res_offsets, mask=mask, other=0.0, cache_modifier=CACHE_MODIFIER)
        x = _residual_sum(x, residual, res_out_ptr.dtype.element_ty)
        if STORE_RESIDUAL:
            tl.store(res_out_ptr + res_out_offsets, x, mask=mask)
    return x


@triton.jit
def _widened_again(v):
    """16-bit v in fp32 by a conversion the compiler does not merge with an earlier v.to(tl.float32):
    v's registers, not its fp32 copy's (twice as many), are then what live across the row's reduction.
    The same values as v.to(tl.float32); fp16's conversion is inline PTX, which Triton's interpreter
    cannot run."""
    if v.dtype == tl.bfloat16:
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        tl.static_assert(v.dtype == tl.float16, "only 16-bit rows are held as loaded")
        return tl.inline_asm_elementwise("cvt.f32.f16 $0, $1;", "=r,h", [v], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _rstd(sum_squares, N, eps):
    # IEEE division and square root (not rsqrt.approx): the CUDA backend and the reference round the
    # same way, so backends agree to the last bit more often. N * 1.0: N in fp32, whether it arrived
    # as an int or was specialised to the constant 1.
    return tl.div_rn(1.0, tl.sqrt_rn(tl.div_rn(sum_squares, N * 1.0) + eps))


@triton.jit
def _normalized(x, rstd, w, weight_offset, x_dtype: tl.constexpr, HAS_WEIGHT: tl.constexpr, ROUND_XHAT: tl.constexpr):
    """y in fp32: x * rstd (rounded to x's dtype in casting_mode "llama") times w + weight_offset (w as loaded)."""
    y = x * rstd
    if ROUND_XHAT:
        y = y.to(x_dtype).to(tl.float32)
    if HAS_WEIGHT:
        y = y * (w.to(tl.float32) + weight_offset)
    return y


@triton.jit
def _store_output(y, y_ptr, offsets, mask, x_dtype: tl.constexpr, QUANT: tl.constexpr, static_scale):
    """Stores y in y's dtype (NO_QUANT), or quantized to fp8 by one given scale (QUANT_STATIC)."""
    if QUANT == NO_QUANT:
        tl.store(y_ptr + offsets, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        # Quantized from y as rms_norm returns it, rounded to x's dtype.
        y = y.to(x_dtype).to(tl.float32)
        tl.store(y_ptr + offsets, _quantize(y, static_scale, y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["M"])
def rms_norm_fwd_kernel(
    x_ptr,  # [M, N] input; row i starts at x_ptr + _row_starts(i, sizes, x strides)
    res_ptr,  # [M, N] residual, laid out by its own strides; not read unless HAS_RESIDUAL
    w_ptr,  # [N] weight; not read unless HAS_WEIGHT
    y_ptr,  # [M, N] output, contiguous: x's dtype, or fp8 when QUANT
    res_out_ptr,  # [M, N] output x + residual, contiguous, residual's dtype; not written unless HAS_RESIDUAL
    rstd_ptr,  # [M] fp32 output: reciprocal RMS, written when STORE_RSTD
    scale_ptr,  # QUANT_STATIC: [1] fp32 scale read; QUANT_DYNAMIC: [M] fp32 row scales written
    scale_ub_ptr,  # [1] fp32 upper bound of a row's max |y| (QUANT_DYNAMIC); not read unless HAS_SCALE_UB
    size1, size2, size3,  # leading dims 1..3 of the inputs, [size0, size1, size2, size3, N] (1: absent)
    x_stride0, x_stride1, x_stride2, x_stride3,  # elements between consecutive indices of each leading dim
    res_stride0, res_stride1, res_stride2, res_stride3,
    M,  # rows: the product of the leading dims
    N,
    eps,  # fp32
    weight_offset,  # fp32, added to the weight (Gemma's 1 + w)
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    STORE_RSTD: tl.constexpr,  # rstd is kept for a backward (not by inference calls)
    ROUND_XHAT: tl.constexpr,  # casting_mode "llama": x * rstd rounded to x's dtype before the weight
    QUANT: tl.constexpr,  # NO_QUANT, QUANT_STATIC or QUANT_DYNAMIC
    HAS_SCALE_UB: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # a power of two >= N: a row is one tile
    # 16-bit x held across the reduction as loaded, converted to fp32 again for y: half the registers
    # of fp32 x, which lets a tile of 65536 columns fit 32 warps' 64 registers a thread unspilled.
    HOLD_STORED_X: tl.constexpr = False,
    # x's and the residual's load hint: ".cg" (past L1) where one program's row would evict the
    # weight it loads after its reduction (_fwd_x_cache_modifier).
    X_CACHE_MODIFIER: tl.constexpr = "",
):  # fmt: skip
    # int64 row indices: row * stride overflows int32 past 2^31 elements.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    mask = row_mask[:, None] & col_mask[None, :]
    out_offsets = rows[:, None] * N + cols[None, :]
    static_scale = 1.0
    if QUANT == QUANT_STATIC:
        # Loaded before the row, off the path from the reduction to the stores: at N >= 16384 one
        # program holds an SM alone, and a load after the reduction left it idle (bench/NOTES.md v0.7).
        static_scale = tl.load(scale_ptr)
    x_starts = _row_starts(rows, size1, size2, size3, x_stride0, x_stride1, x_stride2, x_stride3)
    res_starts = _row_starts(rows, size1, size2, size3, res_stride0, res_stride1, res_stride2, res_stride3)
    x_stored = _row_input(
        x_ptr, x_starts[:, None] + cols[None, :], res_ptr, res_starts[:, None] + cols[None, :], res_out_ptr,
        out_offsets, mask, HAS_RESIDUAL, STORE_RESIDUAL=True, CACHE_MODIFIER=X_CACHE_MODIFIER,
    )  # fmt: skip
    x = x_stored.to(tl.float32)
    # Row statistics (rstd, the dynamic scales) are held by every thread of their row; Triton stores
    # them through a layout conversion in shared memory where those threads all write the same
    # value to one slot, a write-after-write racecheck reports and tests/sanitize.py explains.
    rstd = _rstd(tl.sum(x * x, axis=1), N, eps)
    if STORE_RSTD and HAS_RESIDUAL:
        # Before y, as it was: after y's stores it spills 8 bytes a thread at 32768 bf16 (16 warps, sm_90).
        tl.store(rstd_ptr + rows, rstd, mask=row_mask)
    w = 0.0
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0)[None, :]
    if HOLD_STORED_X:
        x = _widened_again(x_stored)
    y = _normalized(x, rstd[:, None], w, weight_offset, x_ptr.dtype.element_ty, HAS_WEIGHT, ROUND_XHAT)
    if QUANT == QUANT_DYNAMIC:
        # Quantized from y as rms_norm returns it, rounded to x's dtype.
        y = y.to(x_ptr.dtype.element_ty).to(tl.float32)
        scale = _dynamic_scale(tl.reduce(tl.abs(y), 1, _nan_max), scale_ub_ptr, HAS_SCALE_UB)
        tl.store(scale_ptr + rows, scale, mask=row_mask)
        tl.store(y_ptr + out_offsets, _quantize(y, scale[:, None], y_ptr.dtype.element_ty), mask=mask)
    else:
        _store_output(y, y_ptr, out_offsets, mask, x_ptr.dtype.element_ty, QUANT, static_scale)
    if STORE_RSTD and not HAS_RESIDUAL:
        # After y's stores, off the path from the reduction to them: bf16 forward+backward 88.3 ->
        # 89.7% of copy at 65536 (one 32-warp program an SM), 90.6 -> 90.9 at 16384 (v0.57).
        tl.store(rstd_ptr + rows, rstd, mask=row_mask)


@triton.jit
def _chunk_inputs(
    x_ptr, res_ptr, w_ptr, row, cols, mask, size1, size2, size3, x_stride0, x_stride1, x_stride2, x_stride3,
    res_stride0, res_stride1, res_stride2, res_stride3, HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr,
):  # fmt: skip
    """A chunk's x, residual and weight as loaded, in their own dtypes (half the registers of fp32 for
    16-bit inputs while they wait); 0.0 for those absent."""
    x = tl.load(x_ptr + _row_starts(row, size1, size2, size3, x_stride0, x_stride1, x_stride2, x_stride3) + cols,
                mask=mask, other=0.0)  # fmt: skip
    res = 0.0
    if HAS_RESIDUAL:
        res_start = _row_starts(row, size1, size2, size3, res_stride0, res_stride1, res_stride2, res_stride3)
        res = tl.load(res_ptr + res_start + cols, mask=mask, other=0.0)
    w = 0.0
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    return x, res, w


@triton.jit(do_not_specialize=["M"])
def rms_norm_fwd_split_kernel(
    x_ptr,  # [M, N] input, laid out as in rms_norm_fwd_kernel
    res_ptr,  # [M, N] residual, laid out by its own strides; not read unless HAS_RESIDUAL
    w_ptr,  # [N] weight; not read unless HAS_WEIGHT
    y_ptr,  # [M, N] output, contiguous: x's dtype, or fp8 when QUANT_STATIC
    res_out_ptr,  # [M, N] output x + residual, contiguous, residual's dtype; not written unless HAS_RESIDUAL
    rstd_ptr,  # [M] fp32 output: reciprocal RMS, written when STORE_RSTD
    scale_ptr,  # [1] fp32 scale; not read unless QUANT_STATIC
    partial_ptr,  # [M, cdiv(N, CHUNK_N)] fp32 scratch, filled with PENDING: each chunk's sum of squares
    lag,  # program p normalizes chunk p - lag; lag >= cdiv(N, CHUNK_N)
    size1, size2, size3,
    x_stride0, x_stride1, x_stride2, x_stride3,
    res_stride0, res_stride1, res_stride2, res_stride3,
    M,
    N,
    eps,  # fp32
    weight_offset,  # fp32
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    STORE_RSTD: tl.constexpr,
    ROUND_XHAT: tl.constexpr,
    QUANT: tl.constexpr,  # NO_QUANT or QUANT_STATIC (a dynamic scale needs the whole row's y)
    CHUNK_N: tl.constexpr,  # columns of a chunk: rows are cut into cdiv(N, CHUNK_N) of them
    PARTIALS_BLOCK: tl.constexpr,  # partial sums read at a time
):  # fmt: skip
    """Rows wider than one tile, cut into chunks: chunk p of the flattened [M, chunks] grid is program p's.

    Program p sums the squares of chunk p and stores that partial in place of PENDING. It also
    normalizes chunk q = p - lag: it reads q's inputs again (lag chunks after program q read them:
    from L2), waits until no partial of q's row is PENDING, and sums them in a fixed order. x
    crosses DRAM once, not twice as with a statistics kernel and a second kernel (3 passes of the
    row: 67% of copy at most).

    A program waits on lower program ids only, which started before it: blocks are dispatched in
    increasing order (CUB's decoupled look-back rests on that too), and a started program stores
    its partial before it waits for anything. In Triton's interpreter programs run one after
    another in that order, so a wait is over before it begins. The partials are the only values
    programs pass each other (add_rms_norm's x + residual is recomputed from the inputs, not read
    back from residual_out): there is nothing else to order. With lag at least the programs one
    wave holds, the partials q needs are there when p first looks. The grid has lag more programs
    than chunks, which only normalize.
    """
    pid = tl.program_id(0).to(tl.int64)
    chunks = tl.cdiv(N, CHUNK_N)
    offsets = tl.arange(0, CHUNK_N)
    q = pid - lag
    q_row = tl.maximum(q, 0) // chunks
    q_cols = (tl.maximum(q, 0) % chunks) * CHUNK_N + offsets
    q_mask = (q_cols < N) & (q >= 0)
    # Chunk q's inputs first: their latency (L2) then overlaps chunk p's (DRAM). Loaded after the
    # wait, they cost 1-12 points (H100, bench/NOTES.md v0.23).
    q_x, q_res, q_w = _chunk_inputs(
        x_ptr, res_ptr, w_ptr, q_row, q_cols, q_mask, size1, size2, size3, x_stride0, x_stride1, x_stride2,
        x_stride3, res_stride0, res_stride1, res_stride2, res_stride3, HAS_RESIDUAL, HAS_WEIGHT,
    )  # fmt: skip
    if pid < M * chunks:
        row = pid // chunks
        cols = (pid % chunks) * CHUNK_N + offsets
        mask = cols < N
        x_start = _row_starts(row, size1, size2, size3, x_stride0, x_stride1, x_stride2, x_stride3)
        res_start = _row_starts(row, size1, size2, size3, res_stride0, res_stride1, res_stride2, res_stride3)
        x = _row_input(
            x_ptr, x_start + cols, res_ptr, res_start + cols, res_out_ptr, row * N + cols, mask,
            HAS_RESIDUAL, STORE_RESIDUAL=True, CACHE_MODIFIER="",
        ).to(tl.float32)  # fmt: skip
        tl.store(partial_ptr + pid, tl.sum(x * x, axis=0))
    if q >= 0:
        # The row's last chunk is the last to start: wait for it on one word before reading them all.
        last_ptr = partial_ptr + q_row * chunks + chunks - 1
        pending = tl.load(last_ptr, volatile=True) == PENDING
        while pending:
            pending = tl.load(last_ptr, volatile=True) == PENDING
        sum_squares = tl.zeros([PARTIALS_BLOCK], dtype=tl.float32)
        for start in range(0, chunks, PARTIALS_BLOCK):
            parts_ptr = partial_ptr + q_row * chunks + start + tl.arange(0, PARTIALS_BLOCK)
            parts_mask = start + tl.arange(0, PARTIALS_BLOCK) < chunks
            # volatile: from L2, where other SMs' stores land, at every try.
            parts = tl.load(parts_ptr, mask=parts_mask, other=0.0, volatile=True)
            while tl.sum((parts == PENDING).to(tl.int32), axis=0) > 0:
                parts = tl.load(parts_ptr, mask=parts_mask, other=0.0, volatile=True)
            sum_squares += parts
        rstd = _rstd(tl.sum(sum_squares, axis=0), N, eps)
        if STORE_RSTD and q % chunks == 0:
            tl.store(rstd_ptr + q_row, rstd)
        x = q_x.to(tl.float32)
        if HAS_RESIDUAL:  # residual_out as chunk q's program stored it
            x = _residual_sum(x, q_res, res_out_ptr.dtype.element_ty).to(tl.float32)
        y = _normalized(x, rstd, q_w, weight_offset, x_ptr.dtype.element_ty, HAS_WEIGHT, ROUND_XHAT)
        static_scale = 1.0
        if QUANT == QUANT_STATIC:
            static_scale = tl.load(scale_ptr)
        _store_output(y, y_ptr, q_row * N + q_cols, q_mask, x_ptr.dtype.element_ty, QUANT, static_scale)


@triton.jit
def rms_norm_quantize_rows_kernel(
    y_ptr,  # [M, N] contiguous: rms_norm's output, in x's dtype
    y_q_ptr,  # [M, N] contiguous fp8 output
    scale_ptr,  # [M] fp32 output: each row's scale
    scale_ub_ptr,  # [1] fp32; not read unless HAS_SCALE_UB
    N,
    HAS_SCALE_UB: tl.constexpr,
    BLOCK_N: tl.constexpr,  # chunk width walked along the row
):
    # Dynamic quantization of rows wider than one tile, whose maximum is known only after a whole
    # walk: a second walk over y (mostly from L2) quantizes.
    row_start = tl.program_id(0).to(tl.int64) * N
    amax = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        y = tl.load(y_ptr + row_start + cols, mask=cols < N, other=0.0).to(tl.float32)
        amax = _nan_max(amax, tl.abs(y))
    scale = _dynamic_scale(tl.reduce(amax, 0, _nan_max), scale_ub_ptr, HAS_SCALE_UB)
    tl.store(scale_ptr + tl.program_id(0), scale)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        y = tl.load(y_ptr + row_start + cols, mask=cols < N, other=0.0).to(tl.float32)
        tl.store(y_q_ptr + row_start + cols, _quantize(y, scale, y_q_ptr.dtype.element_ty), mask=cols < N)


@triton.jit
def _dx(g, x_hat, dot, rstd, N):
    """dx = (g - xhat * mean(xhat * g)) * rstd, from dot = sum(xhat * g) over the row."""
    return (g - x_hat * tl.div_rn(dot, N * 1.0)) * rstd


@triton.jit
def _dweight_term(dy, x_hat, y_dtype: tl.constexpr, ROUND_XHAT: tl.constexpr):
    """A row's term of dweight, dy * xhat; with ROUND_XHAT, xhat rounded to y's dtype, which dy has
    (x's may be wider: an fp32 residual stream), as the forward rounded it."""
    if ROUND_XHAT:
        return dy * x_hat.to(y_dtype).to(tl.float32)
    return dy * x_hat


@triton.jit(do_not_specialize=["M"])
def rms_norm_bwd_kernel(
    dy_ptr,  # [M, N] incoming gradient, laid out by its strides (see rms_norm_fwd_kernel)
    x_ptr,  # [M, N] the normalized input (add_rms_norm: residual_out), laid out by its strides
    dres_ptr,  # [M, N] gradient arriving on residual_out, added to dx; not read unless HAS_DRESIDUAL
    w_ptr,  # [N] weight; not read unless HAS_WEIGHT
    rstd_ptr,  # [M] fp32 reciprocal RMS from the forward
    dot_ptr,  # [M] fp32 sum over the row of xhat * dy * w; read only when DOT_GIVEN
    dx_ptr,  # [M, N] output, contiguous, x's dtype
    dw_partial_ptr,  # [num_programs(0), N] fp32 per-program dweight partial sums; written when COMPUTE_DW
    size1, size2, size3,  # leading dims 1..3, as in rms_norm_fwd_kernel
    dy_stride0, dy_stride1, dy_stride2, dy_stride3,
    x_stride0, x_stride1, x_stride2, x_stride3,
    dres_stride0, dres_stride1, dres_stride2, dres_stride3,
    M,
    N,
    weight_offset,  # fp32, added to the weight
    HAS_DRESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    DOT_GIVEN: tl.constexpr,  # rows wider than one tile: rms_norm_bwd_dot_kernel already computed dot
    ROUND_XHAT: tl.constexpr,  # casting_mode "llama": dweight sums dy * xhat rounded to dy's dtype
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # columns per program: a power of two >= N unless DOT_GIVEN
    NUM_STAGES: tl.constexpr,  # tiles whose loads are in flight at once (shared-memory buffers, cp.async)
    DX_CACHE_MODIFIER: tl.constexpr,  # dx's stores (BWD_DX_CACHE_MODIFIER)
    LAUNCH_DEPENDENTS: tl.constexpr,  # let the dweight reduction's launch begin now (_programmatic_dw_reduce)
):  # fmt: skip
    if LAUNCH_DEPENDENTS:
        # Every program is resident from the start (a persistent grid), so the reduction's programs
        # take only the SM room this grid leaves, and wait (gdc_wait) for all of it to finish.
        gdc_launch_dependents()
    # Persistent over row tiles: each program keeps its dweight partial in registers across all the
    # tiles it visits, so dweight costs one [programs, N] fp32 write instead of atomics.
    pid = tl.program_id(0).to(tl.int64)  # int64 loop variable: tile * BLOCK_M may pass 2^31
    num_programs = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32) + weight_offset
    dw_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for tile in tl.range(pid, tl.cdiv(M, BLOCK_M), num_programs, num_stages=NUM_STAGES):
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        x_starts = _row_starts(rows, size1, size2, size3, x_stride0, x_stride1, x_stride2, x_stride3)
        dy_starts = _row_starts(rows, size1, size2, size3, dy_stride0, dy_stride1, dy_stride2, dy_stride3)
        x = tl.load(x_ptr + x_starts[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + dy_starts[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        x_hat = x * rstd[:, None]
        g = dy
        if HAS_WEIGHT:
            g = dy * w[None, :]
        if DOT_GIVEN:
            dot = tl.load(dot_ptr + rows, mask=row_mask, other=0.0)
        else:
            dot = tl.sum(x_hat * g, axis=1)
        dx = _dx(g, x_hat, dot[:, None], rstd[:, None], N)
        if HAS_DRESIDUAL:
            dres_starts = _row_starts(rows, size1, size2, size3, dres_stride0, dres_stride1, dres_stride2, dres_stride3)
            dx += tl.load(dres_ptr + dres_starts[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(
            dx_ptr + rows[:, None] * N + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask,
            cache_modifier=DX_CACHE_MODIFIER,
        )  # fmt: skip
        if COMPUTE_DW:
            dw_acc += _dweight_term(dy, x_hat, dy_ptr.dtype.element_ty, ROUND_XHAT)
    if COMPUTE_DW:
        tl.store(dw_partial_ptr + pid * N + cols, tl.sum(dw_acc, axis=0), mask=col_mask)


@triton.jit
def rms_norm_bwd_dot_kernel(
    dy_ptr,  # [M, N], laid out by its strides
    x_ptr,  # [M, N], laid out by its strides
    w_ptr,  # [N]; not read unless HAS_WEIGHT
    rstd_ptr,  # [M] fp32
    dot_ptr,  # [M] fp32 output: sum over the row of xhat * dy * w
    size1, size2, size3,
    dy_stride0, dy_stride1, dy_stride2, dy_stride3,
    x_stride0, x_stride1, x_stride2, x_stride3,
    N,
    weight_offset,  # fp32, added to the weight
    HAS_WEIGHT: tl.constexpr,
    BLOCK_N: tl.constexpr,  # chunk width walked along the row
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    x_start = _row_starts(row, size1, size2, size3, x_stride0, x_stride1, x_stride2, x_stride3)
    dy_start = _row_starts(row, size1, size2, size3, dy_stride0, dy_stride1, dy_stride2, dy_stride3)
    rstd = tl.load(rstd_ptr + row)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mask = cols < N
        x = tl.load(x_ptr + x_start + cols, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(dy_ptr + dy_start + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_WEIGHT:
            g = g * (tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + weight_offset)
        acc += x * rstd * g
    tl.store(dot_ptr + row, tl.sum(acc, axis=0))


@triton.jit
def _weight(w_ptr, cols, col_mask, weight_offset, HAS_WEIGHT: tl.constexpr):
    """w + weight_offset in fp32 over cols, or 1.0 without a weight."""
    w = tl.full(cols.shape, 1.0, tl.float32)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32) + weight_offset
    return w


# rms_norm_bwd_split_kernel's partials: the fp32 sum's bits in the low word and READY in the high
# one, over a scratch of zeros. A dot product may be any float, so no float can mean "not yet".
READY = tl.constexpr(1 << 32)
LOW_WORD = tl.constexpr(0xFFFFFFFF)


@triton.jit
def _ready_partial(value):
    return (value.to(tl.int32, bitcast=True).to(tl.int64) & LOW_WORD) | READY


@triton.jit
def _partial_value(packed):
    return (packed & LOW_WORD).to(tl.int32).to(tl.float32, bitcast=True)


# rms_norm_bwd_split_kernel's phases: both in one launch (the GPU), or one launch each (Triton's
# interpreter, which runs programs one after another, so that no program waits on one not yet run).
BOTH_PHASES = tl.constexpr(0)
SUMS_ONLY = tl.constexpr(1)
DX_ONLY = tl.constexpr(2)


@triton.jit(do_not_specialize=["M"])
def rms_norm_bwd_split_kernel(
    dy_ptr,  # [M, N] incoming gradient, laid out by its strides
    x_ptr,  # [M, N] the normalized input (add_rms_norm: residual_out), laid out by its strides
    dres_ptr,  # [M, N] gradient arriving on residual_out, added to dx; not read unless HAS_DRESIDUAL
    w_ptr,  # [N] weight; not read unless HAS_WEIGHT
    rstd_ptr,  # [M] fp32 reciprocal RMS from the forward
    dx_ptr,  # [M, N] output, contiguous, x's dtype
    dw_partial_ptr,  # [groups, N] fp32 per-group dweight partial sums; written when COMPUTE_DW
    partial_ptr,  # [M, chunks] int64 scratch of zeros: each chunk's sum of xhat * dy * w, READY-flagged
    size1, size2, size3,
    dy_stride0, dy_stride1, dy_stride2, dy_stride3,
    x_stride0, x_stride1, x_stride2, x_stride3,
    dres_stride0, dres_stride1, dres_stride2, dres_stride3,
    M,
    N,
    weight_offset,  # fp32, added to the weight
    HAS_DRESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    ROUND_XHAT: tl.constexpr,
    CHUNK_N: tl.constexpr,  # columns of a chunk; grid axis 1 has cdiv(N, CHUNK_N) programs
    PARTIALS_BLOCK: tl.constexpr,  # partial sums read at a time
    LAG_ROWS: tl.constexpr,  # a program's dx trails its sums by this many of its rows
    REREAD_DY_EARLY: tl.constexpr,  # dy's re-read issued with x's, before this row's loads
    DX_CACHE_MODIFIER: tl.constexpr,  # dx's stores (BWD_SPLIT_DX_CACHE_MODIFIER)
    PHASE: tl.constexpr,  # BOTH_PHASES, SUMS_ONLY or DX_ONLY
):  # fmt: skip
    """Rows wider than one backward tile, on a grid of [groups, chunks] programs all resident at once.

    Program (g, c) owns column chunk c of rows g, g + groups, ...: for each it sums chunk c's
    xhat * dy * w and stores that partial, flagged READY, over a zero; LAG_ROWS of its rows later it
    waits until every partial of that row is READY (the programs of the row's other chunks visit the same
    rows in the same order), reads the row's chunk again (from L2, issued before the loads of the row it
    sums), writes dx and adds dy * xhat to its dweight, kept in registers for all its rows, as is its
    chunk of the weight. x and dy cross DRAM once, not twice as with a dot-product kernel and a second
    one. The programs of a row wait on each other, so the launcher sizes the grid to what the GPU holds
    at once; the interpreter runs the two phases as two launches.
    """
    group = tl.program_id(0)
    chunk = tl.program_id(1)
    groups = tl.num_programs(0)
    chunks = tl.num_programs(1)
    cols = chunk * CHUNK_N + tl.arange(0, CHUNK_N)
    col_mask = cols < N
    dw_acc = tl.zeros([CHUNK_N], dtype=tl.float32)
    # The program's columns are the same in every row: their weight is loaded once (bench/NOTES.md
    # v0.27: 1-2 points, for ~40 registers).
    w = _weight(w_ptr, cols, col_mask, weight_offset, HAS_WEIGHT)
    rows_here = tl.cdiv(M - group, groups)
    for i in range(0, rows_here + LAG_ROWS):
        if PHASE != SUMS_ONLY:
            # The lagged row's re-read (from L2) is issued first, so that its latency passes under
            # this row's loads from DRAM: x's always, dy's too where registers allow (see
            # _bwd_split_plan). Masked off before the first lagged row.
            lag_row = (group + (i - LAG_ROWS) * groups).to(tl.int64)
            lag_mask = col_mask & (i >= LAG_ROWS)
            x_start = _row_starts(lag_row, size1, size2, size3, x_stride0, x_stride1, x_stride2, x_stride3)
            x_lag = tl.load(x_ptr + x_start + cols, mask=lag_mask, other=0.0)
            if REREAD_DY_EARLY:
                dy_start = _row_starts(lag_row, size1, size2, size3, dy_stride0, dy_stride1, dy_stride2, dy_stride3)
                dy_lag = tl.load(dy_ptr + dy_start + cols, mask=lag_mask, other=0.0)
        if PHASE != DX_ONLY:
            if i < rows_here:
                row = (group + i * groups).to(tl.int64)
                x_start = _row_starts(row, size1, size2, size3, x_stride0, x_stride1, x_stride2, x_stride3)
                dy_start = _row_starts(row, size1, size2, size3, dy_stride0, dy_stride1, dy_stride2, dy_stride3)
                x = tl.load(x_ptr + x_start + cols, mask=col_mask, other=0.0).to(tl.float32)
                dy = tl.load(dy_ptr + dy_start + cols, mask=col_mask, other=0.0).to(tl.float32)
                g = dy * w
                partial = tl.sum((x * tl.load(rstd_ptr + row)) * g, axis=0)
                tl.store(partial_ptr + row * chunks + chunk, _ready_partial(partial))
        if PHASE != SUMS_ONLY:
            if i >= LAG_ROWS:
                row = lag_row
                x = x_lag.to(tl.float32)
                if REREAD_DY_EARLY:
                    dy = dy_lag.to(tl.float32)
                else:
                    dy_start = _row_starts(row, size1, size2, size3, dy_stride0, dy_stride1, dy_stride2, dy_stride3)
                    dy = tl.load(dy_ptr + dy_start + cols, mask=col_mask, other=0.0).to(tl.float32)
                rstd = tl.load(rstd_ptr + row)
                dot = tl.zeros([PARTIALS_BLOCK], dtype=tl.float32)
                for start in range(0, chunks, PARTIALS_BLOCK):
                    parts_ptr = partial_ptr + row * chunks + start + tl.arange(0, PARTIALS_BLOCK)
                    parts_mask = start + tl.arange(0, PARTIALS_BLOCK) < chunks
                    # volatile: from L2, where other SMs' stores land, at every try.
                    parts = tl.load(parts_ptr, mask=parts_mask, other=READY, volatile=True)
                    while tl.min(parts, axis=0) == 0:
                        parts = tl.load(parts_ptr, mask=parts_mask, other=READY, volatile=True)
                    dot += _partial_value(parts)
                x_hat = x * rstd
                g = dy * w
                dx = _dx(g, x_hat, tl.sum(dot, axis=0), rstd, N)
                if HAS_DRESIDUAL:
                    dres_start = _row_starts(
                        row, size1, size2, size3, dres_stride0, dres_stride1, dres_stride2, dres_stride3
                    )
                    dx += tl.load(dres_ptr + dres_start + cols, mask=col_mask, other=0.0).to(tl.float32)
                tl.store(
                    dx_ptr + row * N + cols, dx.to(dx_ptr.dtype.element_ty), mask=col_mask,
                    cache_modifier=DX_CACHE_MODIFIER,
                )  # fmt: skip
                if COMPUTE_DW:
                    dw_acc += _dweight_term(dy, x_hat, dy_ptr.dtype.element_ty, ROUND_XHAT)
    if COMPUTE_DW:
        if PHASE != SUMS_ONLY:
            tl.store(dw_partial_ptr + group * N + cols, dw_acc, mask=col_mask)


@triton.jit(do_not_specialize=["P"])
def rms_norm_dw_reduce_kernel(
    dw_partial_ptr,  # [P, N] fp32 per-program partial sums
    dw_ptr,  # [N] output, weight's dtype
    P,
    N,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WAIT_FOR_PRIOR: tl.constexpr,  # launched as a programmatic dependent of the backward kernel
):
    if WAIT_FOR_PRIOR:
        gdc_wait()  # the backward's grid finished and its partials visible, before any load
    # A fixed summation order over the partials: dweight is bitwise identical run to run.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    acc = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        parts = start + tl.arange(0, BLOCK_P)
        mask = (parts < P)[:, None] & col_mask[None, :]
        acc += tl.load(dw_partial_ptr + parts[:, None].to(tl.int64) * N + cols[None, :], mask=mask, other=0.0)
    tl.store(dw_ptr + cols, tl.sum(acc, axis=0).to(dw_ptr.dtype.element_ty), mask=col_mask)


# Each kernel's launcher (see triton_launch: the host time of a small call).
_launch_fwd = KernelLauncher(rms_norm_fwd_kernel)
_launch_fwd_split = KernelLauncher(rms_norm_fwd_split_kernel)
_launch_quantize_rows = KernelLauncher(rms_norm_quantize_rows_kernel)
_launch_bwd = KernelLauncher(rms_norm_bwd_kernel)
_launch_bwd_dot = KernelLauncher(rms_norm_bwd_dot_kernel)
_launch_bwd_split = KernelLauncher(rms_norm_bwd_split_kernel, cooperative=True)
_launch_dw_reduce = KernelLauncher(rms_norm_dw_reduce_kernel, programmatic="WAIT_FOR_PRIOR")


@dataclass(frozen=True)
class TileConfig:
    """How one kernel covers an [M, N] problem: tiles of block_m rows by block_n columns."""

    block_m: int
    block_n: int
    num_warps: int
    # The row is wider than one tile. Forward: rms_norm_fwd_split_kernel, block_n columns a chunk;
    # backward: a statistics pass, then a 2-D grid of column blocks.
    split_rows: bool


# Widest row kept whole in registers. Above it the fp32 copy of the tile needs more than ~32
# registers per thread at 32 warps (the forward keeps x; the backward keeps x, dy and the dweight
# accumulator), and ptxas starts spilling. First guesses, to be tuned by the benchmark.
FWD_MAX_TILE_N = 32768
# Wider rows take rms_norm_bwd_split_kernel, one pass over DRAM in column chunks: H100, bf16,
# backward alone, 80% of copy at 12288 and 16384 against 68 and 73% for one 16-warp tile a row
# (bench/NOTES.md v0.26).
BWD_MAX_TILE_N = 8192
# Elements one program covers when rows are short: enough independent loads in flight per SM.
SHORT_ROW_TILE_ELEMENTS = 4096
# The same for the persistent backward (rms_norm_bwd_kernel). H100, bf16, backward alone: 8192 (half
# the block reductions a byte, 16 warps) read 1.4-2.8 points lower at 512-4096 and level at 5120-8192
# (bench/tune_triton.py --constants, bench/NOTES.md v0.52).
BWD_TILE_ELEMENTS = SHORT_ROW_TILE_ELEMENTS
# fp32 elements per thread a tile aims for: 16 bytes of bf16 and fp16, or four 16-byte fp32 loads.
ELEMENTS_PER_THREAD = 16
# Tiles of a whole row this wide or wider give each thread WIDE_ROW_ELEMENTS_PER_THREAD: 8 warps at
# 16384, 16 at 32768. At 16 a thread (32 warps) one program held an SM alone, idle from its
# reduction to its stores, and rms_norm_quant reached 65% of copy at 16384, the plain forward
# 86-97%; at 64 a thread, 94% and 97% (bench/tune_triton.py, bench/NOTES.md v0.7).
WIDE_ROW_TILE_N = 16384
WIDE_ROW_ELEMENTS_PER_THREAD = 64
# rms_norm's forward (no residual, no fp8 store) of 16-bit rows up to this wide is one tile of
# FWD_HELD_ELEMENTS_PER_THREAD a thread (32 warps at 65536), x held as loaded (HOLD_STORED_X), not
# cut into rms_norm_fwd_split_kernel's chunks. H100, M·N = 2^27, % of copy, three interleaved rounds
# within 0.3: at 65536 bf16 91.9 -> 93.4, fp16 92.0 -> 93.7; 16 warps of 128 a thread, 83.2 / 81.7.
# x held on the narrower tiles (8 warps at 16384, 16 at 32768: 72 registers a thread against 112 /
# 128) read 1.2-1.4 points lower there (bench/NOTES.md v0.57). Wider tiles spill, as do fp32 rows and
# those with a residual (x's and the residual's loads in flight at once).
FWD_HELD_MAX_TILE_N = 65536
FWD_HELD_ELEMENTS_PER_THREAD = 64
# x's loads past L1 (".cg") on tiles this wide, so that the weight a program loads after its
# reduction is still in L1. H100, bf16 forward (bench/NOTES.md v0.58): 65536's held tile 92.9 ->
# 93.5% of copy; 16384 and 32768 level (-0.2 to +0.4), where two programs an SM or a shorter row
# hide the weight's trip.
FWD_X_CACHE_MODIFIER = ".cg"
FWD_X_CACHE_MODIFIER_MIN_TILE_N = 65536
# add_rms_norm's tiles of FWD_MAX_TILE_N columns with fp32 x and residual give each thread this many.
# At 64 (16 warps, whose registers are capped at 128 a thread) x's and the residual's fp32 values
# do not fit: ptxas spills 120 bytes a thread (sm_90), and the H100 benchmark reads 83% of copy
# there against 98% at 16384 and torch.compile's 96%. At 32 (32 warps) it takes 63 registers and
# spills nothing (64 and 8 bytes of stack with rstd stored; one program an SM either way): 84.4 ->
# 98.5% of copy at 32768 without rstd (bench/NOTES.md v0.53).
FP32_RESIDUAL_MAX_TILE_ELEMENTS_PER_THREAD = 32
# Forward tiles wider than their row (N not a power of two, the tile padded with masked columns)
# give each thread this many. H100, forward, % of copy, 16 -> 32 a thread (bench/NOTES.md v0.28):
# fp16 92.3 -> 97.7 at 5120, 95.5 -> 97.4 at 2560, 95.4 -> 97.6 at 6144; bf16 and fp16 92-94 ->
# 97.5 at 640 and 1280; 0.3-0.7 lower at 1536, 3072 and 7168 (97.7 -> 96.9-97.4).
PADDED_ROW_ELEMENTS_PER_THREAD = 32
# The quantizing forward gives each thread this many at every width: fewer warps a row, so its two
# block reductions (sum of squares, then the dynamic amax) cost less. H100, N = 1024-8192: dynamic
# 84-92% -> 96-98% of copy, static 92-98% -> 98% (at 16 a thread); the plain forward is half a
# point to a point better at 16, and keeps it below WIDE_ROW_TILE_N (v0.7).
QUANT_ELEMENTS_PER_THREAD = 64
# Chunk width of the split-row backward kernels.
SPLIT_BLOCK_N = 4096
# The split-row forward (rms_norm_fwd_split_kernel): columns a chunk, fp32 elements a thread, and
# the lag between summing a chunk and normalizing it, as bytes moved meanwhile. H100, bf16, M·N =
# 2^27, 65536-2^20 (bench/tune_triton.py --split, bench/NOTES.md v0.23): 4096 x 32 (4 warps) beat
# 4096 x 16 by 1-9 points and 8192 x 32 by 1-10 (add_rms_norm); a lag of 12 MiB beat 4 MiB by 5-11
# points (the partials a chunk needs not yet there) and 16-34 MiB by 5-25 (its inputs out of L2).
FWD_SPLIT_CHUNK_N = 4096
FWD_SPLIT_ELEMENTS_PER_THREAD = 32
# fp32 x's chunk: the same 8 KB of x on the same 4 warps as 16-bit x's. H100, fp32 forward
# (bench/NOTES.md v0.59): 89.3-89.4% of copy at 65536-262144 on 4096 x 32 (4 warps of 32 registers
# of x) -> 96.0 / 95.6 / 94.3 on 2048 x 16; 2048 x 32 (2 warps) 95.8 / 95.5 / 94.0; 1024 x 32
# 94.5 / 91.3 / 87.2. bf16 on 2048-column chunks: 0.2-1.4 points lower (2048 x 16: 2.8-3.9).
FWD_SPLIT_FP32_CHUNK_N = 2048
FWD_SPLIT_FP32_ELEMENTS_PER_THREAD = 16
FWD_SPLIT_LAG_BYTES = 12 << 20
FWD_SPLIT_PARTIALS_BLOCK = 256
MAX_NUM_WARPS = 32
# The persistent backward's programs an SM and pipeline stages (row tiles whose loads are in flight
# at once: the next tiles' x and dy copied to shared memory by cp.async while one is reduced), by
# tile width: (widest block_n, programs an SM, stages), the last up to BWD_MAX_TILE_N. H100, bf16,
# backward alone (bench/tune_triton.py --bwd, bench/NOTES.md v0.24): one program of 4 stages at
# 512-4096, 90-91% against 88-89% for two unpipelined programs (2 or 6 stages: 85-88); 3 stages
# at 5120 and 8192, 92 / 90% against 73 / 86%. Again at 92.8-93.6% (v0.52): two programs of 3 stages
# 0.8-2.2 points lower at 512-4096, 6 stages 2.4-5.
BWD_PIPELINE = ((4096, 1, 4), (8192, 1, 3))
# dx's stores in rms_norm_bwd_kernel: ".cs" (evict first), as BWD_SPLIT_DX_CACHE_MODIFIER. H100,
# bf16, backward alone, % of copy (bench/tune_triton.py --bwd, bench/NOTES.md v0.33), three
# interleaved rounds within 0.3: +0.4 / +0.7 / +0.5 / 0.0 / +0.6 at 1024 / 2048 / 4096 / 5120 /
# 8192 against the default store (91.7 at 2048 and 4096); ".cg" (past L1 alone) level.
BWD_DX_CACHE_MODIFIER = ".cs"
# Split rows' column blocks: two programs an SM keep the memory pipe busy while one reduces; no
# stage gains there (58% at 32768 whatever the pipeline).
BWD_SPLIT_PIPELINE = (2, 1)
# rms_norm_bwd_split_kernel (see _bwd_split_plan): columns a chunk, fp32 elements a thread, how
# many of its rows a program's dx trails its sums, and which of the lagged row's re-reads are issued
# before this row's loads. H100, backward alone, % of copy (bench/tune_triton.py --split-bwd,
# bench/NOTES.md v0.26, v0.27):
# - 16-bit rows: 1024 x 32 (1 warp) 81.5-84.0 at 12288-131072, 1-2 points over 2048 x 32 (2 warps),
#   but 76.9 at 262144 (256 chunks of 1024) against 2048's 80.6; 2048 77.4 at 2^19; 4096 65.7 at
#   2^20; 8192 53-65 everywhere. x's re-read issued early: +1.4-2.1 (bf16 85.4 / 86.4 / 82.3 at
#   16384 / 65536 / 262144); dy's too: 2-7 points lower (208 registers against 166, 9 programs an
#   SM against 12), but +6 at 2^20, whose one row group of 256 programs registers do not bound.
# - fp32 rows: both re-reads early: 2048 x 32 (2 warps) 92.4-96.0 at 12288-262144, 89.8 at 2^19,
#   90.4 at 2^20 (without: 78-84, 72 at 2^20); they move twice the bytes an instruction, so latency,
#   not issue, bounds them. 4096 x 32 (4 warps): 94.2-96.7 at 12288-262144, 92.8 at 2^19, 90.6 at
#   2^20, 0.5-3 points over 2048.
# - 16 a thread with the next row's loads issued before this row's dx, 18-72% (a row's partials
#   then wait on whole iterations); 2 rows' lag, 2-14 points lower; registers capped at 128-152
#   (more programs an SM), 0-25 points lower.
# The grid is sized to the programs the GPU holds at once, from the compiled kernel's registers and
# shared memory.
BWD_SPLIT_NARROW_CHUNK_N = 1024  # 16-bit rows up to BWD_SPLIT_NARROW_MAX_N
BWD_SPLIT_NARROW_MAX_N = 131072
BWD_SPLIT_CHUNK_N = 2048  # wider 16-bit rows: at least this, widened past BWD_SPLIT_MAX_CHUNKS chunks a row
BWD_SPLIT_FP32_CHUNK_N = 4096  # fp32 rows (x and dy): at least this, widened the same way
BWD_SPLIT_MAX_CHUNKS = 256
BWD_SPLIT_ELEMENTS_PER_THREAD = 32
BWD_SPLIT_LAG_ROWS = 1
# dx is stored streaming (st.global.cs: evicted first), which leaves the caches to the lagged row's
# re-reads of x and dy (L2's, by elimination: ".cg", past L1 alone, read level everywhere). H100,
# backward alone, % of copy (bench/tune_triton.py --split-bwd, bench/NOTES.md v0.32), medians of
# three interleaved rounds within 0.6: bf16 +0.5 / +0.5 / +0.8 / +0.5 / +0.3 / +0.4 at 12288 / 16384
# / 32768 / 65536 / 131072 / 262144 (86.8 at 32768), fp32 +0.3 to +0.8 up to 131072, level at 262144.
BWD_SPLIT_DX_CACHE_MODIFIER = ".cs"
# 16-bit rows issue dy's re-read early from chunks of this many columns (2^20: one row group).
BWD_SPLIT_EARLY_DY_MIN_CHUNK_N = 4096
# The most partials a program reads at a time: a row's, rounded up to a power of two, up to this.
# A block of 256 over the 16-128 chunks of rows up to 262144 cost 0.5-0.9 points of copy (v0.27).
BWD_SPLIT_PARTIALS_BLOCK = 256
# Shared memory Triton's reductions and layout conversions take beside the pipeline's buffers.
BWD_PIPELINE_SHARED_MARGIN = 16 << 10
# rms_norm_dw_reduce_kernel's tile (_dw_reduce_tile): a column's partials (one a backward program,
# 132 on an H100) in one load, and the columns split for about a program an SM. Each program's loads
# are then one L2 round trip, not a chain of them: with 32 partials a load and 128 columns a program
# (32 programs at N = 4096, 4 at 512) the reduction took 5-8 us of a bf16 backward's 290 at
# 512-8192 (bench/kernel_trace.py, bench/NOTES.md v0.49).
DW_REDUCE_MAX_BLOCK_P = 512
DW_REDUCE_MIN_BLOCK_P = 16
DW_REDUCE_MIN_BLOCK_N = 16  # 64 bytes of a partial row: two of L2's 32-byte sectors
DW_REDUCE_TILE_ELEMENTS = 8192  # 64 fp32 registers a thread at 4 warps
DW_REDUCE_NUM_WARPS = 4  # Triton's default, which this kernel always had
# Whether the dweight reduction is launched as a programmatic dependent of the backward kernel
# (Hopper and later; griddepcontrol), its launch begun while the backward runs instead of after it:
# 1.5 us of idle GPU between the two in a bf16 backward of 290 us (bench/kernel_trace.py). On, the bf16
# backward alone read 0.4-0.8 points higher at 512-65536 and fp32 0-0.5 (bench/NOTES.md v0.51).
PROGRAMMATIC_DW_REDUCE = True
# The split-row backward puts column blocks on grid axis 1, whose CUDA limit is 65535.
MAX_N = 65535 * SPLIT_BLOCK_N


def _cdiv(a: int, b: int) -> int:
    # Not triton.cdiv: a constexpr_function in Triton 3.6, a few microseconds of host time a call.
    return -(-a // b)


def _tile_warps(elements: int, elements_per_thread: int | None = None) -> int:
    per_thread = elements_per_thread or ELEMENTS_PER_THREAD
    return max(1, min(MAX_NUM_WARPS, elements // (32 * per_thread)))


@functools.lru_cache(maxsize=None)
def tile_config(n: int, kind: str = "forward") -> TileConfig:
    """The launch configuration for rows of n elements of one kernel kind, "forward", "quant" (the
    quantizing forward) or "backward"; a function of n alone (batch invariance)."""
    if kind == "backward" and n > BWD_MAX_TILE_N:
        return TileConfig(1, SPLIT_BLOCK_N, _tile_warps(SPLIT_BLOCK_N), split_rows=True)
    if kind != "backward" and n > FWD_MAX_TILE_N:
        return TileConfig(1, FWD_SPLIT_CHUNK_N, _tile_warps(FWD_SPLIT_CHUNK_N, FWD_SPLIT_ELEMENTS_PER_THREAD), True)
    block_n = triton.next_power_of_2(n)
    block_m = max(1, (BWD_TILE_ELEMENTS if kind == "backward" else SHORT_ROW_TILE_ELEMENTS) // block_n)
    per_thread = None
    if kind == "quant":
        per_thread = QUANT_ELEMENTS_PER_THREAD
    elif block_n >= WIDE_ROW_TILE_N:  # the forward's only: backward tiles stop at BWD_MAX_TILE_N
        per_thread = WIDE_ROW_ELEMENTS_PER_THREAD
    elif kind == "forward" and block_n > n:
        per_thread = PADDED_ROW_ELEMENTS_PER_THREAD
    return TileConfig(block_m, block_n, _tile_warps(block_m * block_n, per_thread), split_rows=False)


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter on CPU: any fixed number keeps results reproducible
    return sm_count(device.index)


@functools.lru_cache(maxsize=None)
def _shared_memory_per_block(device: torch.device) -> int:
    if device.type != "cuda":
        return 1 << 30  # the interpreter: no limit, and stages change nothing there
    return torch.cuda.get_device_properties(device).shared_memory_per_block_optin


def _bwd_pipeline(cfg: TileConfig, device: torch.device, tiled: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """The persistent backward's (programs an SM, stages), its stages capped by the shared memory a
    block may have: each stage past the first buffers a tile of every tensor in `tiled`."""
    if cfg.split_rows:
        per_sm, stages = BWD_SPLIT_PIPELINE
    else:
        per_sm, stages = next(((p, s) for widest, p, s in BWD_PIPELINE if cfg.block_n <= widest), BWD_PIPELINE[-1][1:])
    tile_bytes = cfg.block_m * cfg.block_n * sum(t.element_size() for t in tiled)
    fitting = 1 + (_shared_memory_per_block(device) - BWD_PIPELINE_SHARED_MARGIN) // tile_bytes
    return per_sm, max(1, min(stages, fitting))


def _contiguous_empty_like(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialized contiguous tensor of t's shape and device, in t's dtype or `dtype`: empty_like
    parses no shape, about half the host time of torch.empty(t.shape, ...)."""
    return torch.empty_like(t, dtype=dtype, memory_format=torch.contiguous_format)


@functools.lru_cache(maxsize=None)
def _empty_on(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor (no storage: address 0), for stand-ins that are never read or written."""
    return torch.empty(0, dtype=dtype, device=device)


def _empty_rstd(x: torch.Tensor) -> torch.Tensor:
    """rstd's tensor for rows x: fp32 of x's leading shape. An int size where x is 2-D: a shape tuple
    costs the allocation's argument parsing a microsecond."""
    return x.new_empty(x.shape[0] if x.dim() == 2 else x.shape[:-1], dtype=torch.float32)


def _check_n(n: int) -> None:
    if n > MAX_N:
        raise ValueError(f"the triton backend supports rows of at most {MAX_N} elements, got {n}")


def _on_device_of(t: torch.Tensor):
    """Triton launches on the current CUDA device: make that t's (a tensor on cuda:1 while cuda:0 is current)."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def row_layout(t: torch.Tensor) -> tuple[tuple[int, int, int], tuple[int, int, int, int]]:
    """The kernels' view of t, [*lead, N] with 1 to 4 leading dims: sizes of lead dims 1..3, strides of 0..3.

    Padded on the right with dims of size 1 and stride 0, which change no row's offset.
    """
    if t.dim() == 2:
        return (1, 1, 1), (t.stride(0), 0, 0, 0)
    pad = 5 - t.dim()
    return (*t.shape[1:-1], *(1,) * pad), (*t.stride()[:-1], *(0,) * pad)


def _check_rows(t: torch.Tensor) -> None:
    if not 2 <= t.dim() <= 5:
        raise ValueError(f"the triton kernels take [*lead, N] views with 1 to 4 leading dims, got {t.dim() - 1}")


def _fwd_tile(
    n: int, x: torch.Tensor, residual: torch.Tensor | None, quantized: bool
) -> tuple[TileConfig, int, bool]:
    """rms_norm_fwd_kernel's tile (or the split kernel's chunk), warps and HOLD_STORED_X for rows of n
    elements of x, with or without a residual, quantized or not: a function of n and the dtypes."""
    if FWD_MAX_TILE_N < n <= FWD_HELD_MAX_TILE_N and x.element_size() == 2 and residual is None and not quantized:
        block_n = triton.next_power_of_2(n)
        cfg = TileConfig(1, block_n, _tile_warps(block_n, FWD_HELD_ELEMENTS_PER_THREAD), split_rows=False)
        # Triton's interpreter has no inline PTX (fp16's conversion), and registers are no concern
        # there; it runs bf16's, so that CPU tests cover it.
        return cfg, cfg.num_warps, x.is_cuda or x.dtype == torch.bfloat16
    cfg = tile_config(n, "quant" if quantized else "forward")
    if cfg.split_rows and x.element_size() == 4:
        chunk_n = FWD_SPLIT_FP32_CHUNK_N
        cfg = TileConfig(1, chunk_n, _tile_warps(chunk_n, FWD_SPLIT_FP32_ELEMENTS_PER_THREAD), split_rows=True)
    return cfg, _fwd_num_warps(cfg, x, residual, quantized), False


def _fwd_x_cache_modifier(block_n: int) -> str:
    """rms_norm_fwd_kernel's X_CACHE_MODIFIER for tiles of block_n columns."""
    return FWD_X_CACHE_MODIFIER if block_n >= FWD_X_CACHE_MODIFIER_MIN_TILE_N else ""


def _fwd_num_warps(cfg: TileConfig, x: torch.Tensor, residual: torch.Tensor | None, quantized: bool) -> int:
    """rms_norm_fwd_kernel's warps: cfg's, but FP32_RESIDUAL_MAX_TILE_ELEMENTS_PER_THREAD's where fp32
    x and residual fill a tile of FWD_MAX_TILE_N columns, unquantized (the fp8 store's kernel spills
    at 16 warps and more at 32: 72 and 96 bytes a thread, sm_90)."""
    if residual is None or quantized or cfg.block_n != FWD_MAX_TILE_N:
        return cfg.num_warps
    if not x.element_size() == residual.element_size() == 4:
        return cfg.num_warps
    return _tile_warps(cfg.block_m * cfg.block_n, FP32_RESIDUAL_MAX_TILE_ELEMENTS_PER_THREAD)


def _forward(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    weight_offset: float,
    eps: float,
    round_xhat: bool,
    y: torch.Tensor,
    quant: tl.constexpr = NO_QUANT,
    scale: torch.Tensor | None = None,
    scale_ub: torch.Tensor | None = None,
    need_rstd: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None, tuple | None]:
    """Launches the forward into y, a contiguous tensor of x's shape; returns residual_out, rstd (lead
    shape; None unless need_rstd: an inference call saves its allocation and its store) and the
    launch of rms_norm_fwd_kernel as (grid, args, constexprs, num_warps) (None for rows split over
    programs), which a LaunchPlan repeats."""
    _check_rows(x)
    n = x.shape[-1]
    _check_n(n)
    m = y.numel() // n if n else 0
    cfg, num_warps, hold_stored_x = _fwd_tile(n, x, residual, quant.value != NO_QUANT.value)
    rstd = _empty_rstd(x) if need_rstd else None
    residual_out = None if residual is None else _contiguous_empty_like(x, residual.dtype)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "triton rms_norm_fwd: M=%d N=%d x=%s dtype=%s residual=%s quant=%d %s",
            m, n, tuple(x.shape), x.dtype, residual is not None, quant, cfg,
        )  # fmt: skip
    # Stand-ins for absent tensors: never read or written without HAS_RESIDUAL / HAS_WEIGHT / QUANT.
    res, res_out = (x, y) if residual is None else (residual, residual_out)
    w = x if weight is None else weight
    rstd_arg = y if rstd is None else rstd
    scale = rstd_arg if scale is None else scale
    sizes, x_strides = row_layout(x)
    res_strides = x_strides if residual is None else row_layout(residual)[1]
    device = x.device.index
    with _on_device_of(x):
        if cfg.split_rows:
            if m:
                _forward_split(
                    cfg, (x, res, w, y, res_out, rstd_arg, scale), (*sizes, *x_strides, *res_strides, m, n, eps,
                    weight_offset), {"HAS_RESIDUAL": residual is not None, "HAS_WEIGHT": weight is not None,
                    "STORE_RSTD": need_rstd, "ROUND_XHAT": round_xhat, "QUANT": quant.value}, device,
                )  # fmt: skip
            return residual_out, rstd, None
        launch = (
            (_cdiv(m, cfg.block_m),),
            (x, res, w, y, res_out, rstd_arg, scale, x if scale_ub is None else scale_ub, *sizes, *x_strides,
             *res_strides, m, n, eps, weight_offset),
            {"HAS_RESIDUAL": residual is not None, "HAS_WEIGHT": weight is not None, "STORE_RSTD": need_rstd,
             "ROUND_XHAT": round_xhat, "QUANT": quant.value, "HAS_SCALE_UB": scale_ub is not None,
             "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "HOLD_STORED_X": hold_stored_x,
             "X_CACHE_MODIFIER": _fwd_x_cache_modifier(cfg.block_n)},
            num_warps,
        )  # fmt: skip
        _launch_fwd(*launch, device)
    return residual_out, rstd, launch


# Launch plans by call signature, of the forward without a residual (rms_norm_fwd_planned, keyed by
# _fwd_key) and of the backward (rms_norm_bwd, keyed by _bwd_key). A small call spends more host
# time working out its launch than launching it: KernelLauncher keys 24 arguments, and _forward
# builds them, about 10 of an inference call's 18.5 us on the H100's host, where the C launcher takes
# 5.4 and y's allocation 2.7 (bench/NOTES.md v0.34); the backward works out its grid and pipeline
# and keys two launches. A plan does that once for every call of its signature. Cleared when full:
# serving sees many row counts, each a signature.
_fwd_plans: dict[tuple, LaunchPlan] = {}
_bwd_plans: dict[tuple, _BwdPlan] = {}
_MAX_PLANS = 1024


def forget_launch_choices() -> None:
    """Drops every choice worked out from this module's constants (tile_config's, _bwd_split_plan's,
    _dw_reduce_tile's, _programmatic_dw_reduce's) and every launch plan, for a caller that has changed
    those constants or functions (bench/tune_triton.py's candidates): a plan repeats its launch as it
    was."""
    tile_config.cache_clear()
    _bwd_split_plan.cache_clear()
    _dw_reduce_tile.cache_clear()
    _programmatic_dw_reduce.cache_clear()
    _fwd_plans.clear()
    _bwd_plans.clear()


def _remember(plans: dict, key: tuple, plan) -> None:
    if len(plans) >= _MAX_PLANS:
        plans.clear()
    plans[key] = plan


def _fwd_key(x: torch.Tensor, weight: torch.Tensor | None, x_address: int, w_address: int, round_xhat: bool,
             need_rstd: bool) -> tuple:  # fmt: skip
    """What a launch of rms_norm_fwd_planned depends on beside its addresses, eps and weight_offset."""
    w_dtype = None if weight is None else weight.dtype
    return x.shape, x.stride(), x.dtype, w_dtype, x_address & 15, w_address & 15, round_xhat, need_rstd, x.get_device()


def rms_norm_fwd_planned(
    x: torch.Tensor, weight: torch.Tensor | None, weight_offset: float, eps: float, round_xhat: bool, need_rstd: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """rms_norm_fwd(x, None, weight, weight_offset, eps, round_xhat, need_rstd)'s y and rstd: the same
    kernel and bits, launched from a plan where the call's signature has been seen (rows of one
    tile, on the current device)."""
    if not x.is_cuda:
        y, _, rstd = rms_norm_fwd(x, None, weight, weight_offset, eps, round_xhat, need_rstd)
        return y, rstd
    x_address = x.data_ptr()
    w_address = x_address if weight is None else weight.data_ptr()
    key = _fwd_key(x, weight, x_address, w_address, round_xhat, need_rstd)
    plan = _fwd_plans.get(key)
    y = _contiguous_empty_like(x)
    device = torch.cuda.current_device()
    if plan is not None and plan.device == device:
        rstd = _empty_rstd(x) if need_rstd else None
        addresses = (x_address, w_address, y.data_ptr(), *(() if rstd is None else (rstd.data_ptr(),)))
        if plan(addresses, eps, weight_offset):
            return y, rstd
    _, rstd, launch = _forward(x, None, weight, weight_offset, eps, round_xhat, y, need_rstd=need_rstd)
    if launch is None or key[-1] != device:  # rows split over programs, or x off the current device
        return y, rstd
    # eps and weight_offset, the kernel's last runtime arguments, are the plan's calls' own.
    tensors = (x, x if weight is None else weight, y, *(() if rstd is None else (rstd,)))
    plan = _launch_fwd.plan(*launch, device, tensors, trailing=2)
    if plan is not None:
        _remember(_fwd_plans, key, plan)
    return y, rstd


def _forward_split(cfg: TileConfig, tensors: tuple, scalars: tuple, flags: dict, device: int) -> None:
    """Launches rms_norm_fwd_split_kernel. tensors: x, res, w, y, res_out, rstd, scale (stand-ins where
    absent); scalars: the leading sizes, both inputs' strides, M, N, eps, weight_offset; flags: the
    constexprs HAS_RESIDUAL to QUANT."""
    x, res, _, y, res_out = tensors[:5]
    m, n = scalars[-4], scalars[-3]
    chunks = _cdiv(n, cfg.block_n)
    partials = torch.full((m, chunks), PENDING.value, dtype=torch.float32, device=x.device)
    # Enough chunks that a chunk's row has been summed by the time its normalization comes, few
    # enough that its inputs are still in L2: a budget of bytes moved meanwhile (read and written);
    # never under a row and a chunk an SM (a program waits on lower ids only), nor past the chunks
    # there are.
    moved = (x, y, res, res_out) if flags["HAS_RESIDUAL"] else (x, y)
    bytes_a_chunk = cfg.block_n * sum(t.element_size() for t in moved)
    lag = min(m * chunks, max(chunks + _num_sms(x.device), FWD_SPLIT_LAG_BYTES // bytes_a_chunk))
    _launch_fwd_split(
        (m * chunks + lag,), (*tensors, partials, lag, *scalars),
        {**flags, "CHUNK_N": cfg.block_n, "PARTIALS_BLOCK": FWD_SPLIT_PARTIALS_BLOCK}, cfg.num_warps, device,
    )  # fmt: skip


def rms_norm_fwd(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    weight_offset: float,
    eps: float,
    round_xhat: bool = False,
    need_rstd: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Forward of RMSNorm over the rows of x, or of x + residual (add_rms_norm).

    x, residual: [*lead, N] of the same shape, 1 to 4 leading dims, contiguous last dims, any
    other strides; weight: [N] or None, scaled as weight + weight_offset; round_xhat: x * rstd
    rounded to x's dtype before the weight (casting_mode "llama"). Returns y (x's shape,
    contiguous, x's dtype), residual_out (x + residual, x's shape, contiguous, residual's dtype;
    None without a residual) and rstd (fp32, shape lead; None unless need_rstd).
    """
    y = _contiguous_empty_like(x)
    residual_out, rstd, _ = _forward(x, residual, weight, weight_offset, eps, round_xhat, y, need_rstd=need_rstd)
    return y, residual_out, rstd


def rms_norm_quant_fwd(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    weight_offset: float,
    eps: float,
    round_xhat: bool,
    scale: torch.Tensor | None,
    scale_ub: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """rms_norm_fwd's y quantized to float8_e4m3fn: saturate(y * (1 / scale)), y rounded to x's dtype first.

    scale: [1] fp32 (static), or None: one scale per row, max |y| (clamped to scale_ub, [1] fp32,
    when given) / 448, floored at MIN_DYNAMIC_SCALE. Returns y_q (x's shape, contiguous),
    residual_out (as rms_norm_fwd) and the row scales (fp32, shape lead + (1,); None when static).
    """
    y_q = _contiguous_empty_like(x, torch.float8_e4m3fn)
    if scale is not None:
        residual_out, _, _ = _forward(
            x, residual, weight, weight_offset, eps, round_xhat, y_q, QUANT_STATIC, scale, need_rstd=False
        )
        return y_q, residual_out, None
    row_scale = torch.empty((*x.shape[:-1], 1), dtype=torch.float32, device=x.device)
    n = x.shape[-1]
    if not tile_config(n, "quant").split_rows:
        residual_out, _, _ = _forward(
            x, residual, weight, weight_offset, eps, round_xhat, y_q, QUANT_DYNAMIC, row_scale, scale_ub,
            need_rstd=False,
        )
        return y_q, residual_out, row_scale
    # A row wider than one tile: its maximum is known only after the whole row, so y goes through memory.
    y, residual_out, _ = rms_norm_fwd(x, residual, weight, weight_offset, eps, round_xhat, need_rstd=False)
    with _on_device_of(x):
        _launch_quantize_rows(
            (y.numel() // n,), (y, y_q, row_scale, x if scale_ub is None else scale_ub, n),
            {"HAS_SCALE_UB": scale_ub is not None, "BLOCK_N": SPLIT_BLOCK_N}, _tile_warps(SPLIT_BLOCK_N),
            x.device.index,
        )  # fmt: skip
    return y_q, residual_out, row_scale


@dataclass(frozen=True)
class BwdSplitPlan:
    """How rms_norm_bwd_split_kernel covers rows of one width: a function of N and the element
    sizes only, never of M."""

    chunk_n: int  # columns a chunk (a program)
    chunks: int  # chunks a row
    partials_block: int  # partials read at a time
    reread_dy_early: bool
    num_warps: int


@functools.lru_cache(maxsize=None)
def _bwd_split_plan(n: int, x_element_size: int, dy_element_size: int) -> BwdSplitPlan:
    """rms_norm_bwd_split_kernel's plan for rows of n elements (see BWD_SPLIT_NARROW_CHUNK_N)."""
    wide_elements = x_element_size == 4 and dy_element_size == 4
    if not wide_elements and n <= BWD_SPLIT_NARROW_MAX_N:
        chunk_n = BWD_SPLIT_NARROW_CHUNK_N
    else:
        least = BWD_SPLIT_FP32_CHUNK_N if wide_elements else BWD_SPLIT_CHUNK_N
        chunk_n = max(least, triton.next_power_of_2(_cdiv(n, BWD_SPLIT_MAX_CHUNKS)))
    chunks = _cdiv(n, chunk_n)
    partials_block = min(BWD_SPLIT_PARTIALS_BLOCK, triton.next_power_of_2(chunks))
    reread_dy_early = wide_elements or chunk_n >= BWD_SPLIT_EARLY_DY_MIN_CHUNK_N
    return BwdSplitPlan(
        chunk_n, chunks, partials_block, reread_dy_early, _tile_warps(chunk_n, BWD_SPLIT_ELEMENTS_PER_THREAD)
    )


@functools.lru_cache(maxsize=None)
def _dw_reduce_tile(p: int, n: int, sms: int) -> tuple[int, int]:
    """rms_norm_dw_reduce_kernel's (BLOCK_P, BLOCK_N) for P partials of N columns on `sms` SMs (see
    DW_REDUCE_MAX_BLOCK_P). Of (P, N, GPU) alone, as P is of (M, N, GPU): dweight's bits stay a
    function of the call's shape and GPU."""
    block_p = min(DW_REDUCE_MAX_BLOCK_P, max(DW_REDUCE_MIN_BLOCK_P, triton.next_power_of_2(p)))
    block_n = min(triton.next_power_of_2(_cdiv(n, sms)), DW_REDUCE_TILE_ELEMENTS // block_p)
    return block_p, max(DW_REDUCE_MIN_BLOCK_N, block_n)


@functools.lru_cache(maxsize=None)
def _programmatic_dw_reduce(device: torch.device) -> bool:
    """Whether the dweight reduction on `device` is launched as a programmatic dependent of the
    backward (PROGRAMMATIC_DW_REDUCE): compiled kernels (not the interpreter, which has no inline
    assembly) on compute capability 9.0 or later, which has griddepcontrol."""
    compiled = isinstance(rms_norm_dw_reduce_kernel, triton.runtime.JITFunction)
    if not PROGRAMMATIC_DW_REDUCE or not compiled or device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def _reduce_dweight(dw_partial: torch.Tensor, dw: torch.Tensor, device: int) -> tuple:
    """dw = the sum of dw_partial's [P, N] per-program rows, in a fixed order (rms_norm_dw_reduce_kernel).
    Returns the launch as (grid, args, constexprs, num_warps), which a LaunchPlan repeats."""
    p, n = dw_partial.shape
    block_p, block_n = _dw_reduce_tile(p, n, _num_sms(dw_partial.device))
    constexprs = {"BLOCK_P": block_p, "BLOCK_N": block_n, "WAIT_FOR_PRIOR": _programmatic_dw_reduce(dw_partial.device)}
    launch = ((_cdiv(n, block_n),), (dw_partial, dw, p, n), constexprs, DW_REDUCE_NUM_WARPS)
    _launch_dw_reduce(*launch, device)
    return launch


class _BwdPlan(NamedTuple):
    """rms_norm_bwd's launches for one call signature: the backward's (rms_norm_bwd_kernel, or
    rms_norm_bwd_split_kernel where chunks), then dweight's reduction (None without dweight); the
    programs, a row of dweight partials each, and the split kernel's column chunks (0: the tiled
    kernel), a flag word each a row."""

    backward: LaunchPlan
    reduce: LaunchPlan | None
    programs: int
    chunks: int


def _bwd_key(tensors: tuple, addresses: list, dresidual_out: torch.Tensor | None, weight: torch.Tensor | None,
             compute_dw: bool, round_xhat: bool) -> tuple:  # fmt: skip
    """What a launch of rms_norm_bwd depends on beside its addresses and weight_offset. tensors: dy,
    x, dresidual_out, weight, rstd, dx, with stand-ins where absent (_bwd_tensors); addresses:
    theirs."""
    dy, x, _, _, rstd, _ = tensors
    return (
        x.shape, x.stride(), x.dtype, dy.stride(), dy.dtype, rstd.shape, rstd.dtype,
        None if dresidual_out is None else (dresidual_out.stride(), dresidual_out.dtype),
        None if weight is None else weight.dtype, compute_dw, round_xhat, *[a & 15 for a in addresses],
        x.get_device(),
    )  # fmt: skip


def _bwd_tensors(dy, x, dresidual_out, weight, rstd, dx) -> tuple:
    """rms_norm_bwd_kernel's tensors but dweight's partials, stand-ins where absent (never read without
    HAS_DRESIDUAL / HAS_WEIGHT): dy for dresidual_out, x for weight."""
    return dy, x, dy if dresidual_out is None else dresidual_out, x if weight is None else weight, rstd, dx


def _backward_split(
    dy: torch.Tensor, x: torch.Tensor, dresidual_out: torch.Tensor | None, weight: torch.Tensor | None,
    weight_offset: float, rstd: torch.Tensor, compute_dw: bool, round_xhat: bool, dx: torch.Tensor,
    dw: torch.Tensor | None,
) -> tuple | None:  # fmt: skip
    """rms_norm_bwd's rows wider than one tile on rms_norm_bwd_split_kernel, a [groups, chunks] grid
    of programs all resident at once. None, with nothing launched, where the GPU cannot hold one
    program a chunk: a function of N, the dtypes and the GPU, never of M. Else the launches, for a
    plan (_plan_backward): the kernel's (grid, args, constexprs, num_warps), dweight's reduction's
    (None without dweight), and the kernel's tensors in a plan's order."""
    m, n = rstd.numel(), x.shape[-1]
    plan = _bwd_split_plan(n, x.element_size(), dy.element_size())
    chunks, num_warps = plan.chunks, plan.num_warps
    sizes, x_strides = row_layout(x)
    _, dy_strides = row_layout(dy)
    dres_strides = dy_strides if dresidual_out is None else row_layout(dresidual_out)[1]
    flags = {"HAS_DRESIDUAL": dresidual_out is not None, "HAS_WEIGHT": weight is not None, "COMPUTE_DW": compute_dw,
             "ROUND_XHAT": round_xhat, "CHUNK_N": plan.chunk_n, "PARTIALS_BLOCK": plan.partials_block,
             "LAG_ROWS": BWD_SPLIT_LAG_ROWS, "REREAD_DY_EARLY": plan.reread_dy_early,
             "DX_CACHE_MODIFIER": BWD_SPLIT_DX_CACHE_MODIFIER}  # fmt: skip

    def args(dw_partial: torch.Tensor, partials: torch.Tensor) -> tuple:
        return (*_bwd_tensors(dy, x, dresidual_out, weight, rstd, dx), dw_partial, partials, *sizes, *dy_strides,
                *x_strides, *dres_strides, m, n, weight_offset)  # fmt: skip

    device = x.device.index
    if x.device.type == "cuda":
        # Empty tensors of the scratch tensors' dtypes, as aligned as their fresh allocations: the same
        # specialization as the launch's.
        stand_ins = args(_empty_on(x.device, torch.float32), _empty_on(x.device, torch.int64))
        with _on_device_of(x):
            resident = _launch_bwd_split.resident_programs(
                stand_ins, {**flags, "PHASE": BOTH_PHASES.value}, num_warps, device
            )
        if chunks > resident:
            return None
        phases = (BOTH_PHASES,)
    else:
        # The interpreter runs programs one after another: every program's sums, then every
        # program's dx, so none waits; any fixed grid will do.
        resident = 2 * _num_sms(x.device)
        phases = (SUMS_ONLY, DX_ONLY)
    groups = max(1, min(m, resident // chunks))
    partials = torch.zeros((m, chunks), dtype=torch.int64, device=x.device)
    dw_partial = x.new_empty((groups, n), dtype=torch.float32) if compute_dw else rstd
    reduce = None
    with _on_device_of(x):
        for phase in phases:
            launch = ((groups, chunks), args(dw_partial, partials), {**flags, "PHASE": phase.value}, num_warps)
            _launch_bwd_split(*launch, device)
        if compute_dw:
            reduce = _reduce_dweight(dw_partial, dw, device)
    return launch, reduce, launch[1][:8]  # the kernel's tensors, in its (and a plan's) order


def rms_norm_bwd(
    dy: torch.Tensor,
    x: torch.Tensor,
    dresidual_out: torch.Tensor | None,
    weight: torch.Tensor | None,
    weight_offset: float,
    rstd: torch.Tensor,
    needs_dweight: bool,
    round_xhat: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Backward of RMSNorm over the rows of x (for add_rms_norm, x is residual_out).

    dy, x, dresidual_out: [*lead, N] of the same shape, laid out as rms_norm_fwd's inputs; dresidual_out, the
    gradient arriving on add_rms_norm's residual_out, is added to dx (None: nothing to add);
    weight: [N] or None; rstd: [M] fp32; round_xhat: the forward rounded x * rstd before the weight
    (casting_mode "llama"), so dweight sums dy times that rounded value. Returns dx (x's shape,
    contiguous, x's dtype) and dweight ([N], weight's dtype) or None. Launched from a plan where the
    call's signature has been seen on the current device (all but the two-pass rows).
    """
    _check_rows(x)
    n = x.shape[-1]
    _check_n(n)
    m = rstd.numel()
    compute_dw = needs_dweight and weight is not None
    dx = _contiguous_empty_like(x)
    dw = torch.empty_like(weight) if compute_dw else None  # weight: [N], contiguous
    if m == 0:
        return dx, dw.zero_() if compute_dw else None
    key = None  # the call's plan key, where a plan of it may be kept: x on the current device
    if x.is_cuda:
        tensors = _bwd_tensors(dy, x, dresidual_out, weight, rstd, dx)
        addresses = [t.data_ptr() for t in tensors]
        key = _bwd_key(tensors, addresses, dresidual_out, weight, compute_dw, round_xhat)
        plan = _bwd_plans.get(key)
        device = torch.cuda.current_device()
        if plan is not None and plan.backward.device == device:
            dw_partial = x.new_empty((plan.programs, n), dtype=torch.float32) if compute_dw else rstd
            scratch = [dw_partial]
            if plan.chunks:  # the split kernel's flag words, zeros on entry
                scratch.append(torch.zeros((m, plan.chunks), dtype=torch.int64, device=x.device))
            if plan.backward((*addresses, *[t.data_ptr() for t in scratch]), weight_offset):
                if compute_dw and not plan.reduce((dw_partial.data_ptr(), dw.data_ptr())):
                    _reduce_dweight(dw_partial, dw, device)  # a launch hook set in between
                return dx, dw
        if key[-1] != device:
            key = None
    cfg = tile_config(n, "backward")
    if cfg.split_rows:
        split = _backward_split(dy, x, dresidual_out, weight, weight_offset, rstd, compute_dw, round_xhat, dx, dw)
        if split is not None:
            if key is not None:
                launch, reduce, tensors = split
                _plan_backward(key, _launch_bwd_split, launch, reduce, tensors, dw, launch[0][1], x.device.index)
            return dx, dw
    col_blocks = _cdiv(n, cfg.block_n)
    # Enough programs to fill the GPU, fewer when there are few tiles; a function of (M, N, GPU)
    # only, so the dweight summation order is the same on every run.
    per_sm, stages = _bwd_pipeline(cfg, x.device, (dy, x) if dresidual_out is None else (dy, x, dresidual_out))
    programs = min(_cdiv(m, cfg.block_m), max(1, _num_sms(x.device) * per_sm // col_blocks))
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "triton rms_norm_bwd: M=%d N=%d x=%s dtype=%s %s programs=%d", m, n, tuple(x.shape), x.dtype, cfg, programs
        )
    dy, x, dres, w, rstd, dx = _bwd_tensors(dy, x, dresidual_out, weight, rstd, dx)
    dot = rstd  # a stand-in, never read without DOT_GIVEN
    dw_partial = x.new_empty((programs, n), dtype=torch.float32) if compute_dw else rstd
    sizes, x_strides = row_layout(x)
    _, dy_strides = row_layout(dy)
    dres_strides = dy_strides if dresidual_out is None else row_layout(dresidual_out)[1]
    device = x.device.index
    reduce = None
    with _on_device_of(x):
        if cfg.split_rows:
            dot = torch.empty((m,), dtype=torch.float32, device=x.device)
            _launch_bwd_dot(
                (m,), (dy, x, w, rstd, dot, *sizes, *dy_strides, *x_strides, n, weight_offset),
                {"HAS_WEIGHT": weight is not None, "BLOCK_N": cfg.block_n}, cfg.num_warps, device,
            )  # fmt: skip
        backward = (
            (programs, col_blocks),
            (dy, x, dres, w, rstd, dot, dx, dw_partial, *sizes, *dy_strides, *x_strides, *dres_strides, m, n,
             weight_offset),
            {"HAS_DRESIDUAL": dresidual_out is not None, "HAS_WEIGHT": weight is not None, "COMPUTE_DW": compute_dw,
             "DOT_GIVEN": cfg.split_rows, "ROUND_XHAT": round_xhat, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
             "NUM_STAGES": stages, "DX_CACHE_MODIFIER": BWD_DX_CACHE_MODIFIER,
             "LAUNCH_DEPENDENTS": compute_dw and _programmatic_dw_reduce(x.device)},
            cfg.num_warps,
        )  # fmt: skip
        _launch_bwd(*backward, device)
        if compute_dw:
            reduce = _reduce_dweight(dw_partial, dw, device)
    if key is not None and not cfg.split_rows:
        _plan_backward(key, _launch_bwd, backward, reduce, (dy, x, dres, w, rstd, dx, dw_partial), dw, 0, device)
    return dx, dw


def _plan_backward(key: tuple, launcher: KernelLauncher, backward: tuple, reduce: tuple | None, tensors: tuple,
                   dw: torch.Tensor | None, chunks: int, device: int) -> None:  # fmt: skip
    """Keeps rms_norm_bwd's plan of a call signature whose launches (as launched: grid, args,
    constexprs, num_warps; reduce None without dweight) have direct launches. weight_offset, the
    backward's last runtime argument, is each call's own. tensors: the backward's, as _bwd_tensors
    orders them, then dweight's partials, then the split kernel's flag words (chunks of them a row)."""
    backward_plan = launcher.plan(*backward, device, tensors, trailing=1)
    reduce_plan = None if reduce is None else _launch_dw_reduce.plan(*reduce, device, (tensors[6], dw), trailing=0)
    if backward_plan is not None and (reduce is None or reduce_plan is not None):
        _remember(_bwd_plans, key, _BwdPlan(backward_plan, reduce_plan, backward[0][0], chunks))
