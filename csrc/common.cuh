// Device helpers shared by the RMSNorm kernels: the one vector type with its loads and stores,
// fp32 conversions, the one block reduction (sum or NaN-propagating max), and the row tiling
// that both launch configurations are built from. Torch-free.
//
// Numerics: every kernel computes in fp32. Elementwise products use __fmul_rn / __fsub_rn and
// sums of products use __fmaf_rn, so that the compiler can neither contract nor approximate
// them whatever the nvcc flags (-fmad, --use_fast_math): the bits are those of the formula as
// written, and the same in every build.
//
// Every kernel's __launch_bounds__ spells out its minimum blocks per SM: left out, ptxas capped
// some instantiations at 32 registers (for occupancy) and spilled.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace rmsnorm {

constexpr int kWarpSize = 32;
constexpr int kMaxBlockThreads = 1024;  // CUDA's limit on threads per block
constexpr int kMaxWarpsPerBlock = kMaxBlockThreads / kWarpSize;
constexpr int kVectorBytes = 16;  // the widest global load/store of one thread (LDG.128 / STG.128)
constexpr int kMaxClusterBlocks = 16;  // an H100's largest thread block cluster (non-portable over 8)
// gridDim.x and gridDim.y limits; launchers cap their grids at these and the kernels loop over
// what is left.
constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kMaxGridY = 65535;
// The looped kernels (rows too long for registers) give each row a whole 1024-thread block: the
// shortest rows they get (over 8K elements in the backward, over 16K in the forward) still give
// every thread one Vec or more, and longer rows loop.
constexpr int kLoopedBlockThreads = kMaxBlockThreads;
// Loads each thread of a looped kernel keeps in flight: the unroll of its column loops.
constexpr int kLoopedUnroll = 4;

// Elements of T in one 16-byte vector: 4 floats, 8 halves or bfloat16s. Every kernel handles
// its rows in chunks of this many consecutive elements, in the aligned and in the unaligned
// path alike, so which path runs never changes the order of any sum (see load_vec).
template <typename T>
constexpr int kVecElems = kVectorBytes / static_cast<int>(sizeof(T));

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ constexpr int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// N consecutive elements of T held in registers. Its alignment is that of one global access of
// N elements, capped at 16 bytes: a Vec<float, 8> (the weights of a bf16 row chunk) is read as
// two 16-byte loads.
template <typename T, int N>
struct alignas(N * sizeof(T) < kVectorBytes ? N * sizeof(T) : kVectorBytes) Vec {
  T v[N];
};

// The multiple of elements of T that rows must start on for whole-Vec<T, N> loads and stores:
// the Vec's alignment in elements (N; 4 for the 8 floats of an fp32 residual beside a bf16 chunk).
template <typename T, int N>
constexpr int64_t kVecAlignElems = alignof(Vec<T, N>) / sizeof(T);

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// The N values of a Vec as floats, exactly. bf16 pairs are split out of their 32-bit word with a
// shift (the low, first element) and a mask (the high one): one instruction a value, where
// to_float element by element took a byte permute and a multiply for every high half (SASS,
// bench/NOTES.md v0.9), in kernels whose instructions bound their speed.
template <typename T, int N>
__device__ __forceinline__ void vec_to_floats(const Vec<T, N>& v, float (&f)[N]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16> && N % 2 == 0) {
    uint32_t words[N / 2];
    memcpy(words, &v, sizeof(words));
#pragma unroll
    for (int k = 0; k < N / 2; ++k) {
      f[2 * k] = __uint_as_float(words[k] << 16);
      f[2 * k + 1] = __uint_as_float(words[k] & 0xffff0000u);
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) f[k] = to_float(v.v[k]);
  }
}

