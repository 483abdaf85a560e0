// RMSNorm forward kernels and their launch, shared by the launchers rms_norm_fwd (y stored in T)
// and rms_norm_quant_fwd (y quantized to fp8 e4m3), defined at the end: y = (x * rstd) * (weight +
// weight_offset), rstd = 1 / sqrt(mean(x^2) + eps) per row. With a residual (add_rms_norm) the
// row is first replaced by r = x + residual, added in fp32 and rounded to R, the residual's type,
// which is written to residual_out and then normalized as x would be: y has the bits
// rms_norm(residual_out) would give, rounded to T. R is T, or float beside a 16-bit T (an fp32
// residual stream); vectors and the launch configuration follow T, the narrower type: a chunk of
// VEC = kVecElems<T> elements is one 16-byte load of x and, for a float residual, two of the
// residual.
//
// y's stored type Y is T, or Fp8 (the bits of an fp8 e4m3fn value): the quantizing forward
// computes y in T exactly as above, converts it back to fp32 and multiplies it by the reciprocal
// of a scale, a static one or the row's amax / 448 (dynamic), before rounding it to fp8. An
// epilogue of the same kernels, not kernels of its own: y's bits before quantization are those
// rms_norm_fwd stores.
//
// Two kernels, each taking the residual as a runtime option (a null pointer: the same branch for
// the whole grid). A template flag would double the instantiations and the compile time and
// save no spill: the one case that spills with a residual (see kRegisterKernelHasRoom) spills
// as a template instantiation too. Static or dynamic scaling is a runtime option too.
//   rms_norm_fwd_kernel:        the row is held in registers (ITEMS Vecs per thread) between the
//                               sum of squares and the scaling, so x (and residual) are read from
//                               DRAM once and y (and residual_out) written once; quantizing, y
//                               replaces the row in registers, and the dynamic amax is taken
//                               from there.
//   rms_norm_fwd_looped_kernel: rows too long for registers, and long rows without a residual
//                               (FwdConfig::staged_threads); one block per row walks the row
//                               twice (sum of squares, then scaling), the second time mostly
//                               from L2, or, staged, every time from shared memory, where the
//                               first walk copied it; three times for the dynamic amax. With a
//                               residual every walk reads x and residual and forms r: reading
//                               residual_out back instead would read memory the kernel writes,
//                               which load_vec's non-coherent loads must not. On sm_90, rows
//                               without a residual over kFwdClusterMinRowBytes are cut into
//                               slices, one a block of a thread block cluster (CLUSTERED).
// The launch configuration depends on n and sizeof(T) only (and, for rows over 128 KB, on whether
// the GPU has clusters), and the aligned and unaligned paths add in the same order, so a row's bits
// never depend on the other rows, on the batch size or on where the row sits in memory.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>

#include <cuda_fp8.h>

#include "common.cuh"
#include "rms_norm.h"

