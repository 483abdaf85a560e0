// RMSNorm forward: y = (x * rstd) * (weight + weight_offset), rstd = 1 / sqrt(mean(x^2) + eps)
// per row. With a residual (add_rms_norm) the row is first replaced by r = x + residual, added in
// fp32 and rounded to T, which is written to residual_out and then normalized as x would be: y
// has the bits rms_norm(residual_out) would give.
//
// Two kernels, each taking the residual as a runtime option (a null pointer: the same branch for
// the whole grid). A template flag would double the instantiations and the compile time and
// save no spill: the one case that spills with a residual (see kRegisterKernelAddsResidual)
// spills as a template instantiation too.
//   rms_norm_fwd_kernel:        the row is held in registers (ITEMS Vecs per thread) between the
//                               sum of squares and the scaling, so x (and residual) are read from
//                               DRAM once and y (and residual_out) written once.
//   rms_norm_fwd_looped_kernel: rows too long for registers; one block per row walks the row
//                               twice (sum of squares, then scaling), the second time mostly
//                               from L2. With a residual both walks read x and residual and
//                               form r: reading residual_out back instead would read memory the
//                               kernel writes, which load_vec's non-coherent loads must not.
// The launch configuration depends on n and sizeof(T) only, and the aligned and unaligned paths
// add in the same order, so a row's bits never depend on the other rows, on the batch size or
// on where the row sits in memory.
#include <algorithm>

#include "common.cuh"
#include "rms_norm.h"

namespace rmsnorm {
namespace {

// ---------------------------------------------------------------------------------------------
// Launch configuration
// ---------------------------------------------------------------------------------------------

// Largest ITEMS: 4 Vecs are 16 registers of row data (32 in the unaligned half/bf16 path,
// one element per register), which with the weights, addresses and masks fits the 64-register
// cap of a 1024-thread block without spills (ptxas -v; tests/test_cuda_compile.py checks it).
// 8 Vecs spilled. Rows longer than 1024 threads x 4 Vecs (32K halves, 16K floats) go to the
// looped kernel.
constexpr int kFwdMaxItems = 4;
// One row per block aims at this many threads, more items per thread before more threads: at
// 2048 bf16 elements 256 threads of one Vec each reached 77% of copy, 64 threads of 4 Vecs 96%
// (more bytes in flight per thread, less reduction per byte); 128 and 64 tie elsewhere
// (bench/tune_cuda.py, bench/NOTES.md v0.4).
constexpr int kFwdPreferredThreadsPerRow = 128;
// Rows of at most one warp share a block of this many threads (128 / threads_per_row rows).
// First guess, to be tuned by the benchmark.
constexpr int kFwdSubWarpBlockThreads = 128;

// Whether rms_norm_fwd_kernel<T, W, ITEMS, ALIGNED, *> adds a residual. Not with 4 Vecs of a 2-byte
// T unaligned: there x and residual arrive one element per register, and their 64 loads in flight
// spilled under the 64-register cap (ptxas -v, sm_90 most), whether the residual was a runtime
// option or a template flag. Those rows go to rms_norm_fwd_looped_kernel with the register
// kernel's threads_per_row threads a block (see the launcher).
template <typename T, int ITEMS, bool ALIGNED>
constexpr bool kRegisterKernelAddsResidual = ALIGNED || sizeof(T) > 2 || ITEMS < kFwdMaxItems;

struct FwdConfig {
  RowTiling tiling;    // tiling.items == 0: the row does not fit, rms_norm_fwd_looped_kernel
  int rows_per_block;  // rows of one block, each handled by tiling.threads_per_row threads
  int block_threads;
};

// The forward configuration for rows of n elements of elem_bytes each: from n and the element
// size only, never from the number of rows (batch invariance).
FwdConfig fwd_config(int64_t n, int elem_bytes) {
  const RowTiling tiling = tile_row(ceil_div(n, kVectorBytes / elem_bytes), kFwdMaxItems,
                                    kFwdPreferredThreadsPerRow, kMaxBlockThreads);
  if (tiling.items == 0) return {tiling, 1, kLoopedBlockThreads};
  if (tiling.threads_per_row <= kWarpSize) {
    return {tiling, kFwdSubWarpBlockThreads / tiling.threads_per_row, kFwdSubWarpBlockThreads};
  }
  return {tiling, 1, tiling.threads_per_row};
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
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const float v = to_float(x.v[k]);
    sum_sq = __fmaf_rn(v, v, sum_sq);
  }
  return sum_sq;
}

// The chunk at col of the row to normalize: x_row's, or with residual_row (not nullptr) the sum
// x + residual in fp32 rounded to T, the value residual_out stores (elements past end are zero).
template <bool ALIGNED, int VEC, typename T, typename Index>
__device__ __forceinline__ Vec<T, VEC> load_input(const T* x_row, const T* residual_row, Index col, Index end) {
  Vec<T, VEC> in = load_vec<ALIGNED, VEC>(x_row, col, end);
  if (residual_row != nullptr) {
    const Vec<T, VEC> residual = load_vec<ALIGNED, VEC>(residual_row, col, end);
#pragma unroll
    for (int k = 0; k < VEC; ++k) in.v[k] = from_float<T>(__fadd_rn(to_float(in.v[k]), to_float(residual.v[k])));
  }
  return in;
}

// x * rstd, rounded to T and back when round_xhat (casting_mode "llama").
template <typename T>
__device__ __forceinline__ float normalized(T x, float rstd, bool round_xhat) {
  const float xhat = __fmul_rn(to_float(x), rstd);
  return round_xhat ? to_float(from_float<T>(xhat)) : xhat;
}

// Stores y = (x * rstd) * (weight + weight_offset) for the chunk of row y_row at col (elements
// past n are skipped). weight == nullptr: y = x * rstd.
template <bool ALIGNED, int VEC, typename T, typename W, typename Index>
__device__ __forceinline__ void store_normalized(T* y_row, const Vec<T, VEC>& x, const W* weight, float weight_offset,
                                                 bool round_xhat, Index col, Index n, float rstd) {
  Vec<T, VEC> y;
  if (weight != nullptr) {
    const Vec<W, VEC> w = load_vec<ALIGNED, VEC>(weight, col, n);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float scale = __fadd_rn(to_float(w.v[k]), weight_offset);
      y.v[k] = from_float<T>(__fmul_rn(normalized(x.v[k], rstd, round_xhat), scale));
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) y.v[k] = from_float<T>(normalized(x.v[k], rstd, round_xhat));
  }
  store_vec<ALIGNED>(y_row, col, n, y);
}

