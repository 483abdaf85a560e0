// Where the rows of an input start in memory. Torch-free, and host as well as device code: the
// launchers in rms_norm.h take a RowLayout per input, so the binding (a host-compiler translation
// unit, which cannot include common.cuh) builds them with make_row_layout.
//
// An input is [*lead, n] with 1 to kMaxLeadDims leading dims of any strides, 0 and
// non-mergeable ones included (per-head QK-norm reads q = qkv[..., :H*D].view(B*S, H, D), strides
// (3*H*D, D, 1), without a copy), and a unit last stride. Row r, 0 <= r < rows = prod(lead), is
// split row-major over the lead dims, and starts at sum_i idx_i * stride_i elements.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace rmsnorm {

constexpr int kMaxLeadDims = 4;

// The lead dims as the kernels walk them. make_row_layout drops dims of size 1 and merges
// neighbours that step evenly, keeps the outermost dim left at index 0 and the others at the end
// (innermost at index kMaxLeadDims - 1), and fills the gap with dims of size 1: a contiguous
// tensor of any rank, or rows one stride apart, has all inner sizes 1. Dim 0's size is implied by
// the row count, so it is not stored.
struct RowLayout {
  int64_t inner_sizes[kMaxLeadDims - 1];  // sizes of dims 1 .. kMaxLeadDims - 1
  int64_t strides[kMaxLeadDims];          // elements between consecutive indices of dims 0 .. kMaxLeadDims - 1
  // floor((2^64 - 1) / size) + 1 for each inner size of 2 .. 2^32 - 1, else 0: row / size is then
  // the high 64 bits of row * magic for every row < 2^32 (Lemire, Kaser, Kurz, "Faster remainder by
  // direct computation", 2019), a few multiplies instead of the ~25 instructions of even a 32-bit
  // division, which cost per-head rows of 128 elements 4 points of copy bandwidth (bench/NOTES.md v0.7).
  uint64_t inner_magic[kMaxLeadDims - 1];

  // Element offset of the first element of row `row` (0 <= row < rows). The size tests are the
  // same for every thread of the grid (uniform branches): one row stride costs one multiply, and
  // only a dim that could not be merged costs a division, by multiplication below 2^32 rows. The
  // fallback division is unsigned (rows and sizes are never negative): its inlined code is shorter
  // than the signed one's, which took a fifth more compile time of the forward's kernels.
  __host__ __device__ __forceinline__ int64_t offset(int64_t row) const {
    int64_t start = 0;
    for (int d = kMaxLeadDims - 1; d > 0; --d) {  // a constant trip count: unrolled, no local array
      const int64_t size = inner_sizes[d - 1];
      if (size != 1) {
        const auto outer = static_cast<int64_t>(divide(static_cast<uint64_t>(row), d - 1));
        start += (row - outer * size) * strides[d];
        row = outer;
      }
    }
    return start + row * strides[0];
  }

  // row / inner_sizes[dim], for row >= 0.
  __host__ __device__ __forceinline__ uint64_t divide(uint64_t row, int dim) const {
#ifdef __CUDA_ARCH__
    if (inner_magic[dim] != 0 && (row >> 32) == 0) return __umul64hi(row, inner_magic[dim]);
#endif
    return row / static_cast<uint64_t>(inner_sizes[dim]);
  }

  // Whether every stride is a multiple of `elems`: with aligned base pointers, every row then
  // starts on a multiple of `elems` elements (the launchers' test for whole-Vec access).
  __host__ __device__ bool strides_multiple_of(int64_t elems) const {
    for (int64_t stride : strides) {
      if (stride % elems != 0) return false;
    }
    return true;
  }
};

// The layout of lead dims with sizes[0, dims) and strides[0, dims) in elements, dim dims - 1
// innermost (dims <= kMaxLeadDims; the binding checks it). No dims: a single row at offset 0.
inline RowLayout make_row_layout(int dims, const int64_t* sizes, const int64_t* strides) {
  // Drop size-1 dims (never stepped, whatever their stride), merge a dim into the one outside it
  // when that one's stride is a whole step over it.
  int64_t merged_sizes[kMaxLeadDims];
  int64_t merged_strides[kMaxLeadDims];
  int count = 0;
  for (int d = 0; d < dims && d < kMaxLeadDims; ++d) {
    if (sizes[d] == 1) continue;
    if (count > 0 && merged_strides[count - 1] == sizes[d] * strides[d]) {
      merged_sizes[count - 1] *= sizes[d];
      merged_strides[count - 1] = strides[d];
    } else {
      merged_sizes[count] = sizes[d];
      merged_strides[count] = strides[d];
      ++count;
    }
  }
  RowLayout layout = {};
  for (int64_t& size : layout.inner_sizes) size = 1;
  if (count == 0) return layout;  // one row, at offset 0
  layout.strides[0] = merged_strides[0];
  for (int j = 1; j < count; ++j) {
    const int slot = kMaxLeadDims - count + j;
    const int64_t size = merged_sizes[j];
    layout.inner_sizes[slot - 1] = size;
    layout.strides[slot] = merged_strides[j];
    if (size >= 2 && size <= int64_t{0xFFFFFFFF}) {
      layout.inner_magic[slot - 1] = UINT64_MAX / static_cast<uint64_t>(size) + 1;
    }
  }
  return layout;
}

}  // namespace rmsnorm
