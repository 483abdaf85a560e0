// Host launchers of the RMSNorm kernels. Torch-free: everything arrives as
// pointers, sizes, row layouts (strides in elements), eps and a stream, so that this header
// and the .cu files behind it compile with bare nvcc on a machine without CUDA torch.
//
// Inputs are [*lead, n] viewed as [rows, n]: each input's RowLayout (row_layout.h) says where its
// row i starts, from its own lead strides; outputs are contiguous [rows, n] (row i at i * n).
//
// Element types T (x, y, dy) and W (weight, dweight) are each one of float, __half,
// __nv_bfloat16, every combination instantiated; the residual stream (residual and residual_out
// in the forward, x, dresidual_out and dx in the backward) has type R (X in the backward): T,
// or float beside a 16-bit T (an fp32 residual stream).
// All math is done in fp32; every row is computed the same way whatever `rows` is.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "row_layout.h"

namespace rmsnorm {

// y = x * rstd * (weight + weight_offset), with rstd = 1 / sqrt(mean(x^2) + eps) per row; with
// round_xhat, x * rstd is rounded to T before the weight multiplies it (Hugging Face's Llama).
// With a residual (add_rms_norm), the row normalized is r = x + residual, added in fp32 and rounded
// to R, which is also written to residual_out: y then has the bits rms_norm gives residual_out
// with a T output (round_xhat rounds r * rstd to T).
template <typename T, typename W, typename R>
cudaError_t rms_norm_fwd(
    const T* x,                     // [rows, n], row i starts at x + x_layout.offset(i)
    RowLayout x_layout,
    const R* residual,              // [rows, n], row i at residual + residual_layout.offset(i),
    RowLayout residual_layout,      //   or nullptr: no residual add
    const W* weight,                // [n], or nullptr for no weight
    float weight_offset,            // added to every weight in fp32 (Gemma's 1 + w); ignored without a weight
    T* y,                           // [rows, n], contiguous
    R* residual_out,                // [rows, n], contiguous: x + residual; nullptr exactly when residual is
    float* rstd,                    // [rows], saved for the backward
    int64_t rows,
    int64_t n,
    float eps,
    bool round_xhat,                // casting_mode "llama": x * rstd rounded to T before the weight
    cudaStream_t stream);

// rms_norm_fwd's y, quantized to fp8 e4m3fn (forward only): each y, computed and rounded to T
// exactly as rms_norm_fwd stores it, is converted back to fp32, multiplied by 1 / s (the row's
// scale s, its reciprocal by IEEE division) and rounded to the nearest e4m3fn value, ties to
// even, saturating (finite overflow and +-Inf become +-448, NaN stays NaN). The scale is *scale
// (static), or per row (dynamic) s = min(amax, *scale_ub) / 448, at least 1 / (448 * 512) (vLLM's
// floor, for an all-zero row), amax = max |y| over the row (0 for an empty row); a NaN in the row
// makes amax and s NaN. s is written to row_scale.
template <typename T, typename W, typename R>
cudaError_t rms_norm_quant_fwd(
    const T* x,                     // [rows, n], row i starts at x + x_layout.offset(i)
    RowLayout x_layout,
    const R* residual,              // [rows, n], row i at residual + residual_layout.offset(i),
    RowLayout residual_layout,      //   or nullptr: no residual add
    const W* weight,                // [n], or nullptr for no weight
    float weight_offset,            // added to every weight in fp32; ignored without a weight
    const float* scale,             // [1], the static scale; or nullptr: dynamic, one scale per row
    const float* scale_ub,          // [1], caps a row's amax (dynamic only); or nullptr: no cap
    uint8_t* y_q,                   // [rows, n], contiguous: the bits of fp8 e4m3fn values
    R* residual_out,                // [rows, n], contiguous: x + residual; nullptr exactly when residual is
    float* row_scale,               // [rows], the dynamic scales; nullptr exactly when scale is not
    int64_t rows,
    int64_t n,
    float eps,
    bool round_xhat,                // casting_mode "llama": x * rstd rounded to T before the weight
    cudaStream_t stream);

// fp32 elements of scratch memory rms_norm_bwd needs: its dweight partial sums when dweight is
// asked for, and one value per row for rows too long to keep in registers. Depends on rows, n,
// T (dy's type), needs_dweight and the SM count only.
template <typename T>
int64_t rms_norm_bwd_workspace_elems(int64_t rows, int64_t n, bool needs_dweight, int num_sms);

// dx = rstd * (dy*w - xhat * mean(dy*w*xhat)) [+ dresidual_out], xhat = x * rstd,
// w = weight + weight_offset; dweight = sum over rows of dy * xhat, reduced in a fixed order
// (bitwise reproducible). dresidual_out is added in fp32 before dx's one rounding to X. x, and so
// dresidual_out and dx, may be wider than dy (X float, T 16-bit: add_rms_norm's fp32 residual
// stream, y in T).
template <typename T, typename W, typename X>
cudaError_t rms_norm_bwd(
    const T* dy,                       // [rows, n], row i starts at dy + dy_layout.offset(i)
    RowLayout dy_layout,
    const X* x,                        // [rows, n], row i at x + x_layout.offset(i): the normalized input
    RowLayout x_layout,                //   (add_rms_norm: its residual_out)
    const X* dresidual_out,            // [rows, n], row i at dresidual_out + dresidual_out_layout.offset(i),
    RowLayout dresidual_out_layout,    //   added to dx; or nullptr
    const W* weight,                   // [n], or nullptr for no weight
    float weight_offset,               // added to every weight in fp32; ignored without a weight
    bool round_xhat,                   // the forward rounded xhat to T, y's type (casting_mode "llama"):
                                       //   dweight sums dy * that rounded xhat
    const float* rstd,                 // [rows], from rms_norm_fwd
    X* dx,                             // [rows, n], contiguous
    W* dweight,                        // [n], or nullptr when not needed
    float* workspace,                  // rms_norm_bwd_workspace_elems<T>(...) fp32 elements
    int64_t rows,
    int64_t n,
    int num_sms,                       // multiprocessors of the device, sizes the persistent grid
    cudaStream_t stream);

}  // namespace rmsnorm