namespace rmsnorm {
namespace {

// ---------------------------------------------------------------------------------------------
// Launch configuration
// ---------------------------------------------------------------------------------------------

// Largest ITEMS: 4 Vecs are 16 registers of row data (32 in the unaligned half/bf16 path,
// one element per register, or as fp32 sums with an fp32 residual stream), which with the
// weights, addresses and masks fits the 64-register
// cap of a 1024-thread block without spills (ptxas -v; tests/test_cuda_compile.py checks it).
// 8 Vecs spilled. Rows longer than 1024 threads x 4 Vecs (32K halves, 16K floats) go to the
// looped kernel.
constexpr int kFwdMaxItems = 4;
// One row per block aims at this many threads, more items per thread before more threads: at
// 2048 bf16 elements 256 threads of one Vec each reached 77% of copy, 64 threads of 4 Vecs 96%
// (more bytes in flight per thread, less reduction per byte); 128 and 64 tie elsewhere
// (bench/tune_cuda.py, bench/NOTES.md v0.4). 64, not 128: rms_norm_quant at 2048, which moves 3
// bytes an element against the forward's 4 and so needs fewer instructions a byte, reached 95% of
// copy with 64 threads of 4 Vecs against 81% with 128 of 2 (v0.7); the forward ties (96.6 / 97.0%).
constexpr int kFwdPreferredThreadsPerRow = 64;
// Rows of at most one warp share a block of this many threads (128 / threads_per_row rows).
// First guess, to be tuned by the benchmark.
constexpr int kFwdSubWarpBlockThreads = 128;
// Vecs a thread takes of a row of at most 32 (tile_row's sub_warp_items). With one, a thread has
// one 16-byte load in flight. H100, bf16, % of copy (bench/tune_cuda.py, bench/NOTES.md v0.14),
// 1 -> 2 at N = 64-256: forward 89-90 -> 95, rms_norm_quant static 64-66 -> 86-87, dynamic
// 54-58 -> 80-82; 512 and wider do not take it.
constexpr int kFwdSubWarpItems = 2;

// Whether rms_norm_fwd_kernel<T, W, R, Y, ITEMS, ALIGNED, *> has registers to spare beside the
// row: for a residual, and for the fp8 epilogue. Not with 4 Vecs of a 2-byte T unaligned, where
// x arrives one element per register: with a residual, x's and the residual's 64 loads in flight
// spilled under the 64-register cap (ptxas -v, sm_90 most), whether the residual was a runtime
// option or a template flag; quantizing, it spilled ~100 bytes on sm_80 and sm_90 when y was
// formed twice beside the row (before bench/NOTES.md v0.7, which forms it once in the row's
// registers; not tried again since), with sm_80's software fp8 conversion. Those rows go to
// rms_norm_fwd_looped_kernel with the register kernel's threads_per_row threads a block (see the
// launcher), and the register kernel is not instantiated to quantize them.
template <typename T, int ITEMS, bool ALIGNED>
constexpr bool kRegisterKernelHasRoom = ALIGNED || sizeof(T) > 2 || ITEMS < kFwdMaxItems;

// Whether rms_norm_fwd_kernel<T, W, R, ..., ITEMS, ...> tests for a weight once a row and forms y's
// chunks with the test out of their code, rather than once a chunk. Behind a test each, the
// weight's loads waited each for the one before: ITEMS trips to L2 in series after the reduction,
// most of a one-row call's time (SASS; bench/NOTES.md v0.41). Not for an fp32 weight beside 16-bit
// x and an fp32 residual stream on 4 Vecs: 8-20 bytes spilled under the 64-register cap (ptxas -v,
// sm_90).
template <typename T, typename W, typename R, int ITEMS>
constexpr bool kWeightTestedOnce = !(ITEMS == kFwdMaxItems && sizeof(W) > sizeof(T) && !std::is_same_v<R, T>);

// Rows without a residual of kFwdStagedMinRowBytes to kFwdStagedMaxRowBytes go to the looped
// kernel on fewer threads, each walking kFwdStagedChunksPerThread chunks, staged in shared memory
// when aligned (see rms_norm_fwd_looped_kernel). Those widths held in registers leave one block, one
// row, an SM (a row of 32768 bf16 fills 1024 threads under their 64-register cap): idle from its
// reduction to its stores, 68% of copy for rms_norm_quant at 32768 and 69% for the forward at 65536
// (bench/NOTES.md v0.8). Staged, a row in flight costs no registers, and blocks of few threads
// spread each thread's share of the reductions and the fp32 divisions over more elements: the
// quantizing forward is issue-bound.
// 16 KB: 8192 bf16 elements. From 8 KB instead, 4096 lost 1 to 2 points (v0.9).
constexpr int64_t kFwdStagedMinRowBytes = 16 * 1024;
// 128 KB: 65536 bf16 / 32768 fp32 elements, one block an SM on an A100 (164 KB) or H100 (227 KB).
constexpr int64_t kFwdStagedMaxRowBytes = 128 * 1024;
// 8 Vecs, 64 bf16 elements a thread: the share of Triton's quantizing tile (QUANT_ELEMENTS_PER_THREAD).
// 4 lost from 16384 (dynamic 83 against 93 there), 16 everywhere (v0.8, v0.9).
constexpr int kFwdStagedChunksPerThread = 8;
// The staged kernel's shared memory an SM (shared_capacity_percent): room for this many blocks'
// stages (one of 128 KB rows), and at least kStagedMinSharedBytes, so that narrow stages keep
// several blocks an SM (five of 16 KB at 8192, level with the seven that 132 KB holds; 64 KB would
// hold three, not measured). The rest of the SM's 256 KB is L1, where every row's walks find the
// weight. H100, bf16, % of copy (bench/tune_cuda.py,
// bench/NOTES.md v0.9 and v0.30), rms_norm_quant dynamic / static: at 16384 (32 KB stages) 100 KB
// (3 blocks, 156 KB of L1) 94 / 96 against 132 KB (4 blocks, 124 KB) 93 / 96; at 32768 132 KB (2
// blocks, 124 KB) 91 / 95 against 100 KB (1 block) 74 / 83 and 164 KB (2 blocks, 92 KB) 87 / 94;
// 228 KB (28 KB of L1) lost 9-11 points dynamic and 2-5 static at 8192-32768 (v0.9): it is the
// room for the weight that counts.
constexpr int kStagedBlocksPerSm = 2;
constexpr int64_t kStagedMinSharedBytes = 100 * 1024;
// Rows without a residual over this many bytes are cut into slices, one a block of a thread block
// cluster (sm_90; CLUSTERED in rms_norm_fwd_looped_kernel): rows too long to stage in one block.
// H100, bf16, forward, % of copy (bench/NOTES.md v0.11): 58 -> 88% at 131072, 56 -> 83% at 262144;
// clustered from 64 KB rows, 92 -> 90% at 65536 and 96 -> 91% at 32768.
constexpr int64_t kFwdClusterMinRowBytes = kFwdStagedMaxRowBytes;
// The bytes of a slice: the fewest blocks, a power of two, that bring a slice to this or less, up
// to kMaxClusterBlocks (2^20 bf16 elements: 16 slices of 128 KB). 32 KB: quack's slice for bf16
// rows of 64K-256K, and the forward's best staged width (16384 bf16, 96-98% of copy, v0.9).
constexpr int64_t kFwdClusterSliceBytes = 32 * 1024;
// The clustered kernel's shared memory carveout (see kStagedBlocksPerSm): all of it, for as many
// slices an SM as it holds (six of 32 KB), which hide each other's waits for the cluster's totals;
// its slice of the weight is L2's. 100% against 44% (132 KB, v0.30): 89 / 83% of copy at 131072,
// 84 / 63% at 262144 (v0.11).
constexpr int kFwdClusterCarveoutPercent = 100;
// Slices up to this many bytes are staged (when aligned); longer ones are walked from L2.
constexpr int64_t kFwdClusterStagedMaxSliceBytes = kFwdStagedMaxRowBytes;
// The unroll of a staged walk: shared memory answers within tens of cycles, and the SM has other
// warps; the looped kernel's kLoopedUnroll is for loads from DRAM. 1, 4 and 8 all within a point.
constexpr int kStagedUnroll = 2;
// A dynamic fp8 scale's staged y is stored past L1 (store_vec's NO_L1_ALLOCATE) in rows longer than
// this: its lines evicted the weight of the next row's amax walk. H100, bf16, rms_norm_quant
// dynamic, % of copy (bench/tune_cuda.py, bench/NOTES.md v0.31-v0.32), hint against none:
// +1.0 at 32768, +0.4 at 16384, +0.2 at 12288, +8.5 at 65536, level at 2048-4096, and -2.8 at 8192
// (16 KB of weight: 92.3 against 95.1), hence the bound. The static scale's
// stores read 1.4 points lower with it at 16384-32768, the forward's y a point lower: both store as
// they did.
constexpr int64_t kDynamicYNoL1AllocateAboveN = 8192;

struct FwdConfig {
  RowTiling tiling;    // tiling.items == 0: the row does not fit, rms_norm_fwd_looped_kernel
  int rows_per_block;  // rows of one block, each handled by tiling.threads_per_row threads
  int block_threads;
  // > 0: rows without a residual go to the looped kernel on this many threads, staged when aligned,
  // whatever the tiling (the same walk either way: the same bits); rows with one follow the tiling.
  int staged_threads;
  // > 0: on sm_90, rows without a residual go to the looped kernel CLUSTERED, in this many slices
  // of slice_n columns, on cluster_threads threads a slice, staged when aligned and a slice fits.
  int cluster_blocks;
  int cluster_threads;
  int64_t slice_n;
};

// The forward configuration for rows of n elements of elem_bytes each: from n and the element
// size only, never from the number of rows (batch invariance).
FwdConfig fwd_config(int64_t n, int elem_bytes) {
  const int64_t chunks = ceil_div(n, kVectorBytes / elem_bytes);
  const int64_t row_bytes = n * elem_bytes;
  // kFwdStagedChunksPerThread chunks a thread, whole warps, a block at most.
  const auto staged_threads_for = [](int64_t walked_chunks) {
    return static_cast<int>(std::min(round_up(ceil_div(walked_chunks, kFwdStagedChunksPerThread), kWarpSize),
                                     int64_t{kMaxBlockThreads}));
  };
  int staged_threads = 0;
  if (row_bytes >= kFwdStagedMinRowBytes && row_bytes <= kFwdStagedMaxRowBytes) {
    staged_threads = staged_threads_for(chunks);
  }
  int cluster_blocks = 0;
  int cluster_threads = 0;
  int64_t slice_n = n;
  if (row_bytes > kFwdClusterMinRowBytes) {
    cluster_blocks = 2;
    while (cluster_blocks < kMaxClusterBlocks && cluster_blocks * kFwdClusterSliceBytes < row_bytes) {
      cluster_blocks *= 2;
    }
    const int vec = kVectorBytes / elem_bytes;
    slice_n = round_up(ceil_div(n, cluster_blocks), vec);
    cluster_threads = staged_threads_for(slice_n / vec);
  }
  const RowTiling tiling =
      tile_row(chunks, kFwdMaxItems, kFwdPreferredThreadsPerRow, kMaxBlockThreads, kFwdSubWarpItems);
  if (tiling.items == 0) {
    return {tiling, 1, kLoopedBlockThreads, staged_threads, cluster_blocks, cluster_threads, slice_n};
  }
  if (tiling.threads_per_row <= kWarpSize) {
    return {tiling,         kFwdSubWarpBlockThreads / tiling.threads_per_row, kFwdSubWarpBlockThreads,
            staged_threads, cluster_blocks,                                   cluster_threads,
            slice_n};
  }
  return {tiling, 1, tiling.threads_per_row, staged_threads, cluster_blocks, cluster_threads, slice_n};
}

// ---------------------------------------------------------------------------------------------
// fp8 quantization
// ---------------------------------------------------------------------------------------------

// The bits of an fp8 e4m3fn value: y's element type in the quantizing forward.
using Fp8 = __nv_fp8_storage_t;

template <typename Y>
constexpr bool kQuantizes = std::is_same_v<Y, Fp8>;

// The largest finite e4m3fn value: the dynamic scale maps a row's amax onto it.
constexpr float kFp8E4M3Max = 448.0f;
// The smallest dynamic scale, vLLM's floor: an all-zero row divides by it rather than by zero.
constexpr float kMinFp8Scale = 1.0f / (kFp8E4M3Max * 512.0f);

// How the quantizing forward scales y before rounding it to fp8 (unused when Y is T).
struct Fp8Scaling {
  const float* scale;     // [1]: the static scale; nullptr: dynamic, one scale per row
  const float* scale_ub;  // [1]: the upper bound of a row's amax (dynamic only); or nullptr
  float* row_scale;       // [rows], contiguous: the dynamic scales, written; nullptr when static
};

// The dynamic scale of a row whose |y| peaks at amax: amax capped at scale_ub (when given), over
// kFp8E4M3Max with IEEE division, floored at kMinFp8Scale. A NaN amax stays NaN: both
// comparisons are false for it.
__device__ __forceinline__ float dynamic_scale(float amax, const float* scale_ub) {
  if (scale_ub != nullptr) {
    const float ub = *scale_ub;
    amax = amax > ub ? ub : amax;
  }
  const float s = __fdiv_rn(amax, kFp8E4M3Max);
  return s < kMinFp8Scale ? kMinFp8Scale : s;
}

// amax combined with |y| over the elements of the chunk at col before end, NaN propagating. y in
// fp32, before its rounding to T: the row's amax is rounded once instead (row_amax), which gives
// the same value, as rounding is monotone and odd (max |round(y)| = round(max |y|)), and saves
// taking every rounded y apart again. ALIGNED: no chunk straddles end, so one test a chunk.
template <bool ALIGNED, int VEC, typename Index>
__device__ __forceinline__ float add_abs_max(float amax, const float (&y)[VEC], Index col, Index end) {
  if (ALIGNED && col >= end) return amax;
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    if (ALIGNED || col + k < end) amax = NanMaxOp{}(amax, fabsf(y[k]));
  }
  return amax;
}

// The amax of a row's y as stored in T, from the amax of its fp32 values (add_abs_max).
template <typename T>
__device__ __forceinline__ float row_amax(float fp32_amax) {
  return to_float(from_float<T>(fp32_amax));
}

// What y is multiplied by before its rounding to fp8: the reciprocal of its scale, by IEEE
// division, once per row. Multiplying each y by it, as vLLM does, rather than dividing each y by
// the scale: an IEEE division per element made the quantizing forward compute-bound, about 2.5 ps
// an element on an H100 (40-70% of copy bandwidth, bench/NOTES.md v0.6).
__device__ __forceinline__ float inverse_scale(float scale) { return __fdiv_rn(1.0f, scale); }

// Stores the chunk at col of y (elements past n are skipped): as it is when Y is T; when Y is Fp8,
// each y * y_inv_scale rounded to the nearest e4m3fn value, ties to even, finite overflow and
// infinities saturating to +-448, NaN staying NaN.
template <bool ALIGNED, bool NO_L1_ALLOCATE = false, int VEC, typename T, typename Y, typename Index>
__device__ __forceinline__ void store_y(Y* y_row, Index col, Index n, const Vec<T, VEC>& y, float y_inv_scale) {
  if constexpr (kQuantizes<Y>) {
    static_assert(VEC % 2 == 0, "fp8 values are converted in pairs");
    // Two values a conversion (cvt.rn.satfinite.e4m3x2.f32 on sm_89+): the bits of converting each
    // on its own, half the instructions. The pair's first value is its low byte.
    float f[VEC];
    vec_to_floats(y, f);
    __nv_fp8x2_storage_t pairs[VEC / 2];
#pragma unroll
    for (int k = 0; k < VEC; k += 2) {
      const float2 scaled = make_float2(__fmul_rn(f[k], y_inv_scale), __fmul_rn(f[k + 1], y_inv_scale));
      pairs[k / 2] = __nv_cvt_float2_to_fp8x2(scaled, __NV_SATFINITE, __NV_E4M3);
    }
    Vec<Fp8, VEC> q;
    memcpy(&q, pairs, sizeof(q));
    store_vec<ALIGNED, NO_L1_ALLOCATE>(y_row, col, n, q);
  } else {
    store_vec<ALIGNED, NO_L1_ALLOCATE>(y_row, col, n, y);
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

// rstd = 1 / sqrt(sum_sq / n + eps), with IEEE division and square root: rsqrtf and the
// approximate division would change the last bits.
__device__ __forceinline__ float rstd_of(float sum_sq, int64_t n, float eps) {
  return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(sum_sq, static_cast<float>(n)), eps)));
}

