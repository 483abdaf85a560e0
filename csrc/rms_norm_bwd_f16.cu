// The RMSNorm backward launcher for float16 dy (rms_norm_bwd.cuh); a file a type of dy, so that a
// build compiles the types in parallel.
#include "rms_norm_bwd.cuh"

namespace rmsnorm {

RMSNORM_INSTANTIATE_BWD_WORKSPACE(__half)
RMSNORM_INSTANTIATE_BWD_ALL_W(__half, __half)
RMSNORM_INSTANTIATE_BWD_ALL_W(__half, float)  // x an fp32 residual stream beside float16 dy

}  // namespace rmsnorm
