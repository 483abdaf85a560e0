// The RMSNorm forward launcher with y quantized to fp8 e4m3fn: the kernels of rms_norm_fwd.cuh
// with their fp8 epilogue.
#include "rms_norm_fwd.cuh"

namespace rmsnorm {

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

#define RMSNORM_INSTANTIATE_QUANT_FWD(T, W, R)                                                               \
  template cudaError_t rms_norm_quant_fwd<T, W, R>(const T*, RowLayout, const R*, RowLayout, const W*, float, \
                                                   const float*, const float*, uint8_t*, R*, float*, int64_t,  \
                                                   int64_t, float, bool, cudaStream_t);
// Every weight type for x of type T and a residual of type R.
#define RMSNORM_INSTANTIATE_QUANT_FWD_ALL_W(T, R) \
  RMSNORM_INSTANTIATE_QUANT_FWD(T, float, R)      \
  RMSNORM_INSTANTIATE_QUANT_FWD(T, __half, R)     \
  RMSNORM_INSTANTIATE_QUANT_FWD(T, __nv_bfloat16, R)
RMSNORM_INSTANTIATE_QUANT_FWD_ALL_W(float, float)
RMSNORM_INSTANTIATE_QUANT_FWD_ALL_W(__half, __half)
RMSNORM_INSTANTIATE_QUANT_FWD_ALL_W(__nv_bfloat16, __nv_bfloat16)
// An fp32 residual stream beside 16-bit activations.
RMSNORM_INSTANTIATE_QUANT_FWD_ALL_W(__half, float)
RMSNORM_INSTANTIATE_QUANT_FWD_ALL_W(__nv_bfloat16, float)
#undef RMSNORM_INSTANTIATE_QUANT_FWD_ALL_W
#undef RMSNORM_INSTANTIATE_QUANT_FWD

}  // namespace rmsnorm
