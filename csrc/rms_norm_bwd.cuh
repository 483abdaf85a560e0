// RMSNorm backward, per row: xhat = x * rstd, g = dy * (weight + weight_offset),
// c = sum(xhat * g) / n, dx = (g - xhat * c) * rstd [+ dresidual_out]; and dweight = sum over rows
// of dy * xhat. dresidual_out, the gradient arriving on add_rms_norm's residual_out, is added in
// fp32 before dx's one rounding to X. It is a runtime option (a null pointer: the same branch for
// the whole grid), read where dx is formed, after the row's reduction, so that it is not held in
// registers beside the row's x and dy. A template flag would double the instantiations and save
// no spill: with the runtime branch no kernel spills (ptxas -v).
//
// x, dresidual_out and dx have type X, dy has type T: X is T, or float beside a 16-bit T when
// add_rms_norm kept an fp32 residual stream (x is then its fp32 residual_out, dy the gradient of
// its y, which had T). Vectors and the launch configuration follow T, the narrower type: a chunk
// of VEC = kVecElems<T> elements is one 16-byte load of dy and, for a float x, two of x.
//
// dweight is reduced without atomics, in an order fixed by (rows, n, sizeof(T), num_sms):
// every block of the first pass writes one fp32 row of partial sums to the workspace,
// [partial_rows, n], and rms_norm_bwd_dweight_reduce_kernel adds those rows per column in a
// fixed order. Rows that fit in registers:
//   rms_norm_bwd_kernel: a persistent grid of partial_rows blocks; each thread owns the same
//     columns of every row it visits, holds the row's x and dy there in registers, writes dx,
//     and keeps that column's dweight sums in fp32 registers across its rows.
// Rows too long for that:
//   rms_norm_bwd_staged_kernel (aligned rows up to kBwdStagedMaxRowBytes, x of dy's type): the
//     same persistent grid, each row's x and dy copied to shared memory and walked from there;
//   rms_norm_bwd_split_kernel (longer rows): one-warp blocks, one column chunk a row each, all
//     resident; each stores its chunk's share of c, and writes dx once every chunk's is there;
//   otherwise two passes over x and dy: rms_norm_bwd_row_dot_kernel, one block per row, computes
//     c, written to the workspace; rms_norm_bwd_columns_kernel, column-parallel over slices of
//     rows, writes dx from c and one dweight partial row per slice.
// The configuration depends on n and sizeof(T) only, and the aligned and unaligned paths add in
// the same order, so dx of a row never depends on the other rows, and dweight is bitwise
// reproducible for given (rows, n, num_sms).
#pragma once

#include <algorithm>

#include "common.cuh"
#include "rms_norm.h"