template <int VEC, typename T>
__device__ __forceinline__ float add_squares(float sum_sq, const Vec<T, VEC>& x) {
  float f[VEC];
  vec_to_floats(x, f);
#pragma unroll
  for (int k = 0; k < VEC; ++k) sum_sq = __fmaf_rn(f[k], f[k], sum_sq);
  return sum_sq;
}

// x's chunk in R, exactly: itself, or in fp32 beside an fp32 residual stream.
template <typename R, int VEC, typename T>
__device__ __forceinline__ Vec<R, VEC> widen(const Vec<T, VEC>& x) {
  if constexpr (std::is_same_v<R, T>) {
    return x;
  } else {
    Vec<R, VEC> out;
    vec_to_floats(x, out.v);  // R is float
    return out;
  }
}

// x + residual in fp32, rounded to R: the chunk residual_out stores and the row normalizes.
template <int VEC, typename T, typename R>
__device__ __forceinline__ Vec<R, VEC> add_residual(const Vec<T, VEC>& x, const Vec<R, VEC>& residual) {
  float sum[VEC], rf[VEC];
  vec_to_floats(x, sum);
  vec_to_floats(residual, rf);
#pragma unroll
  for (int k = 0; k < VEC; ++k) sum[k] = __fadd_rn(sum[k], rf[k]);
  return vec_from_floats<R>(sum);
}