// Round-to-nearest-even on the way back to the storage type.
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// A Vec of T from N floats, rounded to nearest even: two at a time for 16-bit T (one
// cvt.rn.bf16x2.f32 / cvt.rn.f16x2.f32 a pair, against a conversion and a byte shuffle per element
// otherwise: the same bits, fewer instructions in kernels that are issue-bound, bench/NOTES.md v0.7).
template <typename T, int N>
__device__ __forceinline__ Vec<T, N> vec_from_floats(const float (&f)[N]) {
  Vec<T, N> out;
  // The pairs are copied in whole: split into .x and .y, each pair was taken apart and put back
  // together (two byte permutes a pair, SASS).
  if constexpr (std::is_same_v<T, __nv_bfloat16> && N % 2 == 0) {
    __nv_bfloat162 pairs[N / 2];
#pragma unroll
    for (int k = 0; k < N; k += 2) pairs[k / 2] = __floats2bfloat162_rn(f[k], f[k + 1]);
    memcpy(&out, pairs, sizeof(out));
  } else if constexpr (std::is_same_v<T, __half> && N % 2 == 0) {
    __half2 pairs[N / 2];
#pragma unroll
    for (int k = 0; k < N; k += 2) pairs[k / 2] = __floats2half2_rn(f[k], f[k + 1]);
    memcpy(&out, pairs, sizeof(out));
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out.v[k] = from_float<T>(f[k]);
  }
  return out;
}

// Zero in T, as a bit pattern (the conversion intrinsics would not be folded away).
template <typename T>
__device__ __forceinline__ T zero_value();
template <>
__device__ __forceinline__ float zero_value<float>() { return 0.0f; }
template <>
__device__ __forceinline__ __half zero_value<__half>() { return __ushort_as_half(0); }
template <>
__device__ __forceinline__ __nv_bfloat16 zero_value<__nv_bfloat16>() { return __ushort_as_bfloat16(0); }

// The unsigned word of one aligned global access to a Vec of BYTES bytes: 16 bytes at most.
// Loads and stores go through these words with __ldg / __stwb, which emit exactly one vector
// instruction per word: copied as a struct, the Vec was split into 4-byte stores in some
// unrolled loop copies.
template <int BYTES>
using AccessWord = std::conditional_t<(BYTES >= 16), uint4, std::conditional_t<BYTES == 8, uint2, uint32_t>>;

// Elements p[col, col + N) of global memory that no thread writes during the kernel, as a Vec,
// with zeros for those at or past `end` (zeros add nothing to any sum the kernels take).
// ALIGNED means the launcher checked that p + col is aligned for the Vec and that N divides
// `end` whenever col < end: vector loads then read the chunk. Otherwise each element is read on
// its own, so any alignment and any length work. Index is int where the launcher bounds n (the
// register kernels), int64_t elsewhere.
template <bool ALIGNED, int N, typename T, typename Index>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p, Index col, Index end) {
  Vec<T, N> out;
  if constexpr (ALIGNED) {
    using Word = AccessWord<sizeof(out)>;
    static_assert(sizeof(out) % sizeof(Word) == 0, "a Vec is a whole number of access words");
    if (col < end) {
#pragma unroll
      for (int w = 0; w < static_cast<int>(sizeof(out) / sizeof(Word)); ++w) {
        reinterpret_cast<Word*>(&out)[w] = __ldg(reinterpret_cast<const Word*>(p + col) + w);
      }
    } else {
#pragma unroll
      for (int k = 0; k < N; ++k) out.v[k] = zero_value<T>();
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out.v[k] = col + k < end ? p[col + k] : zero_value<T>();
  }
  return out;
}

// Copies the 16 bytes at global `src` to shared `dst` (both 16-byte aligned) without passing them
// through registers: cp.async (sm_80 and later), so a row in flight costs the SM no registers; the
// .cg form leaves L1 to the weight. Visible to the calling thread, and only to it, after
// wait_async_copies(). Before sm_80 a plain load and store, the same bytes.
__device__ __forceinline__ void copy_async_16(void* dst, const void* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst_shared = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst_shared), "l"(src) : "memory");
#else
  *static_cast<uint4*>(dst) = __ldg(static_cast<const uint4*>(src));
#endif
}

// The chunk a 16-byte word of a shared-memory stage holds (copied there by copy_async_16), read as
// one word (LDS.128: as a Vec, a chunk was read element by element).
template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> load_stage_word(const uint4* word) {
  static_assert(sizeof(Vec<T, VEC>) == sizeof(uint4), "a staged chunk is one 16-byte word");
  const uint4 bits = *word;
  Vec<T, VEC> chunk;
  memcpy(&chunk, &bits, sizeof(chunk));
  return chunk;
}

// The shared memory capacities an SM can be set to, in KB (CUDA C++ Programming Guide, compute
// capabilities 8.x and 9.0: a device offers those up to its maximum).
constexpr int kSharedCapacitiesKb[] = {0, 8, 16, 32, 64, 100, 132, 164, 196, 228};
// Shared memory the system keeps for each resident block.
constexpr int kReservedSharedBytesPerBlock = 1024;