namespace rmsnorm {
namespace {

// ---------------------------------------------------------------------------------------------
// Launch configuration
// ---------------------------------------------------------------------------------------------

// fp32 dweight sums a thread of rms_norm_bwd_kernel keeps in registers, ITEMS * VEC: ITEMS <= 2
// for half/bf16, <= 4 for float. Beside them the thread holds ITEMS Vecs of x and of dy. 32
// sums spilled under the 128-register budget below.
constexpr int kBwdMaxAccumulators = 16;
// rms_norm_bwd_kernel blocks have at most 512 threads, so __launch_bounds__(512, 1) lets ptxas
// use up to 128 registers a thread; the largest tilings take 80 to 120 (ptxas -v: no spills,
// checked by tests/test_cuda_compile.py). Rows longer than 512 threads x 16 elements (8K) go
// to the two-pass column path (rms_norm_bwd_row_dot_kernel, rms_norm_bwd_columns_kernel).
constexpr int kBwdMaxBlockThreads = 512;
// What that register budget guarantees resident on an SM (64K registers / 128): the persistent
// grid has num_sms * (kBwdResidentThreadsPerSm / block_threads) blocks, a number derived from
// constants, not queried, so the partial count (and dweight's bits) is the same on every device
// with the same SM count.
constexpr int kBwdResidentThreadsPerSm = 65536 / 128;
// Threads of rms_norm_bwd_kernel that keep at most kBwdFewAccumulators dweight sums (one Vec of a
// 16-bit row, two of a float row) take 42-64 registers (ptxas -v, sm_90): an SM could hold 1024.
// The persistent grid counts this many threads an SM for them, and their launch bound asks for as
// many (at 1024, two 512-thread blocks: 64 registers at most). At 512, as for every other tiling,
// a 1-item row's thread has one 16-byte load of x and one of dy in flight, 16 KB an SM. H100, bf16,
// backward alone, % of copy (bench/tune_cuda.py, bench/NOTES.md v0.14): 512 -> 1024 took N = 64-256
// from 66-68 to 88 and 1024 / 2048 from 58 / 55 to 79 / 78; the 2-item widths did not move.
constexpr int kBwdFewAccumulators = 8;
constexpr int kBwdFewAccumulatorsResidentThreadsPerSm = 1024;

// The threads an SM holds of rms_norm_bwd_kernel whose threads keep `accumulators` dweight sums.
constexpr int bwd_resident_threads_per_sm(int accumulators) {
  return accumulators <= kBwdFewAccumulators ? kBwdFewAccumulatorsResidentThreadsPerSm : kBwdResidentThreadsPerSm;
}
// One row per block aims at this many threads. First guess, to be tuned by the benchmark.
constexpr int kBwdPreferredThreadsPerRow = 256;
// Vecs a thread takes of a row of at most 32 (tile_row's sub_warp_items). 2, as the forward's
// kFwdSubWarpItems, took bf16 N = 64-256 from 66-68 to 85-86% of copy, where 1024 threads an SM
// (above) alone took them to 88 (bench/NOTES.md v0.14): 1.
constexpr int kBwdSubWarpItems = 1;
// Rows of at most one warp share a block of this many threads (256 / threads_per_row rows);
// their dweight sums are combined through rows_per_block * n floats of shared memory, at most
// 256 threads x 16 sums x 4 bytes = 16 KiB. First guess, to be tuned by the benchmark.
constexpr int kBwdSubWarpBlockThreads = 256;
// Aligned rows too long for registers, of dy's and x's type, up to this many bytes a tensor go to
// rms_norm_bwd_staged_kernel (x and dy copied to shared memory: 128 KB at most a block), on
// ceil(chunks / kBwdStagedChunksPerThread) threads rounded up to a warp (512 at most), each
// summing dweight for its 8 chunks in 64 fp32 registers. H100, bf16, backward alone: 50 -> 80% of
// copy at 16384 and 38 -> 87% at 32768 against the two passes (bench/NOTES.md v0.10).
constexpr int64_t kBwdStagedMaxRowBytes = 64 * 1024;
constexpr int kBwdStagedChunksPerThread = 8;
static_assert(kBwdStagedMaxRowBytes / kVectorBytes <= int64_t{kBwdStagedChunksPerThread} * kBwdMaxBlockThreads,
              "a staged row's chunks must fit the staged kernel's largest block");
// Rows of at least this many bytes a tensor take the staged path (and, unaligned, the two passes)
// even where their tiling fits rms_norm_bwd_kernel's registers. There a row whose tiling leaves a
// block few threads holds an SM with few loads in flight: 5120 bf16 is 320 threads of 2 Vecs, one
// block an SM of the persistent grid, 56% of copy (bench/results/h100, 476a9bd), where the staged
// kernel's 96-thread blocks, five an SM, each stage their rows whole. H100, bf16, backward alone
// (bench/tune_cuda.py, bench/NOTES.md v0.14 and v0.20): 56 -> 85% of copy at 5120, 74 -> 82% at
// 8192; from 2 KB, 79 -> 84% at 1024 and 78 -> 86% at 2048 (with the short rows' chunks below).
// Rows of these widths that are not 16-byte aligned now take the two passes (not timed at these
// widths; 39-51% beyond 64 KB), so that dx has the same bits wherever the row sits.
constexpr int64_t kBwdStagedMinRowBytes = 2 * 1024;
// Staged rows of at most kBwdStagedShortRowMaxBytes a tensor spread over more threads, this many
// chunks each (the kernel walks at most kBwdStagedChunksPerThread; fewer where its block is wider).
// H100, bf16, backward alone (bench/NOTES.md v0.20): 4 chunks, 80 -> 87% at 4096; 2048 on 64
// threads, not 32. 5120 lost 3 points with 4 and 8192 gained 1-2, within the spread: 8 KB.
constexpr int64_t kBwdStagedShortRowMaxBytes = 8 * 1024;
constexpr int kBwdStagedShortRowChunksPerThread = 4;
// Short staged rows of at least this many bytes keep g = dy * w, formed for c in the first walk,
// in registers (4 chunks: 32 floats) for dx in the second, which then neither reads dy from the
// stage nor loads, converts and offsets the weight again: ncu has the staged kernel issue-bound,
// 32-38 instructions an element against Triton's 17-18 (bench/NOTES.md v0.21). H100, bf16,
// backward alone (v0.22): 86 -> 91% of copy at 4096, level at 2048, but 85 -> 80% at 1024 (2 KB
// rows, one-warp blocks): from 4 KB. Rows of 8 chunks a thread have no registers for it.
constexpr int64_t kBwdStagedKeptGradMinRowBytes = 4 * 1024;
static_assert(kBwdStagedShortRowChunksPerThread <= kBwdStagedChunksPerThread &&
                  kBwdStagedShortRowMaxBytes / kVectorBytes <=
                      int64_t{kBwdStagedShortRowChunksPerThread} * kBwdMaxBlockThreads,
              "a short staged row's chunks must fit the staged kernel's walk and its largest block");
// rms_norm_bwd_columns_kernel: 256 threads a block, one Vec of columns each, 2 blocks resident
// per SM (its __launch_bounds__ then allows 128 registers a thread: at 3 blocks, 80 registers,
// the unaligned half path with fp32 weights spilled on sm_80), and the number of row slices aims
// at filling them. Each thread has 2 rows of x and dy loads in flight (the unroll of its row
// loop). First guesses, to be tuned by the benchmark.
constexpr int kColumnsBlockThreads = 256;
constexpr int kColumnsBlocksPerSm = 2;
constexpr int kColumnsRowUnroll = 2;
// dx is stored past L1 (store_vec's NO_L1_ALLOCATE), which then keeps what the kernels read
// from it row after row: the weight. H100, bf16, backward alone, % of copy (bench/tune_cuda.py,
// bench/NOTES.md v0.31-v0.32), hint against none: 87 against 75-78 at 16384 (the staged kernel),
// 87.8 against 86.5 at 32768, 88 against 84-86 at 2048, 85.5 against 82 at 8192, 88.7 against 87 at
// 12288, 92 against 89-91 at 4096, level at 65536: no width reads better without it.
constexpr bool kDxNoL1Allocate = true;
// rms_norm_bwd_dweight_reduce_kernel: a warp reads 32 consecutive columns of a partial row (128
// coalesced bytes); 8 warps split the partial rows of those columns 8 ways, so that each thread
// has a few independent loads in flight, then their 8 sums are added in warp order.
constexpr int kReduceColumns = kWarpSize;
constexpr int kReduceSlices = 8;
// Loads of partial rows a thread of it keeps in flight (its loop's unroll; the adds stay in order). At
// 4 (8 slices of 4: 32 loads of 128 bytes in flight an SM at N = 4096) the reduction took 6.2 us of
// bf16 N = 4096's backward and 11.3 of 8192's, where its 4-17 MB of partials take 1.5-6 us at copy
// speed (bench/kernel_trace.py). 16: the backward +0.2 to +0.8 points at 512-16384 in bf16, +0.1 to
// +2.2 in fp32; 32 slices lost 1 point at 16384 (bench/NOTES.md v0.50).
constexpr int kReduceUnroll = 16;
// rms_norm_bwd_split_kernel: rows over kBwdStagedMaxRowBytes, in column chunks of one warp each,
// kBwdSplitItems Vecs a thread (32 bf16 elements: 1024 a chunk, Triton's BWD_SPLIT_NARROW_CHUNK_N),
// with the row of the previous iteration held in registers beside this one's: at most 168
// registers under the launch bound of kBwdSplitBlocksPerSm blocks an SM (Triton's split backward
// ran 166). Every block of the grid must be resident at once, and the launch bound guarantees this
// many an SM, so the grid (and dweight's partial rows) follows from the SM count, not from a query.
// H100, bf16, backward alone, % of copy at 65536 / 131072 / 262144 (bench/tune_cuda.py,
// bench/NOTES.md v0.36): 12 blocks an SM 78.6 / 77.9 / 72.6, 14 73.6 / 71.5 / 66.6; 10 68.4 / 66.8 /
// 62.3 in the next run, beside 12's 76.0 / 74.0 / 69.0.
constexpr int kBwdSplitItems = 4;
constexpr int kBwdSplitChunkVecs = kWarpSize * kBwdSplitItems;
constexpr int kBwdSplitBlocksPerSm = 12;
// Rows whose chunks leave fewer row groups than this take the two passes. H100, bf16, backward alone
// (bench/tune_cuda.py, bench/NOTES.md v0.36), split against two passes: 59.7 against 49.8% of copy at
// 2^19 (3 groups), 37.9 against 48.6% at 2^20 (1 group: every block of the grid waits for every
// other at each row).
constexpr int kBwdSplitMinGroups = 2;
// Shares of c each lane has in flight while it waits for a row's (split_row_c).
constexpr int kBwdSplitPollBatch = 4;
// Whether rms_norm_bwd_split_kernel<T, W, ...> holds a block's chunk of the weight in registers (as
// W, for all its rows) rather than loading it (from L1) for each row's sum and again for its dx. H100,
// bf16, backward alone, % of copy (bench/tune_cuda.py, bench/NOTES.md v0.36): 81.7 / 80.3 / 75.4 / 65.1
// against 78.0 / 76.7 / 70.2 / 58.5 at 65536 / 131072 / 262144 / 2^19. Where registers allow it: a
// bf16 weight (widened to fp32 by a shift), or an fp32 row; half weights (converted) and fp32 weights
// beside 16-bit rows (32 registers) spilled 4-12 bytes under the launch bound (ptxas -v, sm_80, sm_90).
template <typename T, typename W>
constexpr bool kBwdSplitHoldsWeight = std::is_same_v<W, __nv_bfloat16> || sizeof(T) == 4;
// Whether rms_norm_bwd_split_kernel<T, W, X, ALIGNED> holds the previous row's chunk in registers
// until its c is known, or loads it again then (from L1 or L2: the block read it one row earlier).
// Held, aligned 16-bit rows take 136-158 registers and fp32 rows 126-143 (ptxas -v, sm_90, with the
// weight held where kBwdSplitHoldsWeight); 16-bit rows arrive one element a register unaligned, and
// an fp32 x beside 16-bit dy takes twice the registers: held, those spilled 4-72 bytes under the 168
// of the launch bound.
template <typename T, typename X, bool ALIGNED>
constexpr bool kBwdSplitHoldsRow = std::is_same_v<X, T> && (ALIGNED || sizeof(T) == 4);

struct BwdConfig {
  RowTiling tiling;    // tiling.items == 0: the row does not fit, row-dot + columns kernels
  int rows_per_block;  // rows handled at once by a block, each by tiling.threads_per_row threads
  int block_threads;
  // > 0 (tiling.items == 0 only): aligned rows with x of dy's type go to rms_norm_bwd_staged_kernel
  // on this many threads, and the others' row-dot kernel takes as many, so that c has the same bits.
  int staged_threads;
  int staged_chunks;       // chunks a thread of the staged kernel walks at most (its CHUNKS)
  bool staged_keeps_grad;  // the staged kernel keeps g between its walks (its KEEP_GRAD)
};

// The backward configuration for rows of n elements of elem_bytes each: from n and the element
// size only, never from the number of rows.
BwdConfig bwd_config(int64_t n, int elem_bytes) {
  const int vec = kVectorBytes / elem_bytes;
  const int64_t row_bytes = n * elem_bytes;
  const RowTiling tiling = tile_row(ceil_div(n, vec), kBwdMaxAccumulators / vec, kBwdPreferredThreadsPerRow,
                                    kBwdMaxBlockThreads, kBwdSubWarpItems);
  if (tiling.items == 0 || (row_bytes >= kBwdStagedMinRowBytes && row_bytes <= kBwdStagedMaxRowBytes)) {
    const int chunks_per_thread =
        row_bytes <= kBwdStagedShortRowMaxBytes ? kBwdStagedShortRowChunksPerThread : kBwdStagedChunksPerThread;
    const int staged_threads =
        row_bytes <= kBwdStagedMaxRowBytes
            ? static_cast<int>(round_up(ceil_div(ceil_div(n, vec), chunks_per_thread), kWarpSize))
            : 0;
    const bool keeps_grad = chunks_per_thread == kBwdStagedShortRowChunksPerThread &&
                            chunks_per_thread < kBwdStagedChunksPerThread && row_bytes >= kBwdStagedKeptGradMinRowBytes;
    return {RowTiling{0, 0}, 1, kLoopedBlockThreads, staged_threads, chunks_per_thread, keeps_grad};
  }
  if (tiling.threads_per_row <= kWarpSize) {
    return {tiling, kBwdSubWarpBlockThreads / tiling.threads_per_row, kBwdSubWarpBlockThreads, 0, 0, false};
  }
  return {tiling, 1, tiling.threads_per_row, 0, 0, false};
}

// Slices of rows of the columns kernel: the rows are cut into `count` slices of rows_per_slice
// consecutive rows (the last one shorter), one dweight partial row each.
struct RowSlices {
  int64_t count;
  int64_t rows_per_slice;
};

int64_t column_blocks(int64_t n, int elem_bytes) {
  return ceil_div(n, int64_t{kColumnsBlockThreads} * (kVectorBytes / elem_bytes));
}

RowSlices row_slices(int64_t rows, int64_t n, int elem_bytes, int num_sms) {
  const int64_t wanted = ceil_div(int64_t{num_sms} * kColumnsBlocksPerSm, column_blocks(n, elem_bytes));
  const int64_t rows_per_slice = ceil_div(rows, std::clamp<int64_t>(wanted, 1, std::min(rows, kMaxGridY)));
  return {ceil_div(rows, rows_per_slice), rows_per_slice};  // no empty slice
}

// The blocks of block_threads an SM holds of a persistent kernel whose register budget keeps
// resident_threads resident: at least one.
int bwd_blocks_per_sm(int block_threads, int resident_threads) { return std::max(1, resident_threads / block_threads); }

// The persistent grid of rms_norm_bwd_kernel and rms_norm_bwd_staged_kernel: bwd_blocks_per_sm on
// each of num_sms SMs, fewer for fewer row groups.
int64_t bwd_persistent_blocks(int64_t row_groups, int block_threads, int resident_threads, int num_sms) {
  return std::min(row_groups, int64_t{num_sms} * bwd_blocks_per_sm(block_threads, resident_threads));
}

// Rows of fp32 dweight partial sums the chosen path writes to the workspace ([partial_rows, n]);
// for the register and staged paths it is also the persistent grid of their kernel.
int64_t bwd_partial_rows(const BwdConfig& config, bool staged, int64_t rows, int64_t n, int elem_bytes, int num_sms) {
  if (staged) return bwd_persistent_blocks(rows, config.staged_threads, kBwdResidentThreadsPerSm, num_sms);
  if (config.tiling.items == 0) return row_slices(rows, n, elem_bytes, num_sms).count;
  const int accumulators = config.tiling.items * (kVectorBytes / elem_bytes);
  return bwd_persistent_blocks(ceil_div(rows, config.rows_per_block), config.block_threads,
                               bwd_resident_threads_per_sm(accumulators), num_sms);
}

// rms_norm_bwd_split_kernel's grid for rows of n elements of elem_bytes each: column chunks along x,
// groups of rows along y, as many as the resident blocks hold ({0, 0}: rows that are not that long,
// or whose chunks the GPU holds fewer than kBwdSplitMinGroups times, which take the other paths).
// From rows, n, the element size and the SM count only.
struct SplitGrid {
  int64_t chunks;
  int64_t groups;
};

SplitGrid bwd_split_grid(int64_t rows, int64_t n, int elem_bytes, int num_sms) {
  if (n * elem_bytes <= kBwdStagedMaxRowBytes) return {0, 0};
  const int64_t chunks = ceil_div(n, int64_t{kBwdSplitChunkVecs} * (kVectorBytes / elem_bytes));
  const int64_t resident = int64_t{num_sms} * kBwdSplitBlocksPerSm;
  if (chunks * kBwdSplitMinGroups > resident) return {0, 0};
  return {chunks, std::min(rows, resident / chunks)};
}

// The split kernel's workspace: [groups, n] dweight partials (when dweight is wanted; first, so
// that they are 16-byte aligned as the workspace is), then [rows, chunks] flagged chunk sums of 8
// bytes each, after an even number of floats.
int64_t bwd_split_chunk_sums_offset(SplitGrid grid, int64_t n, bool needs_dweight) {
  return needs_dweight ? round_up(grid.groups * n, 2) : 0;
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------

// g *= w + weight_offset, elementwise: the weight's one formula for both forms below.
template <int VEC>
__device__ __forceinline__ void apply_weight(Vec<float, VEC>& g, const float (&w)[VEC], float weight_offset) {
#pragma unroll
  for (int k = 0; k < VEC; ++k) g.v[k] = __fmul_rn(g.v[k], __fadd_rn(w[k], weight_offset));
}

// g = dy * (weight + weight_offset) (dy alone when weight is nullptr) for the chunk at col, in fp32.
template <bool ALIGNED, int VEC, typename T, typename W, typename Index>
__device__ __forceinline__ Vec<float, VEC> weighted_grad(const Vec<T, VEC>& dy, const W* weight, float weight_offset,
                                                         Index col, Index end) {
  Vec<float, VEC> g;
  vec_to_floats(dy, g.v);
  if (weight != nullptr) {
    float w[VEC];
    vec_to_floats(load_vec<ALIGNED, VEC>(weight, col, end), w);
    apply_weight(g, w, weight_offset);
  }
  return g;
}

// weighted_grad with the chunk's weight already in registers (has_weight false: no weight): the same
// bits.
template <int VEC, typename T, typename W>
__device__ __forceinline__ Vec<float, VEC> weighted_grad_held(const Vec<T, VEC>& dy, const Vec<W, VEC>& weight,
                                                              bool has_weight, float weight_offset) {
  Vec<float, VEC> g;
  vec_to_floats(dy, g.v);
  if (has_weight) {
    float w[VEC];
    vec_to_floats(weight, w);
    apply_weight(g, w, weight_offset);
  }
  return g;
}

// dot + sum over the chunk of xhat * g, xhat = x * rstd.
template <int VEC, typename T>
__device__ __forceinline__ float add_xhat_dot_g(float dot, const Vec<T, VEC>& x, const Vec<float, VEC>& g,
                                                float rstd) {
  float xf[VEC];
  vec_to_floats(x, xf);
#pragma unroll
  for (int k = 0; k < VEC; ++k) dot = __fmaf_rn(__fmul_rn(xf[k], rstd), g.v[k], dot);
  return dot;
}

// dx = (g - xhat * c) * rstd for the chunk at col, plus dresidual_row's chunk when that is not
// nullptr, in fp32, rounded to X once.
template <bool ALIGNED, int VEC, typename X, typename Index>
__device__ __forceinline__ Vec<X, VEC> dx_of(const Vec<X, VEC>& x, const Vec<float, VEC>& g, float rstd, float c,
                                              const X* dresidual_row, Index col, Index end) {
  float d[VEC];
  vec_to_floats(x, d);
#pragma unroll
  for (int k = 0; k < VEC; ++k) d[k] = __fmul_rn(__fsub_rn(g.v[k], __fmul_rn(__fmul_rn(d[k], rstd), c)), rstd);
  if (dresidual_row != nullptr) {
    float extra[VEC];
    vec_to_floats(load_vec<ALIGNED, VEC>(dresidual_row, col, end), extra);
#pragma unroll
    for (int k = 0; k < VEC; ++k) d[k] = __fadd_rn(d[k], extra[k]);
  }
  return vec_from_floats<X>(d);
}

// sums += dy * xhat over the chunk: the dweight terms of one row. round_xhat: xhat as the
// forward multiplied the weight by it, rounded to T, y's type (casting_mode "llama").
template <int VEC, typename T, typename X>
__device__ __forceinline__ void add_dweight_terms(Vec<float, VEC>& sums, const Vec<X, VEC>& x, const Vec<T, VEC>& dy,
                                                  float rstd, bool round_xhat) {
  float xhat[VEC], dyf[VEC];
  vec_to_floats(x, xhat);
  vec_to_floats(dy, dyf);
#pragma unroll
  for (int k = 0; k < VEC; ++k) xhat[k] = __fmul_rn(xhat[k], rstd);
  if (round_xhat) vec_to_floats(vec_from_floats<T>(xhat), xhat);
#pragma unroll
  for (int k = 0; k < VEC; ++k) sums.v[k] = __fmaf_rn(dyf[k], xhat[k], sums.v[k]);
}

// Rows held in registers, on a persistent grid. Block b handles row groups b, b + gridDim.x, ...;
// row group g is rows [g * R, g * R + R), R = blockDim.x / threads_per_row, thread t of the block
// working on row g * R + t / threads_per_row. Thread j = t % threads_per_row of a row holds the
// row's chunks j, j + threads_per_row, ... (ITEMS of them; chunk c is elements
// [c * VEC, c * VEC + VEC)), the same columns in every row it visits, and sums dy * xhat for
// them in fp32 registers. At the end the block's R row groups add their sums in group order and
// the block writes them as row b of dweight_partials.
template <typename T, typename W, typename X, int ITEMS, bool ALIGNED>
__global__ void __launch_bounds__(kBwdMaxBlockThreads,
                                  bwd_resident_threads_per_sm(ITEMS * kVecElems<T>) / kBwdMaxBlockThreads)
    rms_norm_bwd_kernel(
    const T* __restrict__ dy,              // [rows, n], row i at dy + dy_layout.offset(i)
    RowLayout dy_layout,
    const X* __restrict__ x,               // [rows, n], row i at x + x_layout.offset(i)
    RowLayout x_layout,
    const X* __restrict__ dresidual_out,   // [rows, n], row i at dresidual_out + dresidual_out_layout.offset(i);
    RowLayout dresidual_out_layout,        //   added to dx, or nullptr
    const W* __restrict__ weight,          // [n], or nullptr for no weight
    float weight_offset,                   // added to the weight
    bool round_xhat,                       // dweight sums dy * xhat rounded to T (casting_mode "llama")
    const float* __restrict__ rstd,        // [rows], from the forward
    X* __restrict__ dx,                    // [rows, n], contiguous
    float* __restrict__ dweight_partials,  // [gridDim.x, n], contiguous; nullptr: no dweight
    int64_t rows,
    int n,                                 // <= threads_per_row * ITEMS * VEC
    int threads_per_row) {                 // RowTiling::threads_per_row: a power of two <= 32, or blockDim.x
  constexpr int VEC = kVecElems<T>;
  // [R, n]: each row group's dweight sums, when R > 1 and dweight_partials is set (the launcher
  // sizes it then).
  extern __shared__ float group_partials[];
  const RowGroupPlace place = row_group_place(threads_per_row);
  const int rows_per_block = place.rows_per_block;
  const int row_in_block = place.row_in_block;
  // Column of this thread's first chunk, and the distance to its next one.
  const int first_col = place.lane * VEC;
  const int col_step = threads_per_row * VEC;
  const bool with_dweight = dweight_partials != nullptr;
  Vec<float, VEC> dweight_sums[ITEMS] = {};

  for (int64_t group = blockIdx.x; group * rows_per_block < rows; group += gridDim.x) {
    const int64_t row = group * rows_per_block + row_in_block;
    // Threads of a row past the last one still take part in the reduction (its shuffles need
    // every lane of the warp), on zeros (rstd 0 too, so they add nothing to dweight), and store
    // nothing.
    const bool in_range = row < rows;
    const int end = in_range ? n : 0;
    const X* x_row = x + x_layout.offset(in_range ? row : 0);
    const T* dy_row = dy + dy_layout.offset(in_range ? row : 0);
    const float row_rstd = in_range ? rstd[row] : 0.0f;

    Vec<X, VEC> x_chunks[ITEMS];
    Vec<T, VEC> dy_chunks[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      x_chunks[i] = load_vec<ALIGNED, VEC>(x_row, first_col + i * col_step, end);
      dy_chunks[i] = load_vec<ALIGNED, VEC>(dy_row, first_col + i * col_step, end);
    }
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int col = first_col + i * col_step;
      const Vec<float, VEC> g = weighted_grad<ALIGNED>(dy_chunks[i], weight, weight_offset, col, end);
      dot = add_xhat_dot_g(dot, x_chunks[i], g, row_rstd);
      if (with_dweight) add_dweight_terms(dweight_sums[i], x_chunks[i], dy_chunks[i], row_rstd, round_xhat);
    }
    const float c = __fdiv_rn(block_reduce_sum(dot, threads_per_row), static_cast<float>(n));
    if (!in_range) continue;

    X* dx_row = dx + row * n;
    const X* dresidual_row = dresidual_out != nullptr ? dresidual_out + dresidual_out_layout.offset(row) : nullptr;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int col = first_col + i * col_step;
      const Vec<float, VEC> g = weighted_grad<ALIGNED>(dy_chunks[i], weight, weight_offset, col, n);
      store_vec<ALIGNED, kDxNoL1Allocate>(dx_row, col, n,
                                          dx_of<ALIGNED>(x_chunks[i], g, row_rstd, c, dresidual_row, col, n));
    }
  }