// Rows held in registers. Block b handles row groups b, b + gridDim.x, ...; row group g is rows
// [g * R, g * R + R), R = blockDim.x / threads_per_row, thread t of the block working on row
// g * R + t / threads_per_row. Thread j = t % threads_per_row of a row holds the row's chunks
// j, j + threads_per_row, ..., (ITEMS of them; chunk c is elements [c * VEC, c * VEC + VEC)).
//
// ROUND_XHAT (casting_mode "llama") is a template flag here, a runtime one in the looped kernel:
// as a runtime branch it made the unaligned 2-byte 4-Vec instantiations spill (ptxas -v).
template <typename T, typename W, int ITEMS, bool ALIGNED, bool ROUND_XHAT>
__global__ void __launch_bounds__(kMaxBlockThreads, 1) rms_norm_fwd_kernel(
    const T* __restrict__ x,         // [rows, n], row i at x + i * x_row_stride
    int64_t x_row_stride,            // elements between consecutive rows of x
    const T* __restrict__ residual,  // [rows, n], row i at residual + i * residual_row_stride; or nullptr
    int64_t residual_row_stride,     //   (not read unless kRegisterKernelAddsResidual<T, ITEMS, ALIGNED>)
    const W* __restrict__ weight,    // [n], or nullptr for no weight
    float weight_offset,             // added to the weight
    T* __restrict__ y,               // [rows, n], contiguous
    T* __restrict__ residual_out,    // [rows, n], contiguous; nullptr when residual is
    float* __restrict__ rstd,        // [rows]
    int64_t rows,
    int n,                           // <= threads_per_row * ITEMS * VEC
    float eps,
    int threads_per_row) {           // RowTiling::threads_per_row: a power of two <= 32, or blockDim.x
  constexpr int VEC = kVecElems<T>;
  const int rows_per_block = blockDim.x / threads_per_row;
  // Column of this thread's first chunk, and the distance to its next one.
  const int first_col = static_cast<int>(threadIdx.x % threads_per_row) * VEC;
  const int col_step = threads_per_row * VEC;
  const int64_t row_groups = ceil_div(rows, rows_per_block);
  for (int64_t group = blockIdx.x; group < row_groups; group += gridDim.x) {
    const int64_t row = group * rows_per_block + threadIdx.x / threads_per_row;
    // Threads of a row past the last one still take part in the reduction (its shuffles need
    // every lane of the warp), on zeros, and store nothing.
    const bool in_range = row < rows;
    const int end = in_range ? n : 0;
    const int64_t load_row = in_range ? row : 0;
    const T* x_row = x + load_row * x_row_stride;
    const T* residual_row = kRegisterKernelAddsResidual<T, ITEMS, ALIGNED> && residual != nullptr
                                ? residual + load_row * residual_row_stride
                                : nullptr;

    Vec<T, VEC> x_chunks[ITEMS];  // with a residual, the rounded sums r
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      x_chunks[i] = load_input<ALIGNED, VEC>(x_row, residual_row, first_col + i * col_step, end);
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
    if (!in_range) continue;

    if (first_col == 0) rstd[row] = row_rstd;
    T* y_row = y + row * n;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      store_normalized<ALIGNED>(y_row, x_chunks[i], weight, weight_offset, ROUND_XHAT, first_col + i * col_step, n,
                                row_rstd);
    }
  }
}

