// Torch binding of the CUDA kernels: op schemas, argument checks, device and stream; no math.
//
// The Python dispatcher (rmsnorm/functional.py) has already validated the user's arguments and
// flattened x to [rows, n]; the checks here guard the ops themselves, which can be called directly
// as torch.ops.rmsnorm_cuda.*.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "rms_norm.h"

namespace {

// Calls f with a value of the CUDA element type matching `type` (its value is unused: only its type).
template <typename F>
void with_element_type(at::ScalarType type, const char* name, F&& f) {
  switch (type) {
    case at::kFloat: f(float{}); break;
    case at::kHalf: f(__half{}); break;
    case at::kBFloat16: f(__nv_bfloat16{}); break;
    default: TORCH_CHECK(false, name, " must be float32, float16 or bfloat16, got ", type);
  }
}

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D [rows, n], got ", t.dim(), " dims");
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, name, " must have a contiguous last dim, got stride ",
              t.stride(1));
}

void check_weight(const c10::optional<at::Tensor>& weight, const at::Tensor& x) {
  if (!weight.has_value()) return;
  const at::Tensor& w = *weight;
  TORCH_CHECK(w.device() == x.device(), "weight must be on x's device ", x.device(), ", got ", w.device());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(1), "weight must have shape (", x.size(1), ",), got ",
              w.sizes());
  TORCH_CHECK(w.is_contiguous(), "weight must be contiguous");
}

cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

int multiprocessor_count(const at::Tensor& t) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, t.device().index()));
  return count;
}

// x: [rows, n]; returns y [rows, n] (x's dtype, contiguous) and rstd [rows] (fp32).
std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                                     double eps) {
  check_rows(x, "x");
  check_weight(weight, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor y = at::empty({rows, n}, x.options());
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0 || n == 0) return {y, rstd};
  const at::ScalarType w_type = weight.has_value() ? weight->scalar_type() : x.scalar_type();
  with_element_type(x.scalar_type(), "x", [&](auto t_tag) {
    using T = decltype(t_tag);
    with_element_type(w_type, "weight", [&](auto w_tag) {
      using W = decltype(w_tag);
      const W* w = weight.has_value() ? reinterpret_cast<const W*>(weight->data_ptr()) : nullptr;
      const cudaError_t status = rmsnorm::rms_norm_fwd<T, W>(
          reinterpret_cast<const T*>(x.data_ptr()), x.stride(0), w, reinterpret_cast<T*>(y.data_ptr()),
          rstd.data_ptr<float>(), rows, n, static_cast<float>(eps), current_stream(x));
      C10_CUDA_CHECK(status);
    });
  });
  return {y, rstd};
}

// dy, x: [rows, n]; returns dx [rows, n] (contiguous) and dweight [n] in weight's dtype, or an empty
// tensor when needs_dweight is false.
std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cuda(const at::Tensor& dy, const at::Tensor& x,
                                                     const c10::optional<at::Tensor>& weight,
                                                     const at::Tensor& rstd, bool needs_dweight) {
  check_rows(x, "x");
  check_rows(dy, "dy");
  check_weight(weight, x);
  TORCH_CHECK(dy.sizes() == x.sizes(), "dy must have x's shape ", x.sizes(), ", got ", dy.sizes());
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "dy must have x's dtype ", x.scalar_type(), ", got ",
              dy.scalar_type());
  TORCH_CHECK(dy.device() == x.device(), "dy must be on x's device ", x.device(), ", got ", dy.device());
  TORCH_CHECK(rstd.device() == x.device() && rstd.scalar_type() == at::kFloat && rstd.is_contiguous() &&
                  rstd.numel() == x.size(0),
              "rstd must be a contiguous float32 tensor of ", x.size(0), " elements on ", x.device());
  TORCH_CHECK(!needs_dweight || weight.has_value(), "needs_dweight requires a weight");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor dx = at::empty({rows, n}, x.options());
  at::Tensor dweight = needs_dweight ? at::empty({n}, weight->options()) : at::empty({0}, x.options());
  if (n == 0) return {dx, dweight};
  if (rows == 0) return {dx, dweight.zero_()};
  const at::ScalarType w_type = weight.has_value() ? weight->scalar_type() : x.scalar_type();
  const int num_sms = multiprocessor_count(x);
  with_element_type(x.scalar_type(), "x", [&](auto t_tag) {
    using T = decltype(t_tag);
    const int64_t workspace_elems = rmsnorm::rms_norm_bwd_workspace_elems<T>(rows, n, needs_dweight, num_sms);
    at::Tensor workspace = at::empty({workspace_elems}, x.options().dtype(at::kFloat));
    with_element_type(w_type, "weight", [&](auto w_tag) {
      using W = decltype(w_tag);
      const W* w = weight.has_value() ? reinterpret_cast<const W*>(weight->data_ptr()) : nullptr;
      W* dw = needs_dweight ? reinterpret_cast<W*>(dweight.data_ptr()) : nullptr;
      const cudaError_t status = rmsnorm::rms_norm_bwd<T, W>(
          reinterpret_cast<const T*>(dy.data_ptr()), dy.stride(0), reinterpret_cast<const T*>(x.data_ptr()),
          x.stride(0), w, rstd.data_ptr<float>(), reinterpret_cast<T*>(dx.data_ptr()), dw,
          workspace.data_ptr<float>(), rows, n, num_sms, current_stream(x));
      C10_CUDA_CHECK(status);
    });
  });
  return {dx, dweight};
}

}  // namespace

TORCH_LIBRARY(rmsnorm_cuda, m) {
  m.def("rms_norm_fwd(Tensor x, Tensor? weight, float eps) -> (Tensor y, Tensor rstd)");
  m.def("rms_norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor rstd, bool needs_dweight) -> (Tensor dx, Tensor dweight)");
}

TORCH_LIBRARY_IMPL(rmsnorm_cuda, CUDA, m) {
  m.impl("rms_norm_fwd", &rms_norm_fwd_cuda);
  m.impl("rms_norm_bwd", &rms_norm_bwd_cuda);
}
