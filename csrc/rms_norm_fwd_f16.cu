// The RMSNorm forward launcher for float16 x, y stored in x's type (rms_norm_fwd.cuh); a file a type
// of x, so that a build compiles the types in parallel.
#include "rms_norm_fwd.cuh"

namespace rmsnorm {

RMSNORM_INSTANTIATE_FWD_ALL_W(__half, __half)
RMSNORM_INSTANTIATE_FWD_ALL_W(__half, float)  // an fp32 residual stream beside float16 activations

}  // namespace rmsnorm