// The chunk at col of the row to normalize, in R: x_row's, or with residual_row (not nullptr) the
// sum x + residual (elements past end are zero).
template <bool ALIGNED, int VEC, typename T, typename R, typename Index>
__device__ __forceinline__ Vec<R, VEC> load_input(const T* x_row, const R* residual_row, Index col, Index end) {
  const Vec<T, VEC> x = load_vec<ALIGNED, VEC>(x_row, col, end);
  if (residual_row == nullptr) return widen<R>(x);
  return add_residual(x, load_vec<ALIGNED, VEC>(residual_row, col, end));
}

// The weight's offset (a float), or none: a zero offset the staged walks know at compile time.
struct NoWeightOffset {};
__device__ __forceinline__ float offset_weight(float w, float offset) { return __fadd_rn(w, offset); }
__device__ __forceinline__ float offset_weight(float w, NoWeightOffset) { return w; }

// y = (r * rstd) * (weight + weight_offset) for the chunk of the row at col, in fp32 before its
// rounding to T. with_weight (weight != nullptr) false: y = r * rstd; a bool, or a
// std::bool_constant that takes the test out of the chunk's code (see kWeightTestedOnce).
// round_xhat (casting_mode "llama"): r * rstd is rounded to T and back before the weight
// multiplies it. weight_offset: a float or NoWeightOffset.
template <bool ALIGNED, typename T, int VEC, typename R, typename W, typename WithWeight, typename Offset,
          typename Index>
__device__ __forceinline__ void y_floats_of(const Vec<R, VEC>& r, const W* weight, WithWeight with_weight,
                                            Offset weight_offset, bool round_xhat, Index col, Index n, float rstd,
                                            float (&y)[VEC]) {
  vec_to_floats(r, y);
#pragma unroll
  for (int k = 0; k < VEC; ++k) y[k] = __fmul_rn(y[k], rstd);
  if (round_xhat) vec_to_floats(vec_from_floats<T>(y), y);
  if (with_weight) {
    float w[VEC];
    vec_to_floats(load_vec<ALIGNED, VEC>(weight, col, n), w);
#pragma unroll
    for (int k = 0; k < VEC; ++k) y[k] = __fmul_rn(y[k], offset_weight(w[k], weight_offset));
  }
}

// f(with_weight) for with_weight = weight != nullptr: where ONCE (kWeightTestedOnce), as a
// std::bool_constant, so that f's code comes twice, with the weight's loads and without, none of
// them behind a test of its own; else as a bool, tested by each chunk.
template <bool ONCE, typename W, typename F>
__device__ __forceinline__ void test_weight_once(const W* weight, F&& f) {
  if constexpr (ONCE) {
    if (weight != nullptr) {
      f(std::true_type{});
    } else {
      f(std::false_type{});
    }
  } else {
    f(weight != nullptr);
  }
}

// y_floats_of rounded to T: the values y stores.
template <bool ALIGNED, typename T, int VEC, typename R, typename W, typename WithWeight, typename Offset,
          typename Index>
__device__ __forceinline__ Vec<T, VEC> y_of(const Vec<R, VEC>& r, const W* weight, WithWeight with_weight,
                                            Offset weight_offset, bool round_xhat, Index col, Index n, float rstd) {
  float y[VEC];
  y_floats_of<ALIGNED, T>(r, weight, with_weight, weight_offset, round_xhat, col, n, rstd, y);
  return vec_from_floats<T>(y);
}