  if (!with_dweight) return;
  float* block_partials = dweight_partials + int64_t{blockIdx.x} * n;
  if (rows_per_block == 1) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) store_vec<ALIGNED>(block_partials, first_col + i * col_step, n, dweight_sums[i]);
    return;
  }
  float* own_partials = group_partials + row_in_block * n;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const int col = first_col + i * col_step + k;
      if (col < n) own_partials[col] = dweight_sums[i].v[k];
    }
  }
  __syncthreads();
  for (int col = threadIdx.x; col < n; col += blockDim.x) {
    float sum = group_partials[col];
    for (int r = 1; r < rows_per_block; ++r) sum += group_partials[r * n + col];
    block_partials[col] = sum;
  }
}

// Aligned rows too long for registers, with x of dy's type, up to kBwdStagedMaxRowBytes, on the
// persistent grid of rms_norm_bwd_kernel (bwd_persistent_blocks). Block b handles rows b,
// b + gridDim.x, ...: it copies each row's x and dy to shared memory with cp.async, and walks them
// from there twice (c, then dx), where the row-dot and columns kernels read them from DRAM twice
// (5 passes over memory where 3 are needed: at most 60% of copy). Thread t owns chunks t,
// t + blockDim.x, ... (CHUNKS at most) of every row it visits, reads back only what it copied (so no
// barrier guards the stage), and sums dy * xhat for them in fp32 registers, written at the end as
// row b of dweight_partials. c is summed as rms_norm_bwd_row_dot_kernel on as many threads sums it
// (the launcher gives it as many for unaligned rows): the same bits of dx. KEEP_GRAD: g of the
// first walk is kept for the second (the same values, so the same bits).
template <typename T, typename W, int CHUNKS, bool KEEP_GRAD>
__global__ void __launch_bounds__(kBwdMaxBlockThreads, 1) rms_norm_bwd_staged_kernel(
    const T* __restrict__ dy,              // [rows, n], row i at dy + dy_layout.offset(i)
    RowLayout dy_layout,
    const T* __restrict__ x,               // [rows, n], row i at x + x_layout.offset(i)
    RowLayout x_layout,
    const T* __restrict__ dresidual_out,   // [rows, n], row i at dresidual_out + dresidual_out_layout.offset(i);
    RowLayout dresidual_out_layout,        //   added to dx, or nullptr
    const W* __restrict__ weight,          // [n], or nullptr for no weight
    float weight_offset,                   // added to the weight
    bool round_xhat,                       // dweight sums dy * xhat rounded to T (casting_mode "llama")
    const float* __restrict__ rstd,        // [rows], from the forward
    T* __restrict__ dx,                    // [rows, n], contiguous
    float* __restrict__ dweight_partials,  // [gridDim.x, n], contiguous; nullptr: no dweight
    int64_t rows,
    int64_t n) {                           // a multiple of VEC, at most kBwdStagedMaxRowBytes of T
  constexpr int VEC = kVecElems<T>;
  extern __shared__ uint4 stage[];  // x's n / VEC chunks, then dy's, as 16-byte words
  const unsigned row_n = static_cast<unsigned>(n);
  uint4* x_stage = stage;
  uint4* dy_stage = stage + row_n / VEC;
  const unsigned first_col = threadIdx.x * VEC;
  const unsigned col_step = blockDim.x * VEC;
  const auto col_of = [&](int i) { return first_col + static_cast<unsigned>(i) * col_step; };
  const auto chunk_at = [&](const uint4* buffer, int i) { return load_stage_word<T, VEC>(&buffer[col_of(i) / VEC]); };
  const bool with_dweight = dweight_partials != nullptr;
  Vec<float, VEC> dweight_sums[CHUNKS] = {};
  [[maybe_unused]] Vec<float, VEC> kept_grads[KEEP_GRAD ? CHUNKS : 1];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x_row = x + x_layout.offset(row);
    const T* dy_row = dy + dy_layout.offset(row);
#pragma unroll
    for (int i = 0; i < CHUNKS; ++i) {
      if (col_of(i) < row_n) {
        copy_async_16(&x_stage[col_of(i) / VEC], x_row + col_of(i));
        copy_async_16(&dy_stage[col_of(i) / VEC], dy_row + col_of(i));
      }
    }
    const float row_rstd = rstd[row];
    wait_async_copies();
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < CHUNKS; ++i) {
      if (col_of(i) >= row_n) continue;
      const Vec<T, VEC> x_chunk = chunk_at(x_stage, i);
      const Vec<T, VEC> dy_chunk = chunk_at(dy_stage, i);
      const Vec<float, VEC> g = weighted_grad<true>(dy_chunk, weight, weight_offset, col_of(i), row_n);
      if constexpr (KEEP_GRAD) kept_grads[i] = g;
      dot = add_xhat_dot_g(dot, x_chunk, g, row_rstd);
      if (with_dweight) add_dweight_terms(dweight_sums[i], x_chunk, dy_chunk, row_rstd, round_xhat);
    }
    const float c = __fdiv_rn(block_reduce_sum(dot, blockDim.x), static_cast<float>(n));
    T* dx_row = dx + row * n;
    const T* dresidual_row = dresidual_out != nullptr ? dresidual_out + dresidual_out_layout.offset(row) : nullptr;
