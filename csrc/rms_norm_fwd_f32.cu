// The RMSNorm forward launcher for float32 x, y stored in x's type (rms_norm_fwd.cuh); a file a type
// of x, so that a build compiles the types in parallel.
#include "rms_norm_fwd.cuh"

namespace rmsnorm {

RMSNORM_INSTANTIATE_FWD_ALL_W(float, float)

}  // namespace rmsnorm
