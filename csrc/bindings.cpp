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

// t, an input read beside x ([rows, n]: dy, residual, dresidual_out), has x's shape, dtype and device.
void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_rows(t, name);
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have x's shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " must have x's dtype ", x.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ", t.device());
}

void check_weight(const c10::optional<at::Tensor>& weight, double weight_offset, const at::Tensor& x) {
  TORCH_CHECK(weight_offset == 0.0 || weight.has_value(), "weight_offset needs a weight, got weight_offset=",
              weight_offset, " and weight=None");
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

template <typename T>
const T* data_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? reinterpret_cast<const T*>(t->data_ptr()) : nullptr;
}

int64_t row_stride_or_zero(const c10::optional<at::Tensor>& t) { return t.has_value() ? t->stride(0) : 0; }

// Both forward ops. x, residual: [rows, n]; returns y [rows, n] (x's dtype, contiguous), residual_out
// (x + residual, like y; undefined without a residual) and rstd [rows] (fp32).
std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_fwd_rows(const at::Tensor& x,
                                                                 const c10::optional<at::Tensor>& residual,
                                                                 const c10::optional<at::Tensor>& weight,
                                                                 double weight_offset, double eps, bool round_xhat) {
  check_rows(x, "x");
  if (residual.has_value()) check_like_x(*residual, "residual", x);
  check_weight(weight, weight_offset, x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), n = x.size(1);
  at::Tensor y = at::empty({rows, n}, x.options());
  at::Tensor residual_out = residual.has_value() ? at::empty({rows, n}, x.options()) : at::Tensor();
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0 || n == 0) return {y, residual_out, rstd};
  const at::ScalarType w_type = weight.has_value() ? weight->scalar_type() : x.scalar_type();
  with_element_type(x.scalar_type(), "x", [&](auto t_tag) {
    using T = decltype(t_tag);
    with_element_type(w_type, "weight", [&](auto w_tag) {
      using W = decltype(w_tag);
      T* res_out = residual_out.defined() ? reinterpret_cast<T*>(residual_out.data_ptr()) : nullptr;
      const cudaError_t status = rmsnorm::rms_norm_fwd<T, W>(
          reinterpret_cast<const T*>(x.data_ptr()), x.stride(0), data_or_null<T>(residual),
          row_stride_or_zero(residual), data_or_null<W>(weight), static_cast<float>(weight_offset),
          reinterpret_cast<T*>(y.data_ptr()), res_out, rstd.data_ptr<float>(), rows, n, static_cast<float>(eps),
          round_xhat, current_stream(x));
      C10_CUDA_CHECK(status);
    });
  });
  return {y, residual_out, rstd};
}

// x: [rows, n]; returns y [rows, n] (x's dtype, contiguous) and rstd [rows] (fp32).
std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                                     double weight_offset, double eps, bool round_xhat) {
  at::Tensor y, rstd;
  std::tie(y, std::ignore, rstd) = rms_norm_fwd_rows(x, c10::nullopt, weight, weight_offset, eps, round_xhat);
  return {y, rstd};
}

// x, residual: [rows, n]; returns y and residual_out = x + residual (rounded to x's dtype, the
// values y normalizes), both [rows, n] contiguous in x's dtype, and rstd [rows] (fp32).
std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_fwd_cuda(const at::Tensor& x, const at::Tensor& residual,
                                                                     const c10::optional<at::Tensor>& weight,
                                                                     double weight_offset, double eps,
                                                                     bool round_xhat) {
  return rms_norm_fwd_rows(x, residual, weight, weight_offset, eps, round_xhat);
}

// dy, x, dresidual_out: [rows, n]; returns dx [rows, n] (contiguous, dresidual_out added when given)
// and dweight [n] in weight's dtype, or an empty tensor when needs_dweight is false.
std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cuda(const at::Tensor& dy, const at::Tensor& x,
                                                     const c10::optional<at::Tensor>& dresidual_out,
                                                     const c10::optional<at::Tensor>& weight, double weight_offset,
                                                     const at::Tensor& rstd, bool needs_dweight, bool round_xhat) {
  check_rows(x, "x");
  check_like_x(dy, "dy", x);
  if (dresidual_out.has_value()) check_like_x(*dresidual_out, "dresidual_out", x);
  check_weight(weight, weight_offset, x);
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
      W* dw = needs_dweight ? reinterpret_cast<W*>(dweight.data_ptr()) : nullptr;
      const cudaError_t status = rmsnorm::rms_norm_bwd<T, W>(
          reinterpret_cast<const T*>(dy.data_ptr()), dy.stride(0), reinterpret_cast<const T*>(x.data_ptr()),
          x.stride(0), data_or_null<T>(dresidual_out), row_stride_or_zero(dresidual_out), data_or_null<W>(weight),
          static_cast<float>(weight_offset), round_xhat, rstd.data_ptr<float>(), reinterpret_cast<T*>(dx.data_ptr()), dw,
          workspace.data_ptr<float>(), rows, n, num_sms, current_stream(x));
      C10_CUDA_CHECK(status);
    });
  });
  return {dx, dweight};
}

}  // namespace

TORCH_LIBRARY(rmsnorm_cuda, m) {
  // round_xhat: casting_mode "llama", x * rstd rounded to x's dtype before the weight.
  m.def(
      "rms_norm_fwd(Tensor x, Tensor? weight, float weight_offset, float eps, bool round_xhat)"
      " -> (Tensor y, Tensor rstd)");
  m.def(
      "add_rms_norm_fwd(Tensor x, Tensor residual, Tensor? weight, float weight_offset, float eps, bool round_xhat)"
      " -> (Tensor y, Tensor residual_out, Tensor rstd)");
  m.def(
      "rms_norm_bwd(Tensor dy, Tensor x, Tensor? dresidual_out, Tensor? weight, float weight_offset, Tensor rstd,"
      " bool needs_dweight, bool round_xhat) -> (Tensor dx, Tensor dweight)");
}

TORCH_LIBRARY_IMPL(rmsnorm_cuda, CUDA, m) {
  m.impl("rms_norm_fwd", &rms_norm_fwd_cuda);
  m.impl("add_rms_norm_fwd", &add_rms_norm_fwd_cuda);
  m.impl("rms_norm_bwd", &rms_norm_bwd_cuda);
}