#pragma unroll
    for (int i = 0; i < CHUNKS; ++i) {
      if (col_of(i) >= row_n) continue;
      Vec<float, VEC> g;
      if constexpr (KEEP_GRAD) {
        g = kept_grads[i];
      } else {
        g = weighted_grad<true>(chunk_at(dy_stage, i), weight, weight_offset, col_of(i), row_n);
      }
      store_vec<true, kDxNoL1Allocate>(
          dx_row, col_of(i), row_n, dx_of<true>(chunk_at(x_stage, i), g, row_rstd, c, dresidual_row, col_of(i), row_n));
    }
  }
  if (!with_dweight) return;
  float* block_partials = dweight_partials + int64_t{blockIdx.x} * n;
#pragma unroll
  for (int i = 0; i < CHUNKS; ++i) store_vec<true>(block_partials, col_of(i), row_n, dweight_sums[i]);
}

// c = sum(xhat * g) / n of rows too long for registers. Block b handles rows b, b + gridDim.x, ...;
// thread t walks the row's chunks t, t + blockDim.x, ...
template <typename T, typename W, typename X, bool ALIGNED>
__global__ void __launch_bounds__(kLoopedBlockThreads, 1) rms_norm_bwd_row_dot_kernel(
    const T* __restrict__ dy,        // [rows, n], row i at dy + dy_layout.offset(i)
    RowLayout dy_layout,
    const X* __restrict__ x,         // [rows, n], row i at x + x_layout.offset(i)
    RowLayout x_layout,
    const W* __restrict__ weight,    // [n], or nullptr for no weight
    float weight_offset,             // added to the weight
    const float* __restrict__ rstd,  // [rows], from the forward
    float* __restrict__ row_c,       // [rows], output
    int64_t rows,
    int64_t n) {
  constexpr int VEC = kVecElems<T>;
  const int64_t first_col = int64_t{threadIdx.x} * VEC;
  const int64_t col_step = int64_t{blockDim.x} * VEC;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const X* x_row = x + x_layout.offset(row);
    const T* dy_row = dy + dy_layout.offset(row);
    const float row_rstd = rstd[row];
    float dot = 0.0f;
#pragma unroll(kLoopedUnroll)
    for (int64_t col = first_col; col < n; col += col_step) {
      const Vec<T, VEC> dy_chunk = load_vec<ALIGNED, VEC>(dy_row, col, n);
      dot = add_xhat_dot_g(dot, load_vec<ALIGNED, VEC>(x_row, col, n),
                           weighted_grad<ALIGNED>(dy_chunk, weight, weight_offset, col, n), row_rstd);
    }
    const float c = __fdiv_rn(block_reduce_sum(dot, blockDim.x), static_cast<float>(n));
    if (threadIdx.x == 0) row_c[row] = c;
  }
}

