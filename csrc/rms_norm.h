// Host launchers of the RMSNorm kernels. Torch-free: everything arrives as
// pointers, sizes, strides (in elements), eps and a stream, so that this header
// and the .cu files behind it compile with bare nvcc on a machine without CUDA torch.
//
// Element types T (x, y, dy, dx) and W (weight, dweight) are each one of
// float, __half, __nv_bfloat16; every combination is instantiated.
// All math is done in fp32; every row is computed the same way whatever `rows` is.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace rmsnorm {

// y = x * rstd * weight, with rstd = 1 / sqrt(mean(x^2) + eps) per row.
template <typename T, typename W>
cudaError_t rms_norm_fwd(
    const T* x,            // [rows, n], row i starts at x + i * x_row_stride
    int64_t x_row_stride,  // elements between consecutive rows of x
    const W* weight,       // [n], or nullptr for no weight
    T* y,                  // [rows, n], contiguous
    float* rstd,           // [rows], saved for the backward
    int64_t rows,
    int64_t n,
    float eps,
    cudaStream_t stream);

// fp32 elements of scratch memory rms_norm_bwd needs: its dweight partial sums when dweight is
// asked for, and one value per row for rows too long to keep in registers. Depends on rows, n,
// T, needs_dweight and the SM count only.
template <typename T>
int64_t rms_norm_bwd_workspace_elems(int64_t rows, int64_t n, bool needs_dweight, int num_sms);

// dx = rstd * (dy*w - xhat * mean(dy*w*xhat)), xhat = x * rstd;
// dweight = sum over rows of dy * xhat, reduced in a fixed order (bitwise reproducible).
template <typename T, typename W>
cudaError_t rms_norm_bwd(
    const T* dy,            // [rows, n], row i starts at dy + i * dy_row_stride
    int64_t dy_row_stride,
    const T* x,             // [rows, n], row i starts at x + i * x_row_stride
    int64_t x_row_stride,
    const W* weight,        // [n], or nullptr for no weight
    const float* rstd,      // [rows], from rms_norm_fwd
    T* dx,                  // [rows, n], contiguous
    W* dweight,             // [n], or nullptr when not needed
    float* workspace,       // rms_norm_bwd_workspace_elems<T>(...) fp32 elements
    int64_t rows,
    int64_t n,
    int num_sms,            // multiprocessors of the device, sizes the persistent grid
    cudaStream_t stream);

}  // namespace rmsnorm