// Lets `kernel` take stage_bytes of dynamic shared memory (over 48 KB must be asked for) and asks
// for a shared memory carveout of carveout_percent, the rest of the SM's memory being L1.
template <typename Kernel>
cudaError_t set_stage_attributes(Kernel kernel, int stage_bytes, int carveout_percent) {
  const cudaError_t status = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, stage_bytes);
  if (status != cudaSuccess) return status;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout, carveout_percent);
}

// The carveout percent that sets an SM with max_shared bytes of shared memory at most to the
// smallest capacity holding blocks_per_sm blocks of stage_bytes (as many as its largest holds where
// it holds fewer) and min_shared_bytes. The carveout is a percent of the largest capacity, and the
// driver takes the smallest capacity at or above that many bytes (H100: 44% is 100.3 KB and got
// 132 KB, bench/NOTES.md v0.30), so the percent is rounded down from the capacity wanted, not up
// from the bytes: capacities lie 8 KB or more apart, one percent is at most 2.3 KB.
constexpr int shared_capacity_percent(int64_t stage_bytes, int64_t blocks_per_sm, int64_t min_shared_bytes,
                                      int64_t max_shared) {
  const int64_t block_bytes = stage_bytes + kReservedSharedBytesPerBlock;
  const int64_t blocks = std::max<int64_t>(1, std::min(blocks_per_sm, max_shared / block_bytes));
  const int64_t wanted = std::max(blocks * block_bytes, min_shared_bytes);
  for (const int kb : kSharedCapacitiesKb) {
    const int64_t capacity = int64_t{kb} * 1024;
    if (capacity >= wanted && capacity <= max_shared) return static_cast<int>(100 * capacity / max_shared);
  }
  return 100;
}
// H100 (228 KB): 2 stages of 32 KB and 100 KB at least get 43% (98.0 KB, so 100 KB); 2 of 64 KB 57%
// (130.0 KB, so 132 KB); 128 KB, one of which fits, 57% too; all 100%. A100 (164 KB): 2 of 64 KB 80%.
static_assert(shared_capacity_percent(32 * 1024, 2, 100 * 1024, 228 * 1024) == 43);
static_assert(shared_capacity_percent(64 * 1024, 2, 100 * 1024, 228 * 1024) == 57);
static_assert(shared_capacity_percent(128 * 1024, 2, 100 * 1024, 228 * 1024) == 57);
static_assert(shared_capacity_percent(32 * 1024, 1, 300 * 1024, 228 * 1024) == 100);
static_assert(shared_capacity_percent(64 * 1024, 2, 0, 164 * 1024) == 80);

// The shared memory an SM of the current device can hold at most, in bytes.
inline cudaError_t max_shared_bytes_per_sm(int* bytes) {
  int device = 0;
  const cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  return cudaDeviceGetAttribute(bytes, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
}

// Asks L1 for the line holding global address p (prefetch.global.L1): no register waits on it.
__device__ __forceinline__ void prefetch_l1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}