// dx and dweight partial sums of rows too long for registers, column-parallel, given each row's
// c. Block (bx, s) walks the rows of slice s, [s * rows_per_slice, (s + 1) * rows_per_slice) cut
// at rows, in row order, for the chunks bx * blockDim.x + t, + gridDim.x * blockDim.x, ... (one
// per thread t per step): it writes their dx and sums dy * xhat over the slice, written as row s
// of dweight_partials.
template <typename T, typename W, typename X, bool ALIGNED>
__global__ void __launch_bounds__(kColumnsBlockThreads, kColumnsBlocksPerSm) rms_norm_bwd_columns_kernel(
    const T* __restrict__ dy,              // [rows, n], row i at dy + dy_layout.offset(i)
    RowLayout dy_layout,
    const X* __restrict__ x,               // [rows, n], row i at x + x_layout.offset(i)
    RowLayout x_layout,
    const X* __restrict__ dresidual_out,   // [rows, n], row i at dresidual_out + dresidual_out_layout.offset(i);
    RowLayout dresidual_out_layout,        //   added to dx, or nullptr
    const W* __restrict__ weight,          // [n], or nullptr for no weight
    float weight_offset,                   // added to the weight
    bool round_xhat,                       // dweight sums dy * xhat rounded to T (casting_mode "llama")
    const float* __restrict__ rstd,        // [rows], from the forward
    const float* __restrict__ row_c,       // [rows], from rms_norm_bwd_row_dot_kernel
    X* __restrict__ dx,                    // [rows, n], contiguous
    float* __restrict__ dweight_partials,  // [gridDim.y, n], contiguous; nullptr: no dweight
    int64_t rows,
    int64_t n,
    int64_t rows_per_slice) {
  constexpr int VEC = kVecElems<T>;
  const int64_t row_begin = int64_t{blockIdx.y} * rows_per_slice;
  const int64_t row_end = row_begin + rows_per_slice < rows ? row_begin + rows_per_slice : rows;
  const int64_t col_step = int64_t{gridDim.x} * blockDim.x * VEC;
  for (int64_t col = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) * VEC; col < n; col += col_step) {
    Vec<float, VEC> sums = {};
#pragma unroll(kColumnsRowUnroll)
    for (int64_t row = row_begin; row < row_end; ++row) {
      const Vec<X, VEC> x_chunk = load_vec<ALIGNED, VEC>(x + x_layout.offset(row), col, n);
      const Vec<T, VEC> dy_chunk = load_vec<ALIGNED, VEC>(dy + dy_layout.offset(row), col, n);
      const float row_rstd = rstd[row];
      const Vec<float, VEC> g = weighted_grad<ALIGNED>(dy_chunk, weight, weight_offset, col, n);
      const X* dresidual_row =
          dresidual_out != nullptr ? dresidual_out + dresidual_out_layout.offset(row) : nullptr;
      store_vec<ALIGNED, kDxNoL1Allocate>(dx + row * n, col, n,
                                          dx_of<ALIGNED>(x_chunk, g, row_rstd, row_c[row], dresidual_row, col, n));
      if (dweight_partials != nullptr) add_dweight_terms(sums, x_chunk, dy_chunk, row_rstd, round_xhat);
    }
    if (dweight_partials != nullptr) store_vec<ALIGNED>(dweight_partials + int64_t{blockIdx.y} * n, col, n, sums);
  }
}