// Rows held in registers. Block b handles row groups b, b + gridDim.x, ...; row group g is rows
// [g * P, g * P + P), P = blockDim.x / threads_per_row, thread t of the block working on row
// g * P + t / threads_per_row. Thread j = t % threads_per_row of a row holds the row's chunks
// j, j + threads_per_row, ..., (ITEMS of them; chunk c is elements [c * VEC, c * VEC + VEC)).
//
// round_xhat (casting_mode "llama") has type RoundXhat: a std::bool_constant, a template flag,
// when y is stored in T (as a runtime branch it made the unaligned 2-byte 4-Vec instantiations
// spill, ptxas -v); a bool in the fp8 epilogue, which has no such instantiation (see
// kRegisterKernelHasRoom): half the instantiations, and none spills. The looped kernel takes a
// bool.
template <typename T, typename W, typename R, typename Y, int ITEMS, bool ALIGNED, typename RoundXhat>
__global__ void __launch_bounds__(kMaxBlockThreads, 1) rms_norm_fwd_kernel(
    const T* __restrict__ x,         // [rows, n], row i at x + x_layout.offset(i)
    RowLayout x_layout,
    const R* __restrict__ residual,  // [rows, n], row i at residual + residual_layout.offset(i); or nullptr
    RowLayout residual_layout,       //   (not read unless kRegisterKernelHasRoom<T, ITEMS, ALIGNED>)
    const W* __restrict__ weight,    // [n], or nullptr for no weight
    float weight_offset,             // added to the weight
    Y* __restrict__ y,               // [rows, n], contiguous: T, or fp8 bits scaled by `scaling`
    Fp8Scaling scaling,              // Y = Fp8 only
    R* __restrict__ residual_out,    // [rows, n], contiguous; nullptr when residual is
    float* __restrict__ rstd,        // [rows], or nullptr: not stored
    int64_t rows,
    int n,                           // <= threads_per_row * ITEMS * VEC
    float eps,
    RoundXhat round_xhat,            // bool, or std::bool_constant
    int threads_per_row) {           // RowTiling::threads_per_row: a power of two <= 32, or blockDim.x
  constexpr int VEC = kVecElems<T>;
  const RowGroupPlace place = row_group_place(threads_per_row);
  // Column of this thread's first chunk, and the distance to its next one.
  const int first_col = place.lane * VEC;
  const int col_step = threads_per_row * VEC;
  // Loaded before the row, off the path from the reduction to the stores.
  const float static_scale = kQuantizes<Y> && scaling.scale != nullptr ? *scaling.scale : 1.0f;
  for (int64_t group = blockIdx.x; group * place.rows_per_block < rows; group += gridDim.x) {
    const int64_t row = group * place.rows_per_block + place.row_in_block;
    // Threads of a row past the last one still take part in the reduction (its shuffles need
    // every lane of the warp), on zeros, and store nothing.
    const bool in_range = row < rows;
    const int end = in_range ? n : 0;
    const int64_t load_row = in_range ? row : 0;
    const T* x_row = x + x_layout.offset(load_row);
    const R* residual_row = kRegisterKernelHasRoom<T, ITEMS, ALIGNED> && residual != nullptr
                                ? residual + residual_layout.offset(load_row)
                                : nullptr;

    // Every load of the row is issued before any of its values is used: x's, then the residual's.
    // Merged chunk by chunk (load_input), a chunk's branch on the residual waited for its x before
    // the next chunk's load was issued, and the forward at 1024-4096 lost 6-8 points (SASS, v0.9).
    Vec<T, VEC> x_loaded[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) x_loaded[i] = load_vec<ALIGNED, VEC>(x_row, first_col + i * col_step, end);
    Vec<R, VEC> x_chunks[ITEMS];  // with a residual, the rounded sums r
    if (residual_row != nullptr) {
      Vec<R, VEC> residual_chunks[ITEMS];
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        residual_chunks[i] = load_vec<ALIGNED, VEC>(residual_row, first_col + i * col_step, end);
      }
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) x_chunks[i] = add_residual(x_loaded[i], residual_chunks[i]);
    } else {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) x_chunks[i] = widen<R>(x_loaded[i]);
    }
    // residual_out is final before the reduction: storing it now keeps the memory system busy
    // while the block reduces, instead of doubling the burst of stores after it. In a loop of its
    // own: a store between two loads would keep the compiler from issuing the loads together.
    if (residual_row != nullptr) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        store_vec<ALIGNED>(residual_out + load_row * n, first_col + i * col_step, end, x_chunks[i]);
      }
    }
    float sum_sq = 0.0f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) sum_sq = add_squares(sum_sq, x_chunks[i]);
    const float row_rstd = rstd_of(block_reduce_sum(sum_sq, threads_per_row), n, eps);
    Y* y_row = y + row * n;
    if constexpr (kQuantizes<Y>) {
      // y formed once, in place of the row (the same registers), for its amax and its stores.
      const bool dynamic = scaling.scale == nullptr;
      Vec<T, VEC> y_chunks[ITEMS];
      float amax = 0.0f;
      const auto form_y = [&](auto with_weight) {
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
          float y_floats[VEC];
          y_floats_of<ALIGNED, T>(x_chunks[i], weight, with_weight, weight_offset, round_xhat,
                                  first_col + i * col_step, n, row_rstd, y_floats);
          if (dynamic) amax = add_abs_max<ALIGNED>(amax, y_floats, first_col + i * col_step, end);
          y_chunks[i] = vec_from_floats<T>(y_floats);
        }
      };
      test_weight_once<kWeightTestedOnce<T, W, R, ITEMS>>(weight, form_y);
      float y_scale = static_scale;  // y is multiplied by its reciprocal before the rounding
      if (dynamic) {
        y_scale = dynamic_scale(row_amax<T>(block_reduce_max(amax, threads_per_row)), scaling.scale_ub);
        if (in_range && first_col == 0) scaling.row_scale[row] = y_scale;
      }
      if (!in_range) continue;
      if (first_col == 0 && rstd != nullptr) rstd[row] = row_rstd;
      const float y_inv_scale = inverse_scale(y_scale);
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) store_y<ALIGNED>(y_row, first_col + i * col_step, n, y_chunks[i], y_inv_scale);
    } else {
      if (!in_range) continue;
      if (first_col == 0 && rstd != nullptr) rstd[row] = row_rstd;
      const auto store_row = [&](auto with_weight) {
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
          const int col = first_col + i * col_step;
          store_y<ALIGNED>(y_row, col, n,
                           y_of<ALIGNED, T>(x_chunks[i], weight, with_weight, weight_offset, round_xhat, col, n,
                                            row_rstd),
                           1.0f);
        }
      };
      test_weight_once<kWeightTestedOnce<T, W, R, ITEMS>>(weight, store_row);
    }
  }
}