// Waits for every copy_async_16 this thread has issued.
__device__ __forceinline__ void wait_async_copies() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// One access word stored with st.global.L1::no_allocate: its line is not brought into L1. No
// "memory" clobber, so that the compiler may still hoist later loads above it: the callers never
// read back, in the same kernel, what they store this way.
__device__ __forceinline__ void store_word_no_l1_allocate(uint4* p, uint4 v) {
  asm volatile("st.global.L1::no_allocate.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w));
}
__device__ __forceinline__ void store_word_no_l1_allocate(uint2* p, uint2 v) {
  asm volatile("st.global.L1::no_allocate.v2.b32 [%0], {%1, %2};" ::"l"(p), "r"(v.x), "r"(v.y));
}
__device__ __forceinline__ void store_word_no_l1_allocate(uint32_t* p, uint32_t v) {
  asm volatile("st.global.L1::no_allocate.b32 [%0], %1;" ::"l"(p), "r"(v));
}

// Stores the elements of `in` that fall in [col, end) to global memory p[col, ...); same
// ALIGNED contract. NO_L1_ALLOCATE (aligned stores only): the stored lines stay out of L1, where
// they would evict what a kernel reads there again and again (a row's weight); nothing may read
// them back in the same kernel (see store_word_no_l1_allocate). Where it pays, and where the
// default store read better, is measured beside its users (kDxNoL1Allocate, kDynamicYNoL1AllocateAboveN).
template <bool ALIGNED, bool NO_L1_ALLOCATE = false, int N, typename T, typename Index>
__device__ __forceinline__ void store_vec(T* p, Index col, Index end, const Vec<T, N>& in) {
  if constexpr (ALIGNED) {
    using Word = AccessWord<sizeof(in)>;
    if (col < end) {
#pragma unroll
      for (int w = 0; w < static_cast<int>(sizeof(in) / sizeof(Word)); ++w) {
        Word* word = reinterpret_cast<Word*>(p + col) + w;
        const Word value = reinterpret_cast<const Word*>(&in)[w];
        if constexpr (NO_L1_ALLOCATE) {
          store_word_no_l1_allocate(word, value);
        } else {
          __stwb(word, value);
        }
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if (col + k < end) p[col + k] = in.v[k];
    }
  }
}

// The reductions the kernels take over a row: fp32 sums, and maxima that propagate NaN (fmaxf
// drops a NaN operand, but a row's amax must be NaN when the row holds one, as torch.amax's is).
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
  static constexpr float kIdentity = 0.0f;
};
struct NanMaxOp {
  // One max.NaN (sm_80 and later) against a compare, a NaN test and a select: the fp8 epilogue's
  // amax takes one a value. Its NaN is the canonical one, not a's payload.
  __device__ __forceinline__ float operator()(float a, float b) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float max;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(max) : "f"(a), "f"(b));
    return max;
#else
    return (a > b || a != a) ? a : b;
#endif
  }
  static constexpr float kIdentity = -INFINITY;
};