// A chunk's sum of xhat * g, flagged as written: the fp32 bits in the low word, kBwdSplitPartialReady
// in the high one, over a workspace of zeros. A sum may be any float, so no float can mean "not yet".
constexpr uint64_t kBwdSplitPartialReady = uint64_t{1} << 32;

// Stored and polled with relaxed atomics at GPU scope: every access sees the word whole (flag and
// sum together, so no fence orders them), and each poll reads it from L2, where other SMs' stores land.
// volatile, so that every poll is made, in program order with the store; no "memory" clobber: nothing
// else the kernel reads is written by another block, so no other access needs ordering against them.
__device__ __forceinline__ void store_split_partial(uint64_t* word, float sum) {
  const uint64_t value = kBwdSplitPartialReady | __float_as_uint(sum);
  asm volatile("st.relaxed.gpu.global.b64 [%0], %1;" ::"l"(word), "l"(value));
}
__device__ __forceinline__ uint64_t load_split_partial(const uint64_t* word) {
  uint64_t value;
  asm volatile("ld.relaxed.gpu.global.b64 %0, [%1];" : "=l"(value) : "l"(word));
  return value;
}

// c = sum(xhat * g) / n of a row whose chunks' shares of it are in `words`: waits until every one is
// written, then adds them in chunk order, lane j taking chunks j, j + 32, ..., and the lanes' sums by
// warp_reduce. Every block of the row calls it with the same words: the same bits of c. A lane loads
// kBwdSplitPollBatch shares at once, then waits for each in turn. (Its first batch loaded beside the
// row's loads, a row earlier, read 2.5 points lower: bench/NOTES.md v0.36.)
__device__ __forceinline__ float split_row_c(const uint64_t* words, int chunks, int64_t n) {
  const int lane = threadIdx.x % kWarpSize;
  float sum = 0.0f;
  for (int base = 0; base < chunks; base += kWarpSize * kBwdSplitPollBatch) {
    uint64_t batch[kBwdSplitPollBatch];
#pragma unroll
    for (int b = 0; b < kBwdSplitPollBatch; ++b) {
      const int chunk = base + b * kWarpSize + lane;
      batch[b] = chunk < chunks ? load_split_partial(&words[chunk]) : kBwdSplitPartialReady;
    }
#pragma unroll
    for (int b = 0; b < kBwdSplitPollBatch; ++b) {
      const int chunk = base + b * kWarpSize + lane;
      while ((batch[b] & kBwdSplitPartialReady) == 0) batch[b] = load_split_partial(&words[chunk]);
      sum += __uint_as_float(static_cast<uint32_t>(batch[b]));
    }
  }
  return __fdiv_rn(warp_reduce(sum, kWarpSize, SumOp{}), static_cast<float>(n));
}

// Rows too long to stage, in one pass over DRAM, on a grid of [chunks, groups] one-warp blocks all
// resident at once (a cooperative launch: blocks wait on each other). Block (k, g) owns column chunk
// k, kBwdSplitItems Vecs a thread (lane j holds Vecs j, j + 32, ...: coalesced), of rows g,
// g + groups, ...: for each it loads the chunk of x and dy and stores the chunk's sum of xhat * g,
// flagged (store_split_partial); one of its rows later, once every chunk of the row has stored its
// sum, it writes dx from the x and dy it still holds (kBwdSplitHoldsRow) and adds dy * xhat to its
// dweight sums, kept in registers for all its rows and written at the end as row g of
// dweight_partials. The row-dot and columns kernels read x and dy from DRAM twice; the lag lets a
// block wait for the row's other chunks while they have a whole row of their own to do.
template <typename T, typename W, typename X, bool ALIGNED>
__global__ void __launch_bounds__(kWarpSize, kBwdSplitBlocksPerSm) rms_norm_bwd_split_kernel(
    const T* __restrict__ dy,              // [rows, n], row i at dy + dy_layout.offset(i)
    RowLayout dy_layout,
    const X* __restrict__ x,               // [rows, n], row i at x + x_layout.offset(i)
    RowLayout x_layout,
    const X* __restrict__ dresidual_out,   // [rows, n], row i at dresidual_out + dresidual_out_layout.offset(i);
    RowLayout dresidual_out_layout,        //   added to dx, or nullptr
    const W* __restrict__ weight,          // [n], or nullptr for no weight
    float weight_offset,                   // added to the weight
    bool round_xhat,                       // dweight sums dy * xhat rounded to T (casting_mode "llama")
    const float* __restrict__ rstd,        // [rows], from the forward
    X* __restrict__ dx,                    // [rows, n], contiguous
    float* __restrict__ dweight_partials,  // [gridDim.y, n], contiguous; nullptr: no dweight
    uint64_t* __restrict__ chunk_sums,     // [rows, gridDim.x], zeros on entry
    int64_t rows,
    int64_t n) {
  constexpr int VEC = kVecElems<T>;
  constexpr int ITEMS = kBwdSplitItems;
  const int chunks = gridDim.x;
  const int64_t group = blockIdx.y;
  const int64_t groups = gridDim.y;
  const int64_t first_col = int64_t{blockIdx.x} * kBwdSplitChunkVecs * VEC + threadIdx.x * VEC;
  const auto col_of = [&](int i) { return first_col + int64_t{i} * kWarpSize * VEC; };
  const bool with_dweight = dweight_partials != nullptr;
  const int64_t rows_here = group < rows ? ceil_div(rows - group, groups) : 0;

  struct RowChunk {
    Vec<X, VEC> x[ITEMS];
    Vec<T, VEC> dy[ITEMS];
  };
  const auto load_row = [&](int64_t i, RowChunk& chunk) {
    const int64_t row = group + i * groups;
    const X* x_row = x + x_layout.offset(row);
    const T* dy_row = dy + dy_layout.offset(row);
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      chunk.x[k] = load_vec<ALIGNED, VEC>(x_row, col_of(k), n);
      chunk.dy[k] = load_vec<ALIGNED, VEC>(dy_row, col_of(k), n);
    }
  };
  Vec<float, VEC> dweight_sums[ITEMS] = {};
  [[maybe_unused]] Vec<W, VEC> held_weight[kBwdSplitHoldsWeight<T, W> ? ITEMS : 1];
  if constexpr (kBwdSplitHoldsWeight<T, W>) {
#pragma unroll
    for (int k = 0; k < ITEMS; ++k) {
      held_weight[k] = weight != nullptr ? load_vec<ALIGNED, VEC>(weight, col_of(k), n) : Vec<W, VEC>{};
    }
  }
  const auto grad_of = [&](int k, const Vec<T, VEC>& dy_chunk) {
    if constexpr (kBwdSplitHoldsWeight<T, W>) {
      return weighted_grad_held(dy_chunk, held_weight[k], weight != nullptr, weight_offset);
    } else {
      return weighted_grad<ALIGNED>(dy_chunk, weight, weight_offset, col_of(k), n);
    }
  };
  RowChunk held;     // the row of the previous iteration, waiting for its c
  RowChunk current;  // this iteration's row
  for (int64_t i = 0; i <= rows_here; ++i) {
    if (i < rows_here) {
      // The loads and the sum in one block: with the loads in a block of their own (the same
      // condition), the misaligned 16-bit rows' element loads spilled 250-300 bytes (ptxas -v).
      load_row(i, current);
      const int64_t row = group + i * groups;
      const float row_rstd = rstd[row];
      float dot = 0.0f;
#pragma unroll
      for (int k = 0; k < ITEMS; ++k) dot = add_xhat_dot_g(dot, current.x[k], grad_of(k, current.dy[k]), row_rstd);
      dot = warp_reduce(dot, kWarpSize, SumOp{});
      if (threadIdx.x == 0) store_split_partial(&chunk_sums[row * chunks + blockIdx.x], dot);
    }
    if (i > 0) {
      const int64_t row = group + (i - 1) * groups;
      const float row_rstd = rstd[row];
      const float c = split_row_c(chunk_sums + row * chunks, chunks, n);
      if constexpr (!kBwdSplitHoldsRow<T, X, ALIGNED>) load_row(i - 1, held);
      X* dx_row = dx + row * n;
      const X* dresidual_row = dresidual_out != nullptr ? dresidual_out + dresidual_out_layout.offset(row) : nullptr;
#pragma unroll
      for (int k = 0; k < ITEMS; ++k) {
        const Vec<float, VEC> g = grad_of(k, held.dy[k]);
        store_vec<ALIGNED, kDxNoL1Allocate>(dx_row, col_of(k), n,
                                            dx_of<ALIGNED>(held.x[k], g, row_rstd, c, dresidual_row, col_of(k), n));
        if (with_dweight) add_dweight_terms(dweight_sums[k], held.x[k], held.dy[k], row_rstd, round_xhat);
      }
    }
    if constexpr (kBwdSplitHoldsRow<T, X, ALIGNED>) held = current;
  }
  if (!with_dweight) return;
  float* block_partials = dweight_partials + group * n;