// Rows too long for registers, on kLoopedBlockThreads threads a block; also, on
// threads_per_row threads, the rows rms_norm_fwd_kernel has no room to add a residual to or to
// quantize (see kRegisterKernelHasRoom); and, on FwdConfig::staged_threads, the long rows without a
// residual. Block b handles rows b, b + gridDim.x, ...; thread t walks the row's chunks t,
// t + blockDim.x, ... twice: sum of squares, then scaling (three times for a dynamic fp8 scale:
// sum of squares, amax, then scaling). With a residual, every walk forms r = x + residual from the
// inputs (the same bits each time), the last one also storing it to residual_out.
//
// STAGED (aligned rows without a residual): the thread first copies its chunks to shared memory
// with cp.async, and every walk reads them from there, not from L2 and DRAM; a dynamic fp8 scale's
// walk writes y back in their place, for the stores to read. Each thread reads back only what it
// wrote, so no barrier guards the stage but the one before the next row's copies. The same walks in
// the same order: the same bits as unstaged on as many threads.
//
// CLUSTERED (rows without a residual over kFwdClusterMinRowBytes, sm_90): a row is cut into
// gridDim.x slices of slice_n columns, one a block of a cluster along x, and the rows are
// blockIdx.y, blockIdx.y + gridDim.y, ...; each block walks (and stages) only its slice, and its
// sums are combined across the cluster through distributed shared memory (cluster_reduce). A row
// then has as many blocks as it needs to fit in shared memory, where one block a row of 128 KB
// leaves one block an SM, idle between its copies and its stores.
template <typename T, typename W, typename R, typename Y, bool ALIGNED, bool STAGED, bool CLUSTERED>
__global__ void __launch_bounds__(kLoopedBlockThreads, 1) rms_norm_fwd_looped_kernel(
    const T* __restrict__ x,         // [rows, n], row i at x + x_layout.offset(i)
    RowLayout x_layout,
    const R* __restrict__ residual,  // [rows, n], row i at residual + residual_layout.offset(i); or nullptr
    RowLayout residual_layout,
    const W* __restrict__ weight,    // [n], or nullptr for no weight
    float weight_offset,             // added to the weight
    Y* __restrict__ y,               // [rows, n], contiguous: T, or fp8 bits scaled by `scaling`
    Fp8Scaling scaling,              // Y = Fp8 only
    R* __restrict__ residual_out,    // [rows, n], contiguous; nullptr when residual is
    float* __restrict__ rstd,        // [rows], or nullptr: not stored
    int64_t rows,
    int64_t n,
    int64_t slice_n,                 // CLUSTERED: the columns of a block's slice, a multiple of VEC
    float eps,
    bool round_xhat) {
  static_assert(!STAGED || (ALIGNED && std::is_same_v<R, T>), "staged rows are aligned and have no residual");
  constexpr int VEC = kVecElems<T>;
  constexpr int kUnroll = STAGED ? kStagedUnroll : kLoopedUnroll;
  // STAGED: the chunks of the block's columns in order (dynamic shared memory, up to
  // kFwdStagedMaxRowBytes), moved as 16-byte words (LDS.128 / STS.128: copied as a Vec, a chunk
  // went element by element).
  extern __shared__ uint4 stage[];
  // Unsigned 32-bit columns where the row is staged (at most kFwdStagedMaxRowBytes): half the
  // address arithmetic of 64-bit ones, and col / VEC a shift (signed, four instructions), in a
  // kernel whose instructions bound its speed.
  using Index = std::conditional_t<STAGED, unsigned, int64_t>;
  const Index row_n = static_cast<Index>(n);
  // The block's columns: [slice_start, slice_end), the whole row unless CLUSTERED (a staged row,
  // at most 16 slices of kFwdStagedMaxRowBytes, has 32-bit columns too).
  const int64_t slice_start = CLUSTERED ? int64_t{blockIdx.x} * slice_n : 0;
  const int64_t slice_end = CLUSTERED ? std::min(n, slice_start + slice_n) : n;
  const Index first_col = static_cast<Index>(slice_start + int64_t{threadIdx.x} * VEC);
  const Index col_step = static_cast<Index>(blockDim.x) * VEC;
  const Index end_col = static_cast<Index>(slice_end);
  const int64_t first_row = CLUSTERED ? blockIdx.y : blockIdx.x;
  const int64_t row_step = CLUSTERED ? gridDim.y : gridDim.x;
  // CLUSTERED: the row's sums and maxima over the cluster (see cluster_reduce).
  __shared__ float cluster_slots[2][kMaxClusterBlocks];
  __shared__ uint64_t cluster_barriers[2];
  ClusterReduction cluster{};
  if constexpr (CLUSTERED) cluster = start_cluster_reduction(cluster_slots, cluster_barriers);
  const auto row_sum = [&](float block_total) {
    return CLUSTERED ? cluster_reduce(cluster, block_total, SumOp{}) : block_total;
  };
  const auto row_max = [&](float block_max) {
    return CLUSTERED ? cluster_reduce(cluster, block_max, NanMaxOp{}) : block_max;
  };
  const bool writes_row_values = threadIdx.x == 0 && (!CLUSTERED || blockIdx.x == 0);  // rstd, row scale
  const auto stage_index = [&](Index col) { return (col - static_cast<Index>(slice_start)) / VEC; };
  const auto load_staged = [&](auto col) { return load_stage_word<T, VEC>(&stage[stage_index(col)]); };
  const float static_scale = kQuantizes<Y> && scaling.scale != nullptr ? *scaling.scale : 1.0f;
  // w: the weight, or a constant null; round (casting_mode "llama") and dynamic (an fp8 scale per
  // row): bools, or std::bool_constants. Staged rows are walked by code unswitched on all three: as
  // runtime flags they cost a uniform branch or two a chunk, a tenth of the staged quantizing
  // forward's instructions (ncu, bench/NOTES.md v0.8), in a kernel that instructions bound.
  const auto walk_rows = [&](const W* w, auto w_offset, auto round, auto dynamic) {
    // Only staged rows get dynamic as a std::true_type; elsewhere it is a runtime bool.
    constexpr bool kStagedDynamic = STAGED && std::is_same_v<decltype(dynamic), std::true_type>;
    for (int64_t row = first_row; row < rows; row += row_step) {
      const T* x_row = x + x_layout.offset(row);
      // Staged rows have none: a constant null lets the compiler drop the residual's branches.
      const R* residual_row = !STAGED && residual != nullptr ? residual + residual_layout.offset(row) : nullptr;
      if constexpr (STAGED) {
        for (Index col = first_col; col < end_col; col += col_step) {
          copy_async_16(&stage[stage_index(col)], x_row + col);
        }
        // The amax walk's weight, brought to L1 while the copies are in flight: between two block
        // reductions, a chunk of it that L1 no longer holds stalls the whole block. H100, bf16,
        // rms_norm_quant dynamic: +0.5 points of copy at 16384 and 32768 (bench/NOTES.md v0.31).
        if constexpr (kStagedDynamic) {
          if (w != nullptr) {
            for (Index col = first_col; col < end_col; col += col_step) prefetch_l1(w + col);
          }
        }
        wait_async_copies();
      }
      const auto input_at = [&](Index col) {
        if constexpr (STAGED) {
          return load_staged(col);
        } else {
          return load_input<ALIGNED, VEC>(x_row, residual_row, col, row_n);
        }
      };
      float sum_sq = 0.0f;
#pragma unroll(kUnroll)
      for (Index col = first_col; col < end_col; col += col_step) sum_sq = add_squares(sum_sq, input_at(col));
      const float row_rstd = rstd_of(row_sum(block_reduce_sum(sum_sq, blockDim.x)), n, eps);
      float y_scale = static_scale;  // y is multiplied by its reciprocal before the rounding
      if (dynamic) {
        float amax = 0.0f;
#pragma unroll(kUnroll)
        for (Index col = first_col; col < end_col; col += col_step) {
          float y_floats[VEC];
          y_floats_of<ALIGNED, T>(input_at(col), w, w != nullptr, w_offset, round, col, row_n, row_rstd, y_floats);
          amax = add_abs_max<ALIGNED>(amax, y_floats, col, row_n);
          if constexpr (STAGED) {
            const Vec<T, VEC> y_chunk = vec_from_floats<T>(y_floats);
            memcpy(&stage[stage_index(col)], &y_chunk, sizeof(y_chunk));
          }
        }
        y_scale = dynamic_scale(row_amax<T>(row_max(block_reduce_max(amax, blockDim.x))), scaling.scale_ub);
        if (writes_row_values) scaling.row_scale[row] = y_scale;
      }

      if (writes_row_values && rstd != nullptr) rstd[row] = row_rstd;
      const float y_inv_scale = kQuantizes<Y> ? inverse_scale(y_scale) : 1.0f;
      Y* y_row = y + row * n;
      if constexpr (kStagedDynamic) {
        // y, from the amax walk; one branch a row picks the store (a runtime flag costs a branch a chunk).
        const auto store_staged_y = [&](auto no_l1_allocate) {
#pragma unroll(kUnroll)
          for (Index col = first_col; col < end_col; col += col_step) {
            store_y<ALIGNED, decltype(no_l1_allocate)::value>(y_row, col, row_n, load_staged(col), y_inv_scale);
          }
        };
        if (n > kDynamicYNoL1AllocateAboveN) {
          store_staged_y(std::true_type{});
        } else {
          store_staged_y(std::false_type{});
        }
      } else {
#pragma unroll(kUnroll)
        for (Index col = first_col; col < end_col; col += col_step) {
          const Vec<R, VEC> in = input_at(col);
          if (residual_row != nullptr) store_vec<ALIGNED>(residual_out + row * n, col, row_n, in);
          store_y<ALIGNED>(y_row, col, row_n,
                           y_of<ALIGNED, T>(in, w, w != nullptr, w_offset, round, col, row_n, row_rstd), y_inv_scale);
        }
      }
      // The next row's copies land where this row's last reads were: those must be done.
      if (STAGED && row + row_step < rows) __syncthreads();
    }
  };
  const bool dynamic = kQuantizes<Y> && scaling.scale == nullptr;
  if constexpr (STAGED) {
    const auto with_dynamic = [&](const W* w, auto w_offset, auto round) {
      if (kQuantizes<Y> && dynamic) {
        walk_rows(w, w_offset, round, std::true_type{});
      } else {
        walk_rows(w, w_offset, round, std::false_type{});
      }
    };
    const auto with_round = [&](const W* w, auto w_offset) {
      if (round_xhat) {
        with_dynamic(w, w_offset, std::true_type{});
      } else {
        with_dynamic(w, w_offset, std::false_type{});
      }
    };
    // A zero offset (every Llama-style weight; w + -0 is w, bit for bit) walked without its add:
    // one instruction of the ~11 an element of the dynamic scale's walks. H100, bf16,
    // rms_norm_quant: dynamic +0.7 to +1.0 points of copy at 16384 and 32768, static +0.2 to +0.5
    // (bench/NOTES.md v0.31).
    if (weight == nullptr) {
      with_round(static_cast<const W*>(nullptr), NoWeightOffset{});
    } else if (weight_offset == 0.0f) {
      with_round(weight, NoWeightOffset{});
    } else {
      with_round(weight, weight_offset);
    }
  } else {
    walk_rows(weight, weight_offset, round_xhat, dynamic);
  }
}

