// The RMSNorm backward launcher for bfloat16 dy (rms_norm_bwd.cuh); a file a type of dy, so that a
// build compiles the types in parallel.
#include "rms_norm_bwd.cuh"

namespace rmsnorm {

RMSNORM_INSTANTIATE_BWD_WORKSPACE(__nv_bfloat16)
RMSNORM_INSTANTIATE_BWD_ALL_W(__nv_bfloat16, __nv_bfloat16)
RMSNORM_INSTANTIATE_BWD_ALL_W(__nv_bfloat16, float)  // x an fp32 residual stream beside bfloat16 dy

}  // namespace rmsnorm