#pragma unroll
  for (int k = 0; k < ITEMS; ++k) store_vec<ALIGNED>(block_partials, col_of(k), n, dweight_sums[k]);
}

// dweight[j] = sum of partials[p, j] over p, rounded to W. Column j's sum is fixed by
// partial_rows alone: warp w of its block adds rows w, w + 8, w + 16, ... in that order, then
// the 8 warp sums are added in warp order.
template <typename W>
__global__ void __launch_bounds__(kReduceColumns * kReduceSlices, 1) rms_norm_bwd_dweight_reduce_kernel(
    const float* __restrict__ partials,  // [partial_rows, n], contiguous
    int64_t partial_rows,
    W* __restrict__ dweight,             // [n]
    int64_t n) {
  __shared__ float slice_sums[kReduceSlices][kReduceColumns];
  const int column_in_tile = threadIdx.x % kReduceColumns;
  const int slice = threadIdx.x / kReduceColumns;
  const int64_t tiles = ceil_div(n, kReduceColumns);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t col = tile * kReduceColumns + column_in_tile;
    float sum = 0.0f;
    if (col < n) {
#pragma unroll(kReduceUnroll)
      for (int64_t p = slice; p < partial_rows; p += kReduceSlices) sum += partials[p * n + col];
    }
    slice_sums[slice][column_in_tile] = sum;
    __syncthreads();
    if (slice == 0 && col < n) {
      for (int s = 1; s < kReduceSlices; ++s) sum += slice_sums[s][column_in_tile];
      dweight[col] = from_float<W>(sum);
    }
    __syncthreads();  // slice_sums is written again for the next tile
  }
}

// ---------------------------------------------------------------------------------------------
// Launch helpers
// ---------------------------------------------------------------------------------------------

// Rows too long for registers: c of every row into row_c (on row_dot_threads threads a row), then
// dx and the dweight partials.
template <typename T, typename W, typename X, bool ALIGNED>
cudaError_t launch_bwd_columns(const T* dy, RowLayout dy_layout, const X* x, RowLayout x_layout,
                               const X* dresidual_out, RowLayout dresidual_out_layout, const W* weight,
                               float weight_offset, bool round_xhat, const float* rstd, X* dx,
                               float* dweight_partials, float* row_c, int64_t rows, int64_t n, int num_sms,
                               int row_dot_threads, cudaStream_t stream) {
  rms_norm_bwd_row_dot_kernel<T, W, X, ALIGNED><<<std::min(rows, kMaxGridX), row_dot_threads, 0, stream>>>(
      dy, dy_layout, x, x_layout, weight, weight_offset, rstd, row_c, rows, n);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  const RowSlices slices = row_slices(rows, n, sizeof(T), num_sms);
  const dim3 grid(static_cast<unsigned>(std::min(column_blocks(n, sizeof(T)), kMaxGridX)),
                  static_cast<unsigned>(slices.count));
  rms_norm_bwd_columns_kernel<T, W, X, ALIGNED><<<grid, kColumnsBlockThreads, 0, stream>>>(
      dy, dy_layout, x, x_layout, dresidual_out, dresidual_out_layout, weight, weight_offset, round_xhat,
      rstd, row_c, dx, dweight_partials, rows, n, slices.rows_per_slice);
  return cudaGetLastError();
}

// Aligned rows too long for registers, x of dy's type: rms_norm_bwd_staged_kernel on `grid` blocks.
// Its shared memory carveout is what the blocks an SM need, no more: the rest is L1, where the
// rows' walks find the weight (the forward's staged kernel lost 5-10 points of copy with the weight
// in L2, bench/NOTES.md v0.9). The percent is rounded up from the bytes, so the driver may take the
// capacity above them (see shared_capacity_percent): 164 KB for bf16 rows of 8192-16384, where
// they need 130-132 KB. Kept: the capacity they need read 2.5 points lower at 16384 (v0.30).
template <int CHUNKS, bool KEEP_GRAD, typename T, typename W>
cudaError_t launch_bwd_staged(const T* dy, RowLayout dy_layout, const T* x, RowLayout x_layout,
                              const T* dresidual_out, RowLayout dresidual_out_layout, const W* weight,
                              float weight_offset, bool round_xhat, const float* rstd, T* dx,
                              float* dweight_partials, int64_t rows, int64_t n, int block_threads, int64_t grid,
                              cudaStream_t stream) {
  const auto kernel = rms_norm_bwd_staged_kernel<T, W, CHUNKS, KEEP_GRAD>;
  const int stage_bytes = static_cast<int>(2 * n * sizeof(T));
  const int blocks_per_sm = bwd_blocks_per_sm(block_threads, kBwdResidentThreadsPerSm);
  int max_shared = 0;
  cudaError_t status = max_shared_bytes_per_sm(&max_shared);
  if (status == cudaSuccess) {
    const int64_t needed = int64_t{blocks_per_sm} * (stage_bytes + kReservedSharedBytesPerBlock);
    const int percent = static_cast<int>(std::min<int64_t>(100, ceil_div(100 * needed, std::max(1, max_shared))));
    status = set_stage_attributes(kernel, stage_bytes, percent);
  }
  if (status != cudaSuccess) return status;
  kernel<<<grid, block_threads, stage_bytes, stream>>>(dy, dy_layout, x, x_layout, dresidual_out,
                                                       dresidual_out_layout, weight, weight_offset, round_xhat, rstd,
                                                       dx, dweight_partials, rows, n);
  return cudaGetLastError();
}

// Rows too long to stage: rms_norm_bwd_split_kernel on `grid`, after the chunk sums are zeroed. A
// cooperative launch, which the driver refuses rather than run with some blocks waiting for others
// that are not resident.
template <typename T, typename W, typename X, bool ALIGNED>
cudaError_t launch_bwd_split(const T* dy, RowLayout dy_layout, const X* x, RowLayout x_layout,
                             const X* dresidual_out, RowLayout dresidual_out_layout, const W* weight,
                             float weight_offset, bool round_xhat, const float* rstd, X* dx,
                             float* dweight_partials, uint64_t* chunk_sums, int64_t rows, int64_t n, SplitGrid grid,
                             cudaStream_t stream) {
  const cudaError_t status = cudaMemsetAsync(chunk_sums, 0, rows * grid.chunks * sizeof(uint64_t), stream);
  if (status != cudaSuccess) return status;
  cudaLaunchConfig_t launch = {};
  launch.gridDim = dim3(static_cast<unsigned>(grid.chunks), static_cast<unsigned>(grid.groups), 1);
  launch.blockDim = dim3(kWarpSize, 1, 1);
  launch.stream = stream;
  cudaLaunchAttribute cooperative;
  cooperative.id = cudaLaunchAttributeCooperative;
  cooperative.val.cooperative = 1;
  launch.attrs = &cooperative;
  launch.numAttrs = 1;
  return cudaLaunchKernelEx(&launch, rms_norm_bwd_split_kernel<T, W, X, ALIGNED>, dy, dy_layout, x, x_layout,
                            dresidual_out, dresidual_out_layout, weight, weight_offset, round_xhat, rstd, dx,
                            dweight_partials, chunk_sums, rows, n);
}

