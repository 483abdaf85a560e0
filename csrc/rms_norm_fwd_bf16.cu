// The RMSNorm forward launcher for bfloat16 x, y stored in x's type (rms_norm_fwd.cuh); a file a type
// of x, so that a build compiles the types in parallel.
#include "rms_norm_fwd.cuh"

namespace rmsnorm {

RMSNORM_INSTANTIATE_FWD_ALL_W(__nv_bfloat16, __nv_bfloat16)
RMSNORM_INSTANTIATE_FWD_ALL_W(__nv_bfloat16, float)  // an fp32 residual stream beside bfloat16 activations

}  // namespace rmsnorm