// ---------------------------------------------------------------------------------------------
// Launch
// ---------------------------------------------------------------------------------------------

// rms_norm_fwd (Y = T) and rms_norm_quant_fwd (Y = Fp8): rms_norm.h documents the arguments.
template <typename T, typename W, typename R, typename Y>
cudaError_t launch_rms_norm_fwd(const T* x, RowLayout x_layout, const R* residual, RowLayout residual_layout,
                                const W* weight, float weight_offset, Y* y, Fp8Scaling scaling, R* residual_out,
                                float* rstd, int64_t rows, int64_t n, float eps, bool round_xhat,
                                cudaStream_t stream) {
  static_assert(std::is_same_v<R, T> || std::is_same_v<R, float>, "the residual has x's type, or float");
  static_assert(std::is_same_v<Y, T> || kQuantizes<Y>, "y is stored in x's type, or quantized to fp8");
  if (rows < 0 || n < 0 || (residual == nullptr) != (residual_out == nullptr)) return cudaErrorInvalidValue;
  // An empty row still has a dynamic fp8 scale, amax 0 giving the floor: the kernels write it.
  if (rows == 0 || (n == 0 && scaling.row_scale == nullptr)) return cudaSuccess;
  constexpr int VEC = kVecElems<T>;
  const FwdConfig config = fwd_config(n, sizeof(T));
  // w + (-0) is w for every w, -0 included, while w + (+0) turns -0 into +0: a zero offset passed
  // as -0 leaves y bitwise what it is without one.
  const float offset = weight_offset == 0.0f ? -0.0f : weight_offset;
  // Whole Vecs can be read and written when every row starts on a 16-byte boundary (an aligned
  // base, and every stride of the layout, whatever the row's index, a multiple of the Vec's
  // alignment in elements: VEC, or 4 for an fp32 residual beside 16-bit x) and n is a multiple of
  // VEC (then no chunk straddles the row's end; an fp8 row of y then starts on a multiple of its
  // VEC-byte Vec); the weight's Vec needs its own alignment (16 bytes, or 8 for the 4 bf16/half
  // weights of a float row chunk).
  const bool aligned =
      n % VEC == 0 && is_aligned(x, kVectorBytes) && x_layout.strides_multiple_of(VEC) &&
      is_aligned(y, kVectorBytes) &&
      (residual == nullptr ||
       (is_aligned(residual, kVectorBytes) && residual_layout.strides_multiple_of(kVecAlignElems<R, VEC>) &&
        is_aligned(residual_out, kVectorBytes))) &&
      (weight == nullptr || is_aligned(weight, alignof(Vec<W, VEC>)));
  return dispatch_aligned(aligned, [&](auto aligned_tag) {
    constexpr bool ALIGNED = decltype(aligned_tag)::value;
    const auto launch_looped = [&](int block_threads, auto staged_tag) {
      constexpr bool STAGED = decltype(staged_tag)::value;
      const auto kernel = rms_norm_fwd_looped_kernel<T, W, R, Y, ALIGNED, STAGED, false>;
      int stage_bytes = 0;
      if constexpr (STAGED) {
        stage_bytes = static_cast<int>(n * sizeof(T));  // n is a multiple of VEC
        int max_shared = 0;
        cudaError_t status = max_shared_bytes_per_sm(&max_shared);
        if (status == cudaSuccess) {
          const int percent =
              shared_capacity_percent(stage_bytes, kStagedBlocksPerSm, kStagedMinSharedBytes, max_shared);
          status = set_stage_attributes(kernel, stage_bytes, percent);
        }
        if (status != cudaSuccess) return status;
      }
      kernel<<<std::min(rows, kMaxGridX), block_threads, stage_bytes, stream>>>(
          x, x_layout, residual, residual_layout, weight, offset, y, scaling, residual_out, rstd, rows, n, n, eps,
          round_xhat);
      return cudaGetLastError();
    };
    // A cluster of config.cluster_blocks blocks a row, along x; the rows along y.
    const auto launch_clustered = [&](auto staged_tag) {
      constexpr bool STAGED = decltype(staged_tag)::value;
      const auto kernel = rms_norm_fwd_looped_kernel<T, W, R, Y, ALIGNED, STAGED, true>;
      const int stage_bytes = STAGED ? static_cast<int>(config.slice_n * sizeof(T)) : 0;
      cudaError_t status = cudaSuccess;
      if constexpr (STAGED) status = set_stage_attributes(kernel, stage_bytes, kFwdClusterCarveoutPercent);
      if (status == cudaSuccess && config.cluster_blocks > 8) {
        status = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
      }
      if (status != cudaSuccess) return status;
      cudaLaunchConfig_t launch = {};
      launch.gridDim = dim3(config.cluster_blocks, static_cast<unsigned>(std::min(rows, kMaxGridY)), 1);
      launch.blockDim = dim3(config.cluster_threads, 1, 1);
      launch.dynamicSmemBytes = stage_bytes;
      launch.stream = stream;
      cudaLaunchAttribute cluster_dims;
      cluster_dims.id = cudaLaunchAttributeClusterDimension;
      cluster_dims.val.clusterDim.x = config.cluster_blocks;
      cluster_dims.val.clusterDim.y = 1;
      cluster_dims.val.clusterDim.z = 1;
      launch.attrs = &cluster_dims;
      launch.numAttrs = 1;
      return cudaLaunchKernelEx(&launch, kernel, x, x_layout, residual, residual_layout, weight, offset, y, scaling,
                                residual_out, rstd, rows, n, config.slice_n, eps, round_xhat);
    };
    if (config.cluster_blocks > 0 && residual == nullptr &&
        compiled_with_clusters(rms_norm_fwd_looped_kernel<T, W, R, Y, ALIGNED, false, true>)) {
      if constexpr (ALIGNED && std::is_same_v<R, T>) {
        if (config.slice_n * static_cast<int64_t>(sizeof(T)) <= kFwdClusterStagedMaxSliceBytes) {
          return launch_clustered(std::true_type{});
        }
      }
      return launch_clustered(std::false_type{});
    }
    if (config.staged_threads > 0 && residual == nullptr) {
      if constexpr (ALIGNED && std::is_same_v<R, T>) {
        return launch_looped(config.staged_threads, std::true_type{});
      } else {
        return launch_looped(config.staged_threads, std::false_type{});
      }
    }
    if (config.tiling.items == 0) return launch_looped(config.block_threads, std::false_type{});
    return dispatch_items<kFwdMaxItems>(config.tiling.items, [&](auto items_tag) {
      constexpr int ITEMS = decltype(items_tag)::value;
      // threads_per_row is a multiple of 32 where there is no room (ITEMS > 1). On a block of
      // that many threads the looped kernel has each thread sum the chunks rms_norm_fwd_kernel
      // gives it, in the same order, and the block reduce them the same way: the same bits, for
      // x and residual read twice (three times for a dynamic fp8 scale).
      constexpr bool kHasRoom = kRegisterKernelHasRoom<T, ITEMS, ALIGNED>;
      if constexpr (!kHasRoom && kQuantizes<Y>) {
        return launch_looped(config.tiling.threads_per_row, std::false_type{});
      } else {
        if (!kHasRoom && residual != nullptr) return launch_looped(config.tiling.threads_per_row, std::false_type{});
        const int64_t grid = std::min(ceil_div(rows, config.rows_per_block), kMaxGridX);
        const auto launch_registers = [&](auto round_xhat_arg) {
          rms_norm_fwd_kernel<T, W, R, Y, ITEMS, ALIGNED, decltype(round_xhat_arg)>
              <<<grid, config.block_threads, 0, stream>>>(x, x_layout, residual, residual_layout, weight, offset,
                                                          y, scaling, residual_out, rstd, rows, static_cast<int>(n),
                                                          eps, round_xhat_arg, config.tiling.threads_per_row);
          return cudaGetLastError();
        };
        if constexpr (kQuantizes<Y>) {
          return launch_registers(round_xhat);
        } else {
          return dispatch_bool(round_xhat, launch_registers);
        }
      }
    });
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The launchers of rms_norm.h: y stored in T (rms_norm_fwd_<type>.cu) or quantized to fp8 e4m3fn
// (rms_norm_quant_fwd_<type>.cu), each file instantiating them for one type of x, so that a
// build compiles the types in parallel.
// ---------------------------------------------------------------------------------------------

template <typename T, typename W, typename R>
cudaError_t rms_norm_fwd(const T* x, RowLayout x_layout, const R* residual, RowLayout residual_layout,
                         const W* weight, float weight_offset, T* y, R* residual_out, float* rstd, int64_t rows,
                         int64_t n, float eps, bool round_xhat, cudaStream_t stream) {
  return launch_rms_norm_fwd(x, x_layout, residual, residual_layout, weight, weight_offset, y, Fp8Scaling{},
                             residual_out, rstd, rows, n, eps, round_xhat, stream);
}

template <typename T, typename W, typename R>
cudaError_t rms_norm_quant_fwd(const T* x, RowLayout x_layout, const R* residual, RowLayout residual_layout,
                               const W* weight, float weight_offset, const float* scale, const float* scale_ub,
                               uint8_t* y_q, R* residual_out, float* row_scale, int64_t rows, int64_t n, float eps,
                               bool round_xhat, cudaStream_t stream) {
  static_assert(sizeof(Fp8) == sizeof(uint8_t), "y_q holds one byte per fp8 value");
  const bool dynamic = scale == nullptr;
  if (dynamic != (row_scale != nullptr) || (!dynamic && scale_ub != nullptr)) return cudaErrorInvalidValue;
  return launch_rms_norm_fwd(x, x_layout, residual, residual_layout, weight, weight_offset,
                             reinterpret_cast<Fp8*>(y_q), Fp8Scaling{scale, scale_ub, row_scale}, residual_out,
                             static_cast<float*>(nullptr), rows, n, eps, round_xhat, stream);
}

#define RMSNORM_INSTANTIATE_FWD(T, W, R)                                                                        \
  template cudaError_t rms_norm_fwd<T, W, R>(const T*, RowLayout, const R*, RowLayout, const W*, float, T*, R*, \
                                             float*, int64_t, int64_t, float, bool, cudaStream_t);
// Every weight type for x of type T and a residual of type R.
#define RMSNORM_INSTANTIATE_FWD_ALL_W(T, R) \
  RMSNORM_INSTANTIATE_FWD(T, float, R)      \
  RMSNORM_INSTANTIATE_FWD(T, __half, R)     \
  RMSNORM_INSTANTIATE_FWD(T, __nv_bfloat16, R)
#define RMSNORM_INSTANTIATE_QUANT_FWD(T, W, R)                                                               \
  template cudaError_t rms_norm_quant_fwd<T, W, R>(const T*, RowLayout, const R*, RowLayout, const W*, float, \
                                                   const float*, const float*, uint8_t*, R*, float*, int64_t,  \
                                                   int64_t, float, bool, cudaStream_t);
// Every weight type for x of type T and a residual of type R.
#define RMSNORM_INSTANTIATE_QUANT_FWD_ALL_W(T, R) \
  RMSNORM_INSTANTIATE_QUANT_FWD(T, float, R)      \
  RMSNORM_INSTANTIATE_QUANT_FWD(T, __half, R)     \
  RMSNORM_INSTANTIATE_QUANT_FWD(T, __nv_bfloat16, R)

}  // namespace rmsnorm