template <typename W>
cudaError_t launch_dweight_reduce(const float* partials, int64_t partial_rows, W* dweight, int64_t n,
                                  cudaStream_t stream) {
  const int64_t grid = std::min(ceil_div(n, kReduceColumns), kMaxGridX);
  rms_norm_bwd_dweight_reduce_kernel<W><<<grid, kReduceColumns * kReduceSlices, 0, stream>>>(partials, partial_rows,
                                                                                            dweight, n);
  return cudaGetLastError();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------------------

// The workspace holds [partial_rows, n] dweight partials (when dweight is wanted), then, for rows
// too long for registers, the rows' c values, or, for rows the split kernel takes, its chunk sums.
template <typename T>
int64_t rms_norm_bwd_workspace_elems(int64_t rows, int64_t n, bool needs_dweight, int num_sms) {
  if (rows <= 0 || n <= 0 || num_sms < 1) return 0;
  const SplitGrid split = bwd_split_grid(rows, n, sizeof(T), num_sms);
  if (split.chunks > 0) return bwd_split_chunk_sums_offset(split, n, needs_dweight) + 2 * rows * split.chunks;
  const BwdConfig config = bwd_config(n, sizeof(T));
  // Rows too long for registers take the staged path or the columns one (alignment and x's type
  // decide, which this function does not know): room for either's partials, and the columns'
  // row_c.
  int64_t partial_rows = bwd_partial_rows(config, false, rows, n, sizeof(T), num_sms);
  if (config.staged_threads > 0) {
    partial_rows = std::max(partial_rows, bwd_partial_rows(config, true, rows, n, sizeof(T), num_sms));
  }
  const int64_t partials = needs_dweight ? partial_rows * n : 0;
  return partials + (config.tiling.items == 0 ? rows : 0);
}

template <typename T, typename W, typename X>
cudaError_t rms_norm_bwd(const T* dy, RowLayout dy_layout, const X* x, RowLayout x_layout,
                         const X* dresidual_out, RowLayout dresidual_out_layout, const W* weight, float weight_offset,
                         bool round_xhat, const float* rstd, X* dx, W* dweight, float* workspace, int64_t rows,
                         int64_t n, int num_sms, cudaStream_t stream) {
  if (rows < 0 || n < 0 || num_sms < 1) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (rows == 0) return dweight == nullptr ? cudaSuccess : cudaMemsetAsync(dweight, 0, n * sizeof(W), stream);
  constexpr int VEC = kVecElems<T>;
  const BwdConfig config = bwd_config(n, sizeof(T));
  if ((dweight != nullptr || config.tiling.items == 0) && workspace == nullptr) return cudaErrorInvalidValue;
  float* partials = dweight != nullptr ? workspace : nullptr;
  // As in the forward: a zero offset passed as -0 leaves g bitwise dy * weight.
  const float offset = weight_offset == 0.0f ? -0.0f : weight_offset;
  // Whole Vecs can be read and written when every row starts on a 16-byte boundary (an aligned
  // base, and every stride of the layout a multiple of the Vec's alignment in elements: VEC, or 4
  // for a float x beside 16-bit dy) and n is a multiple of VEC (then no chunk straddles the row's
  // end); the weight's Vec needs its own alignment (16 bytes, or 8 for the 4 bf16/half weights of
  // a float row chunk).
  constexpr int64_t X_ALIGN = kVecAlignElems<X, VEC>;
  const bool aligned =
      n % VEC == 0 && is_aligned(dy, kVectorBytes) && dy_layout.strides_multiple_of(VEC) &&
      is_aligned(x, kVectorBytes) && x_layout.strides_multiple_of(X_ALIGN) && is_aligned(dx, kVectorBytes) &&
      (dresidual_out == nullptr ||
       (is_aligned(dresidual_out, kVectorBytes) && dresidual_out_layout.strides_multiple_of(X_ALIGN))) &&
      (weight == nullptr || is_aligned(weight, alignof(Vec<W, VEC>))) &&
      (partials == nullptr || is_aligned(partials, kVectorBytes));
  const bool staged = config.staged_threads > 0 && aligned && std::is_same_v<X, T>;
  const SplitGrid split = bwd_split_grid(rows, n, sizeof(T), num_sms);
  const int64_t partial_rows =
      split.chunks > 0 ? split.groups : bwd_partial_rows(config, staged, rows, n, sizeof(T), num_sms);
  float* row_c = workspace + (dweight != nullptr ? partial_rows * n : 0);
  const cudaError_t status = dispatch_aligned(aligned, [&](auto aligned_tag) {
    constexpr bool ALIGNED = decltype(aligned_tag)::value;
    if (split.chunks > 0) {
      uint64_t* chunk_sums =
          reinterpret_cast<uint64_t*>(workspace + bwd_split_chunk_sums_offset(split, n, dweight != nullptr));
      return launch_bwd_split<T, W, X, ALIGNED>(dy, dy_layout, x, x_layout, dresidual_out, dresidual_out_layout,
                                                weight, offset, round_xhat, rstd, dx, partials, chunk_sums, rows, n,
                                                split, stream);
    }
    // Nested: a condition on ALIGNED alone leaves the call to be checked for x of another type.
    if constexpr (std::is_same_v<X, T>) {
      if constexpr (ALIGNED) {
        if (staged) {
          const auto launch_staged = [&](auto chunks_tag, auto keep_grad_tag) {
            return launch_bwd_staged<decltype(chunks_tag)::value, decltype(keep_grad_tag)::value>(
                dy, dy_layout, x, x_layout, dresidual_out, dresidual_out_layout, weight, offset, round_xhat, rstd,
                dx, partials, rows, n, config.staged_threads, partial_rows, stream);
          };
          if constexpr (kBwdStagedShortRowChunksPerThread != kBwdStagedChunksPerThread) {
            if (config.staged_chunks == kBwdStagedShortRowChunksPerThread) {
              return dispatch_bool(config.staged_keeps_grad, [&](auto keep_grad_tag) {
                return launch_staged(std::integral_constant<int, kBwdStagedShortRowChunksPerThread>{}, keep_grad_tag);
              });
            }
          }
          return launch_staged(std::integral_constant<int, kBwdStagedChunksPerThread>{}, std::false_type{});
        }
      }
    }
    if (config.tiling.items == 0) {
      // Unaligned rows the staged kernel would take for their width sum c on as many threads.
      const int row_dot_threads = config.staged_threads > 0 && std::is_same_v<X, T> ? config.staged_threads
                                                                                       : kLoopedBlockThreads;
      return launch_bwd_columns<T, W, X, ALIGNED>(dy, dy_layout, x, x_layout, dresidual_out, dresidual_out_layout,
                                                  weight, offset, round_xhat, rstd, dx, partials, row_c, rows, n,
                                                  num_sms, row_dot_threads, stream);
    }
    return dispatch_items<kBwdMaxAccumulators / VEC>(config.tiling.items, [&](auto items_tag) {
      constexpr int ITEMS = decltype(items_tag)::value;
      const size_t group_partials_bytes =
          partials != nullptr && config.rows_per_block > 1 ? config.rows_per_block * n * sizeof(float) : 0;
      rms_norm_bwd_kernel<T, W, X, ITEMS, ALIGNED><<<partial_rows, config.block_threads, group_partials_bytes,
                                                     stream>>>(dy, dy_layout, x, x_layout, dresidual_out,
                                                               dresidual_out_layout, weight, offset, round_xhat,
                                                               rstd, dx, partials, rows, static_cast<int>(n),
                                                               config.tiling.threads_per_row);
      return cudaGetLastError();
    });
  });
  if (status != cudaSuccess || dweight == nullptr) return status;
  return launch_dweight_reduce(partials, partial_rows, dweight, n, stream);
}

// Explicit instantiations, in rms_norm_bwd_<type>.cu: a file a type of dy, so that a build compiles
// the types in parallel.
#define RMSNORM_INSTANTIATE_BWD_WORKSPACE(T) \
  template int64_t rms_norm_bwd_workspace_elems<T>(int64_t, int64_t, bool, int);
#define RMSNORM_INSTANTIATE_BWD(T, W, X)                                                                            \
  template cudaError_t rms_norm_bwd<T, W, X>(const T*, RowLayout, const X*, RowLayout, const X*, RowLayout, const W*, \
                                             float, bool, const float*, X*, W*, float*, int64_t, int64_t, int,       \
                                             cudaStream_t);
// Every weight type for dy of type T and x of type X.
#define RMSNORM_INSTANTIATE_BWD_ALL_W(T, X) \
  RMSNORM_INSTANTIATE_BWD(T, float, X)      \
  RMSNORM_INSTANTIATE_BWD(T, __half, X)     \
  RMSNORM_INSTANTIATE_BWD(T, __nv_bfloat16, X)

}  // namespace rmsnorm