// Rows too long for registers, on kLoopedBlockThreads threads a block; also, on
// threads_per_row threads, the residual rows rms_norm_fwd_kernel does not add (see
// kRegisterKernelAddsResidual). Block b handles rows b, b + gridDim.x, ...; thread t walks the
// row's chunks t, t + blockDim.x, ... twice: sum of squares, then scaling. With a residual, both
// walks form r = x + residual from the inputs (the same bits each time), the second one also
// storing it to residual_out.
template <typename T, typename W, bool ALIGNED>
__global__ void __launch_bounds__(kLoopedBlockThreads, 1) rms_norm_fwd_looped_kernel(
    const T* __restrict__ x,         // [rows, n], row i at x + i * x_row_stride
    int64_t x_row_stride,            // elements between consecutive rows of x
    const T* __restrict__ residual,  // [rows, n], row i at residual + i * residual_row_stride; or nullptr
    int64_t residual_row_stride,
    const W* __restrict__ weight,    // [n], or nullptr for no weight
    float weight_offset,             // added to the weight
    T* __restrict__ y,               // [rows, n], contiguous
    T* __restrict__ residual_out,    // [rows, n], contiguous; nullptr when residual is
    float* __restrict__ rstd,        // [rows]
    int64_t rows,
    int64_t n,
    float eps,
    bool round_xhat) {
  constexpr int VEC = kVecElems<T>;
  const int64_t first_col = int64_t{threadIdx.x} * VEC;
  const int64_t col_step = int64_t{blockDim.x} * VEC;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x_row = x + row * x_row_stride;
    const T* residual_row = residual != nullptr ? residual + row * residual_row_stride : nullptr;
    float sum_sq = 0.0f;
#pragma unroll(kLoopedUnroll)
    for (int64_t col = first_col; col < n; col += col_step) {
      sum_sq = add_squares(sum_sq, load_input<ALIGNED, VEC>(x_row, residual_row, col, n));
    }
    const float row_rstd = rstd_of(block_reduce_sum(sum_sq, blockDim.x), n, eps);

    if (threadIdx.x == 0) rstd[row] = row_rstd;
    T* y_row = y + row * n;
#pragma unroll(kLoopedUnroll)
    for (int64_t col = first_col; col < n; col += col_step) {
      const Vec<T, VEC> in = load_input<ALIGNED, VEC>(x_row, residual_row, col, n);
      if (residual_row != nullptr) store_vec<ALIGNED>(residual_out + row * n, col, n, in);
      store_normalized<ALIGNED>(y_row, in, weight, weight_offset, round_xhat, col, n, row_rstd);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Launcher
// ---------------------------------------------------------------------------------------------

template <typename T, typename W>
cudaError_t rms_norm_fwd(const T* x, int64_t x_row_stride, const T* residual, int64_t residual_row_stride,
                         const W* weight, float weight_offset, T* y, T* residual_out, float* rstd, int64_t rows,
                         int64_t n, float eps, bool round_xhat, cudaStream_t stream) {
  if (rows < 0 || n < 0 || (residual == nullptr) != (residual_out == nullptr)) return cudaErrorInvalidValue;
  if (rows == 0 || n == 0) return cudaSuccess;
  constexpr int VEC = kVecElems<T>;
  const FwdConfig config = fwd_config(n, sizeof(T));
  // w + (-0) is w for every w, -0 included, while w + (+0) turns -0 into +0: a zero offset passed
  // as -0 leaves y bitwise what it is without one.
  const float offset = weight_offset == 0.0f ? -0.0f : weight_offset;
  // Whole Vecs can be read and written when every row starts on a 16-byte boundary and n is a
  // multiple of VEC (then no chunk straddles the row's end); the weight's Vec needs its own
  // alignment (16 bytes, or 8 for the 4 bf16/half weights of a float row chunk).
  const bool aligned =
      n % VEC == 0 && is_aligned(x, kVectorBytes) && x_row_stride % VEC == 0 && is_aligned(y, kVectorBytes) &&
      (residual == nullptr || (is_aligned(residual, kVectorBytes) && residual_row_stride % VEC == 0 &&
                               is_aligned(residual_out, kVectorBytes))) &&
      (weight == nullptr || is_aligned(weight, alignof(Vec<W, VEC>)));
  return dispatch_aligned(aligned, [&](auto aligned_tag) {
    constexpr bool ALIGNED = decltype(aligned_tag)::value;
    const auto launch_looped = [&](int block_threads) {
      rms_norm_fwd_looped_kernel<T, W, ALIGNED><<<std::min(rows, kMaxGridX), block_threads, 0, stream>>>(
          x, x_row_stride, residual, residual_row_stride, weight, offset, y, residual_out, rstd, rows, n, eps,
          round_xhat);
      return cudaGetLastError();
    };
    if (config.tiling.items == 0) return launch_looped(config.block_threads);
    return dispatch_items<kFwdMaxItems>(config.tiling.items, [&](auto items_tag) {
      constexpr int ITEMS = decltype(items_tag)::value;
      if constexpr (!kRegisterKernelAddsResidual<T, ITEMS, ALIGNED>) {
        // threads_per_row is a multiple of 32 here (ITEMS > 1). On a block of that many threads
        // the looped kernel has each thread sum the chunks rms_norm_fwd_kernel gives it, in the
        // same order, and the block reduce them the same way: the same bits, for x and residual
        // read twice.
        if (residual != nullptr) return launch_looped(config.tiling.threads_per_row);
      }
      const int64_t grid = std::min(ceil_div(rows, config.rows_per_block), kMaxGridX);
      return dispatch_bool(round_xhat, [&](auto round_tag) {
        rms_norm_fwd_kernel<T, W, ITEMS, ALIGNED, decltype(round_tag)::value>
            <<<grid, config.block_threads, 0, stream>>>(x, x_row_stride, residual, residual_row_stride, weight, offset,
                                                        y, residual_out, rstd, rows, static_cast<int>(n), eps,
                                                        config.tiling.threads_per_row);
        return cudaGetLastError();
      });
    });
  });
}

#define RMSNORM_INSTANTIATE_FWD(T, W)                                                                   \
  template cudaError_t rms_norm_fwd<T, W>(const T*, int64_t, const T*, int64_t, const W*, float, T*, T*, \
                                          float*, int64_t, int64_t, float, bool, cudaStream_t);
RMSNORM_INSTANTIATE_FWD(float, float)
RMSNORM_INSTANTIATE_FWD(float, __half)
RMSNORM_INSTANTIATE_FWD(float, __nv_bfloat16)
RMSNORM_INSTANTIATE_FWD(__half, float)
RMSNORM_INSTANTIATE_FWD(__half, __half)
RMSNORM_INSTANTIATE_FWD(__half, __nv_bfloat16)
RMSNORM_INSTANTIATE_FWD(__nv_bfloat16, float)
RMSNORM_INSTANTIATE_FWD(__nv_bfloat16, __half)
RMSNORM_INSTANTIATE_FWD(__nv_bfloat16, __nv_bfloat16)
#undef RMSNORM_INSTANTIATE_FWD

}  // namespace rmsnorm
