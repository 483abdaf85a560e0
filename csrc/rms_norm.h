// Host launchers of the RMSNorm kernels. Torch-free: everything arrives as
// pointers, sizes, strides (in elements), eps and a stream, so that this header
// and the .cu files behind it compile with bare nvcc on a machine without CUDA torch.
//
// Element types T (x, residual, y, residual_out, dy, dresidual_out, dx) and W (weight, dweight)
// are each one of float, __half, __nv_bfloat16; every combination is instantiated.
// All math is done in fp32; every row is computed the same way whatever `rows` is.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace rmsnorm {

// y = x * rstd * (weight + weight_offset), with rstd = 1 / sqrt(mean(x^2) + eps) per row; with
// round_xhat, x * rstd is rounded to T before the weight multiplies it (Hugging Face's Llama).
// With a residual (add_rms_norm), the row normalized is r = x + residual, added in fp32 and rounded
// to T, which is also written to residual_out: y is then bitwise rms_norm(residual_out).
template <typename T, typename W>
cudaError_t rms_norm_fwd(
    const T* x,                     // [rows, n], row i starts at x + i * x_row_stride
    int64_t x_row_stride,           // elements between consecutive rows of x
    const T* residual,              // [rows, n], row i at residual + i * residual_row_stride,
    int64_t residual_row_stride,    //   or nullptr: no residual add
    const W* weight,                // [n], or nullptr for no weight
    float weight_offset,            // added to every weight in fp32 (Gemma's 1 + w); ignored without a weight
    T* y,                           // [rows, n], contiguous
    T* residual_out,                // [rows, n], contiguous: x + residual; nullptr exactly when residual is
    float* rstd,                    // [rows], saved for the backward
    int64_t rows,
    int64_t n,
    float eps,
    bool round_xhat,                // casting_mode "llama": x * rstd rounded to T before the weight
    cudaStream_t stream);

// fp32 elements of scratch memory rms_norm_bwd needs: its dweight partial sums when dweight is
// asked for, and one value per row for rows too long to keep in registers. Depends on rows, n,
// T, needs_dweight and the SM count only.
template <typename T>
int64_t rms_norm_bwd_workspace_elems(int64_t rows, int64_t n, bool needs_dweight, int num_sms);

// dx = rstd * (dy*w - xhat * mean(dy*w*xhat)) [+ dresidual_out], xhat = x * rstd,
// w = weight + weight_offset; dweight = sum over rows of dy * xhat, reduced in a fixed order
// (bitwise reproducible). dresidual_out is added in fp32 before dx's one rounding to T.
template <typename T, typename W>
cudaError_t rms_norm_bwd(
    const T* dy,                       // [rows, n], row i starts at dy + i * dy_row_stride
    int64_t dy_row_stride,
    const T* x,                        // [rows, n], row i at x + i * x_row_stride: the normalized input
    int64_t x_row_stride,              //   (add_rms_norm: its residual_out)
    const T* dresidual_out,            // [rows, n], row i at dresidual_out + i * dresidual_out_row_stride,
    int64_t dresidual_out_row_stride,  //   added to dx; or nullptr
    const W* weight,                   // [n], or nullptr for no weight
    float weight_offset,               // added to every weight in fp32; ignored without a weight
    bool round_xhat,                   // the forward rounded xhat to T (casting_mode "llama"): dweight sums
                                       //   dy * that rounded xhat
    const float* rstd,                 // [rows], from rms_norm_fwd
    T* dx,                             // [rows, n], contiguous
    W* dweight,                        // [n], or nullptr when not needed
    float* workspace,                  // rms_norm_bwd_workspace_elems<T>(...) fp32 elements
    int64_t rows,
    int64_t n,
    int num_sms,                       // multiprocessors of the device, sizes the persistent grid
    cudaStream_t stream);

}  // namespace rmsnorm
