// The RMSNorm backward launcher for float32 dy (rms_norm_bwd.cuh); a file a type of dy, so that a
// build compiles the types in parallel.
#include "rms_norm_bwd.cuh"

namespace rmsnorm {

RMSNORM_INSTANTIATE_BWD_WORKSPACE(float)
RMSNORM_INSTANTIATE_BWD_ALL_W(float, float)

}  // namespace rmsnorm
