// The RMSNorm forward launcher for float32 x, y quantized to fp8 e4m3fn (rms_norm_fwd.cuh); a file a
// type of x, so that a build compiles the types in parallel.
#include "rms_norm_fwd.cuh"

namespace rmsnorm {

RMSNORM_INSTANTIATE_QUANT_FWD_ALL_W(float, float)

}  // namespace rmsnorm