// op over each aligned group of `width` lanes (a power of two <= 32) by a butterfly of xor
// shuffles. Every lane of the group ends with the same bits: each step combines the same two
// partial results, only in swapped operand order, and both ops are commutative (up to which NaN
// payload a max keeps). All 32 lanes of the warp must call it.
template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, int width, Op op) {
  for (int offset = width / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// op over v of each group of `group_threads` consecutive threads, returned to every thread of the
// group. group_threads is either a power of two <= 32 (several groups per block: shuffles only)
// or a multiple of 32 equal to blockDim.x (one group: warp results, then shared memory). The
// order of the operations is fixed by group_threads alone. All threads of the block must call
// it, the same number of times.
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, int group_threads, Op op) {
  __shared__ float warp_results[kMaxWarpsPerBlock];
  v = warp_reduce(v, group_threads < kWarpSize ? group_threads : kWarpSize, op);
  if (group_threads <= kWarpSize) return v;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (lane == 0) warp_results[warp] = v;
  __syncthreads();
  // Every warp combines the warp results the same way, so every thread gets the same bits
  // without a second trip through shared memory.
  v = lane < group_threads / kWarpSize ? warp_results[lane] : Op::kIdentity;
  v = warp_reduce(v, kWarpSize, op);
  __syncthreads();  // warp_results is written again by the next call
  return v;
}

__device__ __forceinline__ float block_reduce_sum(float v, int group_threads) {
  return block_reduce(v, group_threads, SumOp{});
}

__device__ __forceinline__ float block_reduce_max(float v, int group_threads) {
  return block_reduce(v, group_threads, NanMaxOp{});
}

// Whether `kernel` was compiled for sm_90 or later, so that its cluster code is there (the device
// running it then has clusters too): a build for sm_80 alone, its PTX compiled for an H100 at load
// time, has none, and its kernels must not be launched in clusters.
template <typename Kernel>
bool compiled_with_clusters(Kernel kernel) {
  cudaFuncAttributes attributes;
  return cudaFuncGetAttributes(&attributes, kernel) == cudaSuccess && attributes.ptxVersion >= 90;
}

// Thread block clusters (sm_90 and later; the launchers use them only there, and these compile to
// nothing below). A row cut into slices, one a block of a cluster along x (rank blockIdx.x), sums
// and maxima over the cluster as quack does: each block sends its total to every block's shared
// memory with st.async, which counts the bytes on the receiver's mbarrier, and each waits on its
// own mbarrier for the cluster's totals. No cluster-wide barrier a row (barrier.cluster.arrive
// .release costs a MEMBAR: 2 of 14 stall cycles an instruction in ncu), and no block waits for
// another beyond the totals it needs.
struct ClusterReduction {
  float (*slots)[kMaxClusterBlocks];  // [2][kMaxClusterBlocks] shared: the totals of every rank
  uint64_t* barriers;                 // [2] shared mbarriers, counting the slots' bytes
  unsigned parity;                    // the slots and barrier of the next reduction
  unsigned phases;                    // bit p: the phase of barriers[p] the next wait on it waits for
  bool peers_ready;                   // whether the cluster's barriers are known to be initialized
};

__device__ __forceinline__ unsigned shared_address(const void* pointer) {
  return static_cast<unsigned>(__cvta_generic_to_shared(pointer));
}

// Before the first cluster_reduce: thread 0 initializes the block's barriers, which the blocks of
// the cluster must see before they send to them; the arrival here is waited for in the first
// cluster_reduce, after the row's loads, so that it costs no time of its own.
__device__ __forceinline__ ClusterReduction start_cluster_reduction(float (&slots)[2][kMaxClusterBlocks],
                                                                    uint64_t (&barriers)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (threadIdx.x == 0) {
    for (uint64_t& barrier : barriers) {
      asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(shared_address(&barrier)) : "memory");
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
  return {slots, barriers, 0u, 0u, false};
}

// op over the block totals of the cluster, returned to every thread of it: every thread of the
// block holds its block's total (from block_reduce), threads 0..gridDim.x - 1 send it to the
// blocks of those ranks, and every thread combines the cluster's totals in rank order, so every
// block gets the same bits. Two slots and barriers, alternated from call to call: a block sends to
// a slot again two calls later, after it has received every block's total of the call between,
// which each sent only once its threads were past the reading of the slot (block_reduce's barrier
// separates a call's reading from the next call's sending). Every block makes the same calls, and
// each waits for every total sent to it, so none leaves with a total still on its way to it.
template <typename Op>
__device__ __forceinline__ float cluster_reduce(ClusterReduction& state, float block_total, Op op) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const unsigned p = state.parity;
  state.parity ^= 1u;
  if (!state.peers_ready) {
    asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
    state.peers_ready = true;
  }
  const unsigned barrier = shared_address(&state.barriers[p]);
  if (threadIdx.x == 0) {
    uint64_t arrival_state;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 %0, [%1], %2;"
                 : "=l"(arrival_state)
                 : "r"(barrier), "r"(gridDim.x * static_cast<unsigned>(sizeof(float)))
                 : "memory");
  }
  if (threadIdx.x < gridDim.x) {
    const unsigned rank = threadIdx.x;
    unsigned remote_slot;
    unsigned remote_barrier;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
                 : "=r"(remote_slot)
                 : "r"(shared_address(&state.slots[p][blockIdx.x])), "r"(rank));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote_barrier) : "r"(barrier), "r"(rank));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];"
                 ::"r"(remote_slot), "r"(__float_as_uint(block_total)), "r"(remote_barrier)
                 : "memory");
  }
  const unsigned phase = (state.phases >> p) & 1u;
  state.phases ^= 1u << p;
  unsigned done = 0;
  do {
    asm volatile(
        "{\n\t.reg .pred complete;\n\t"
        "mbarrier.try_wait.parity.shared::cta.b64 complete, [%1], %2;\n\t"
        "selp.u32 %0, 1, 0, complete;\n\t}"
        : "=r"(done)
        : "r"(barrier), "r"(phase)
        : "memory");
  } while (done == 0);
  float total = state.slots[p][0];
#pragma unroll
  for (unsigned rank = 1; rank < kMaxClusterBlocks; ++rank) {
    if (rank < gridDim.x) total = op(total, state.slots[p][rank]);
  }
  return total;
#else
  return block_total;
#endif
}

// Where a thread of a register kernel works: its block's rows_per_block rows at a time, row
// row_in_block of them, as thread `lane` of that row's threads_per_row. threads_per_row is a power
// of two <= 32 (several rows per block, blockDim.x a power of two too) or blockDim.x (one row per
// block): shifts and masks, not divisions. A 32-bit division is about 20 instructions and a 64-bit
// one about 70, paid by every thread for the one row group it mostly handles: a fifth of the
// forward's instructions at 16 elements a thread, in kernels ncu found issue-bound
// (bench/NOTES.md v0.7).
struct RowGroupPlace {
  int rows_per_block;
  int row_in_block;
  int lane;
};

