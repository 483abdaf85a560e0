// The RMSNorm forward launcher for float16 x, y quantized to fp8 e4m3fn (rms_norm_fwd.cuh); a file a
// type of x, so that a build compiles the types in parallel.
#include "rms_norm_fwd.cuh"

namespace rmsnorm {

RMSNORM_INSTANTIATE_QUANT_FWD_ALL_W(__half, __half)
RMSNORM_INSTANTIATE_QUANT_FWD_ALL_W(__half, float)  // an fp32 residual stream beside float16 activations

}  // namespace rmsnorm
