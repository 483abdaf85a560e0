// The RMSNorm forward launcher, y stored in x's type: the kernels of rms_norm_fwd.cuh.
#include "rms_norm_fwd.cuh"

namespace rmsnorm {

template <typename T, typename W, typename R>
cudaError_t rms_norm_fwd(const T* x, RowLayout x_layout, const R* residual, RowLayout residual_layout,
                         const W* weight, float weight_offset, T* y, R* residual_out, float* rstd, int64_t rows,
                         int64_t n, float eps, bool round_xhat, cudaStream_t stream) {
  return launch_rms_norm_fwd(x, x_layout, residual, residual_layout, weight, weight_offset, y, Fp8Scaling{},
                             residual_out, rstd, rows, n, eps, round_xhat, stream);
}

#define RMSNORM_INSTANTIATE_FWD(T, W, R)                                                                        \
  template cudaError_t rms_norm_fwd<T, W, R>(const T*, RowLayout, const R*, RowLayout, const W*, float, T*, R*, \
                                             float*, int64_t, int64_t, float, bool, cudaStream_t);
// Every weight type for x of type T and a residual of type R.
#define RMSNORM_INSTANTIATE_FWD_ALL_W(T, R) \
  RMSNORM_INSTANTIATE_FWD(T, float, R)      \
  RMSNORM_INSTANTIATE_FWD(T, __half, R)     \
  RMSNORM_INSTANTIATE_FWD(T, __nv_bfloat16, R)
RMSNORM_INSTANTIATE_FWD_ALL_W(float, float)
RMSNORM_INSTANTIATE_FWD_ALL_W(__half, __half)
RMSNORM_INSTANTIATE_FWD_ALL_W(__nv_bfloat16, __nv_bfloat16)
// An fp32 residual stream beside 16-bit activations.
RMSNORM_INSTANTIATE_FWD_ALL_W(__half, float)
RMSNORM_INSTANTIATE_FWD_ALL_W(__nv_bfloat16, float)
#undef RMSNORM_INSTANTIATE_FWD_ALL_W
#undef RMSNORM_INSTANTIATE_FWD

}  // namespace rmsnorm