__device__ __forceinline__ RowGroupPlace row_group_place(int threads_per_row) {
  if (threads_per_row == static_cast<int>(blockDim.x)) return {1, 0, static_cast<int>(threadIdx.x)};
  const int shift = __ffs(threads_per_row) - 1;
  return {static_cast<int>(blockDim.x) >> shift, static_cast<int>(threadIdx.x) >> shift,
          static_cast<int>(threadIdx.x) & (threads_per_row - 1)};
}

// How the threads of a block hold whole rows in registers: each thread of a row keeps `items`
// Vecs of the row, thread t of the row owning chunks t, t + threads_per_row, ... (chunk c is
// elements [c * vec, c * vec + vec)).
struct RowTiling {
  int threads_per_row;  // a power of two <= 32 (several rows per block), or a multiple of 32 (one row per block)
  int items;            // Vecs per thread: 1, 2 or 4 (<= max_items); 0 when the row does not fit
};

__host__ __device__ constexpr int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

// The tiling of a row of `chunks` Vecs, given the largest items per thread that stays in
// registers without spilling (`max_items`: 1, 2 or 4), the most threads a row may have
// (`max_threads_per_row`, a multiple of 32) and the Vecs a thread of a row of at most one warp
// takes (`sub_warp_items`, a power of two):
//   chunks <= 32:              items = min(sub_warp_items, max_items, next_pow2(chunks)),
//                              threads_per_row = next_pow2(ceil(chunks / items)): sub-warp groups
//                              reduce with shuffles alone, several rows per block;
//   chunks <= 32 * max_items:  one warp per row, items = next_pow2(ceil(chunks / 32)): still
//                              shuffles alone;
//   otherwise one row per block: the fewest items (1, 2, 4, ...) that keep the row within
//                              `preferred_threads_per_row` threads, else max_items and up to
//                              max_threads_per_row threads, rounded up to whole warps;
//   beyond that the row does not fit (items == 0): the looped kernels take it.
// Rounding threads up to a warp, not to a power of two, keeps the idle tail of a row below
// one warp's worth of chunks.
inline RowTiling tile_row(int64_t chunks, int max_items, int preferred_threads_per_row, int max_threads_per_row,
                          int sub_warp_items) {
  if (chunks <= kWarpSize) {
    const int items = static_cast<int>(std::min<int64_t>({sub_warp_items, max_items, next_pow2(chunks)}));
    return {static_cast<int>(next_pow2(ceil_div(chunks, items))), items};
  }
  if (chunks <= int64_t{kWarpSize} * max_items) {
    return {kWarpSize, static_cast<int>(next_pow2(ceil_div(chunks, kWarpSize)))};
  }
  for (int items = 1; items <= max_items; items *= 2) {
    if (ceil_div(chunks, items) <= preferred_threads_per_row) {
      return {static_cast<int>(round_up(ceil_div(chunks, items), kWarpSize)), items};
    }
  }
  const int64_t threads = round_up(ceil_div(chunks, max_items), kWarpSize);
  if (threads <= max_threads_per_row) return {static_cast<int>(threads), max_items};
  return {0, 0};
}

// Calls launch(std::integral_constant<int, ITEMS>{}) for items in {1, 2, 4}, instantiating only
// ITEMS <= MAX_ITEMS: the one place where the runtime items count becomes a template constant.
template <int MAX_ITEMS, typename F>
cudaError_t dispatch_items(int items, F&& launch) {
  switch (items) {
    case 1: return launch(std::integral_constant<int, 1>{});
    case 2:
      if constexpr (MAX_ITEMS >= 2) return launch(std::integral_constant<int, 2>{});
      break;
    case 4:
      if constexpr (MAX_ITEMS >= 4) return launch(std::integral_constant<int, 4>{});
      break;
  }
  return cudaErrorInvalidConfiguration;  // tile_row never returns another items count
}

// Calls launch(std::bool_constant<flag>{}): a runtime flag made a template constant.
template <typename F>
cudaError_t dispatch_bool(bool flag, F&& launch) {
  return flag ? launch(std::true_type{}) : launch(std::false_type{});
}

// Calls launch(std::bool_constant<aligned>{}).
template <typename F>
cudaError_t dispatch_aligned(bool aligned, F&& launch) {
  return dispatch_bool(aligned, launch);
}

// Whether p is a multiple of `bytes` (a power of two).
inline bool is_aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

}  // namespace rmsnorm
