// Torch binding of the CUDA kernels: op schemas, argument checks, device and stream; no math.
//
// The Python dispatcher (rmsnorm/functional.py) has already validated the user's arguments; the
// checks here guard the ops themselves, which can be called directly as torch.ops.rmsnorm_cuda.*.
//
// Row inputs (x, residual, dy, dresidual_out) are [*lead, n] with 1 to kMaxLeadDims lead dims of
// any strides and a unit last stride; all of one call have x's shape, each its own strides, and
// reach the kernels as [rows, n] with a RowLayout each (no copy). Outputs are contiguous: y,
// residual_out and dx with x's shape, rstd with its lead shape.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

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
  TORCH_CHECK(t.dim() >= 2 && t.dim() <= rmsnorm::kMaxLeadDims + 1, name, " must have 2 to ",
              rmsnorm::kMaxLeadDims + 1, " dims [*lead, n], got ", t.dim(), " dims");
  TORCH_CHECK(t.size(-1) <= 1 || t.stride(-1) == 1, name, " must have a contiguous last dim, got stride ",
              t.stride(-1));
}

// Where t's rows start: its lead dims' sizes and strides (check_rows has bounded their number).
rmsnorm::RowLayout row_layout(const at::Tensor& t) {
  return rmsnorm::make_row_layout(static_cast<int>(t.dim() - 1), t.sizes().data(), t.strides().data());
}

// An absent input's layout is never read (its pointer is null); a valid one all the same.
rmsnorm::RowLayout row_layout_or_any(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? row_layout(*t) : rmsnorm::make_row_layout(0, nullptr, nullptr);
}

// x's lead shape: that of rstd.
at::IntArrayRef lead_shape(const at::Tensor& x) { return x.sizes().slice(0, x.dim() - 1); }

// t, an input read beside x ([*lead, n]: dy, residual, dresidual_out), has x's shape and device.
void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  check_rows(t, name);
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have x's shape ", x.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), name, " must be on x's device ", x.device(), ", got ", t.device());
}

void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& other, const char* other_name) {
  TORCH_CHECK(t.scalar_type() == other.scalar_type(), name, " must have ", other_name, "'s dtype ",
              other.scalar_type(), ", got ", t.scalar_type());
}

// t, a residual-stream tensor (`name`: the forward's residual, the backward's x), has the dtype of
// `base` (x, dy), or is float32 beside a float16 or bfloat16 base (an fp32 residual stream).
void check_stream_dtype(const at::Tensor& t, const char* name, const at::Tensor& base, const char* base_name) {
  const bool narrow_base = base.scalar_type() == at::kHalf || base.scalar_type() == at::kBFloat16;
  TORCH_CHECK(t.scalar_type() == base.scalar_type() || (t.scalar_type() == at::kFloat && narrow_base), name,
              " must have ", base_name, "'s dtype ", base.scalar_type(), ", or float32 beside a float16 or bfloat16 ",
              base_name, ", got ", t.scalar_type());
}

// Calls f with a value of t's element type, given that of `base` is T and check_stream_dtype
// passed: T itself, or float.
template <typename T, typename F>
void with_stream_type(const at::Tensor& t, const at::Tensor& base, F&& f) {
  if (t.scalar_type() == base.scalar_type()) {
    f(T{});
  } else {
    f(float{});
  }
}

void check_weight(const c10::optional<at::Tensor>& weight, double weight_offset, const at::Tensor& x) {
  TORCH_CHECK(weight_offset == 0.0 || weight.has_value(), "weight_offset needs a weight, got weight_offset=",
              weight_offset, " and weight=None");
  if (!weight.has_value()) return;
  const at::Tensor& w = *weight;
  TORCH_CHECK(w.device() == x.device(), "weight must be on x's device ", x.device(), ", got ", w.device());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(-1), "weight must have shape (", x.size(-1), ",), got ",
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

// The inputs every forward op shares: x, residual (optional) and weight.
void check_fwd_inputs(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                      const c10::optional<at::Tensor>& weight, double weight_offset) {
  check_rows(x, "x");
  if (residual.has_value()) {
    check_like_x(*residual, "residual", x);
    check_stream_dtype(*residual, "residual", x, "x");
  }
  check_weight(weight, weight_offset, x);
}

// Both unquantized forward ops. x, residual: [*lead, n]; returns y (x's shape and dtype,
// contiguous), residual_out (x + residual, x's shape and residual's dtype, contiguous; undefined
// without a residual) and rstd (lead shape, fp32; undefined unless store_rstd).
std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_fwd_rows(const at::Tensor& x,
                                                                 const c10::optional<at::Tensor>& residual,
                                                                 const c10::optional<at::Tensor>& weight,
                                                                 double weight_offset, double eps, bool round_xhat,
                                                                 bool store_rstd) {
  check_fwd_inputs(x, residual, weight, weight_offset);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(-1);
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor residual_out = residual.has_value() ? at::empty(x.sizes(), residual->options()) : at::Tensor();
  at::Tensor rstd = store_rstd ? at::empty(lead_shape(x), x.options().dtype(at::kFloat)) : at::Tensor();
  const int64_t rows = c10::multiply_integers(lead_shape(x));
  if (rows == 0 || n == 0) return {y, residual_out, rstd};
  const at::ScalarType w_type = weight.has_value() ? weight->scalar_type() : x.scalar_type();
  with_element_type(x.scalar_type(), "x", [&](auto t_tag) {
    using T = decltype(t_tag);
    // Without a residual, R is T (no residual type to instantiate for).
    with_stream_type<T>(residual.value_or(x), x, [&](auto r_tag) {
      using R = decltype(r_tag);
      with_element_type(w_type, "weight", [&](auto w_tag) {
        using W = decltype(w_tag);
        R* res_out = residual_out.defined() ? reinterpret_cast<R*>(residual_out.data_ptr()) : nullptr;
        const cudaError_t status = rmsnorm::rms_norm_fwd<T, W, R>(
            reinterpret_cast<const T*>(x.data_ptr()), row_layout(x), data_or_null<R>(residual),
            row_layout_or_any(residual), data_or_null<W>(weight), static_cast<float>(weight_offset),
            reinterpret_cast<T*>(y.data_ptr()), res_out, store_rstd ? rstd.data_ptr<float>() : nullptr, rows, n,
            static_cast<float>(eps), round_xhat, current_stream(x));
        C10_CUDA_CHECK(status);
      });
    });
  });
  return {y, residual_out, rstd};
}

// x: [*lead, n]; returns y (x's shape and dtype, contiguous) and rstd (lead shape, fp32).
std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                                     double weight_offset, double eps, bool round_xhat) {
  at::Tensor y, rstd;
  std::tie(y, std::ignore, rstd) = rms_norm_fwd_rows(x, c10::nullopt, weight, weight_offset, eps, round_xhat, true);
  return {y, rstd};
}

// x, residual: [*lead, n], residual of x's dtype or float32 (beside float16/bfloat16 x); returns y
// (x's dtype) and residual_out = x + residual (rounded to residual's dtype, the values y
// normalizes), both contiguous with x's shape, and rstd (lead shape, fp32).
std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_fwd_cuda(const at::Tensor& x, const at::Tensor& residual,
                                                                     const c10::optional<at::Tensor>& weight,
                                                                     double weight_offset, double eps,
                                                                     bool round_xhat) {
  return rms_norm_fwd_rows(x, residual, weight, weight_offset, eps, round_xhat, true);
}

// An undefined tensor as None, for the direct entries below.
c10::optional<at::Tensor> defined_or_none(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// The direct Python entries (PYBIND11_MODULE below) of the two unquantized forwards: the ops'
// kernels and checks, without the dispatcher, which boxes every argument to reach them (on the
// H100's host a one-row call took 13-15 us through the op below autograd, 8-9 us here;
// bench/NOTES.md v0.34). For eager calls that neither autograd, a dispatch mode nor torch.compile
// watches (rmsnorm/ops.py); rstd is None unless store_rstd.
std::tuple<at::Tensor, c10::optional<at::Tensor>> rms_norm_fwd_direct(const at::Tensor& x,
                                                                      const c10::optional<at::Tensor>& weight,
                                                                      double weight_offset, double eps,
                                                                      bool round_xhat, bool store_rstd) {
  at::Tensor y, rstd;
  std::tie(y, std::ignore, rstd) =
      rms_norm_fwd_rows(x, c10::nullopt, weight, weight_offset, eps, round_xhat, store_rstd);
  return {y, defined_or_none(rstd)};
}

std::tuple<at::Tensor, at::Tensor, c10::optional<at::Tensor>> add_rms_norm_fwd_direct(
    const at::Tensor& x, const at::Tensor& residual, const c10::optional<at::Tensor>& weight, double weight_offset,
    double eps, bool round_xhat, bool store_rstd) {
  at::Tensor y, residual_out, rstd;
  std::tie(y, residual_out, rstd) =
      rms_norm_fwd_rows(x, residual, weight, weight_offset, eps, round_xhat, store_rstd);
  return {y, residual_out, defined_or_none(rstd)};
}

// t, a scale of the quantizing forward (`name`), is None or one float32 element on x's device.
void check_scale(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& x) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->device() == x.device(), name, " must be on x's device ", x.device(), ", got ", t->device());
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->numel() == 1, name,
              " must be a float32 tensor of one element, got ", t->scalar_type(), " of ", t->numel(), " elements");
}

// x, residual (optional): [*lead, n], as in add_rms_norm_fwd; scale: the static scale, or None for
// dynamic per-row scales; scale_ub: None, or (dynamic only) the cap of a row's amax. Returns y_q
// (x's shape, float8_e4m3fn, contiguous), residual_out (x + residual, x's shape and residual's
// dtype, contiguous; an empty tensor without a residual) and row_scale (the dynamic scales, fp32
// of shape lead + (1,), contiguous; an empty fp32 tensor with a static scale).
std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_quant_fwd_cuda(
    const at::Tensor& x, const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& weight,
    double weight_offset, double eps, bool round_xhat, const c10::optional<at::Tensor>& scale,
    const c10::optional<at::Tensor>& scale_ub) {
  check_fwd_inputs(x, residual, weight, weight_offset);
  check_scale(scale, "scale", x);
  check_scale(scale_ub, "scale_ub", x);
  TORCH_CHECK(!(scale.has_value() && scale_ub.has_value()),
              "scale_ub caps the dynamic per-row scales: it needs scale=None, got both");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(-1);
  const int64_t rows = c10::multiply_integers(lead_shape(x));
  at::Tensor y_q = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor residual_out =
      residual.has_value() ? at::empty(x.sizes(), residual->options()) : at::empty({0}, x.options());
  std::vector<int64_t> row_scale_shape(lead_shape(x).begin(), lead_shape(x).end());
  row_scale_shape.push_back(1);
  at::Tensor row_scale = at::empty(scale.has_value() ? std::vector<int64_t>{0} : row_scale_shape,
                                   x.options().dtype(at::kFloat));
  if (rows == 0) return {y_q, residual_out, row_scale};
  const at::ScalarType w_type = weight.has_value() ? weight->scalar_type() : x.scalar_type();
  with_element_type(x.scalar_type(), "x", [&](auto t_tag) {
    using T = decltype(t_tag);
    with_stream_type<T>(residual.value_or(x), x, [&](auto r_tag) {
      using R = decltype(r_tag);
      with_element_type(w_type, "weight", [&](auto w_tag) {
        using W = decltype(w_tag);
        R* res_out = residual.has_value() ? reinterpret_cast<R*>(residual_out.data_ptr()) : nullptr;
        const cudaError_t status = rmsnorm::rms_norm_quant_fwd<T, W, R>(
            reinterpret_cast<const T*>(x.data_ptr()), row_layout(x), data_or_null<R>(residual),
            row_layout_or_any(residual), data_or_null<W>(weight), static_cast<float>(weight_offset),
            data_or_null<float>(scale), data_or_null<float>(scale_ub), reinterpret_cast<uint8_t*>(y_q.data_ptr()),
            res_out, scale.has_value() ? nullptr : row_scale.data_ptr<float>(), rows, n, static_cast<float>(eps),
            round_xhat, current_stream(x));
        C10_CUDA_CHECK(status);
      });
    });
  });
  return {y_q, residual_out, row_scale};
}

// dy, x, dresidual_out: [*lead, n]; x (add_rms_norm's residual_out) of dy's dtype or float32
// (beside float16/bfloat16 dy: an fp32 residual stream), dresidual_out of x's dtype; rstd:
// rows = prod(lead) fp32 values, contiguous, any shape. Returns dx (x's shape and dtype,
// contiguous, dresidual_out added when given) and dweight [n] in weight's dtype, or an empty
// tensor when needs_dweight is false.
std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cuda(const at::Tensor& dy, const at::Tensor& x,
                                                     const c10::optional<at::Tensor>& dresidual_out,
                                                     const c10::optional<at::Tensor>& weight, double weight_offset,
                                                     const at::Tensor& rstd, bool needs_dweight, bool round_xhat) {
  check_rows(x, "x");
  check_like_x(dy, "dy", x);
  check_stream_dtype(x, "x", dy, "dy");
  if (dresidual_out.has_value()) {
    check_like_x(*dresidual_out, "dresidual_out", x);
    check_same_dtype(*dresidual_out, "dresidual_out", x, "x");
  }
  check_weight(weight, weight_offset, x);
  const int64_t rows = c10::multiply_integers(lead_shape(x)), n = x.size(-1);
  TORCH_CHECK(rstd.device() == x.device() && rstd.scalar_type() == at::kFloat && rstd.is_contiguous() &&
                  rstd.numel() == rows,
              "rstd must be a contiguous float32 tensor of ", rows, " elements on ", x.device());
  TORCH_CHECK(!needs_dweight || weight.has_value(), "needs_dweight requires a weight");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty(x.sizes(), x.options());
  at::Tensor dweight = needs_dweight ? at::empty({n}, weight->options()) : at::empty({0}, x.options());
  if (n == 0) return {dx, dweight};
  if (rows == 0) return {dx, dweight.zero_()};
  const at::ScalarType w_type = weight.has_value() ? weight->scalar_type() : dy.scalar_type();
  const int num_sms = multiprocessor_count(x);
  with_element_type(dy.scalar_type(), "dy", [&](auto t_tag) {
    using T = decltype(t_tag);
    const int64_t workspace_elems = rmsnorm::rms_norm_bwd_workspace_elems<T>(rows, n, needs_dweight, num_sms);
    at::Tensor workspace = at::empty({workspace_elems}, x.options().dtype(at::kFloat));
    with_stream_type<T>(x, dy, [&](auto x_tag) {
      using X = decltype(x_tag);
      with_element_type(w_type, "weight", [&](auto w_tag) {
        using W = decltype(w_tag);
        W* dw = needs_dweight ? reinterpret_cast<W*>(dweight.data_ptr()) : nullptr;
        const cudaError_t status = rmsnorm::rms_norm_bwd<T, W, X>(
            reinterpret_cast<const T*>(dy.data_ptr()), row_layout(dy), reinterpret_cast<const X*>(x.data_ptr()),
            row_layout(x), data_or_null<X>(dresidual_out), row_layout_or_any(dresidual_out), data_or_null<W>(weight),
            static_cast<float>(weight_offset), round_xhat, rstd.data_ptr<float>(), reinterpret_cast<X*>(dx.data_ptr()),
            dw, workspace.data_ptr<float>(), rows, n, num_sms, current_stream(x));
        C10_CUDA_CHECK(status);
      });
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
  // Forward only: y quantized to fp8 e4m3fn, by `scale` (static) or per row (scale=None: dynamic,
  // amax capped by scale_ub).
  m.def(
      "rms_norm_quant_fwd(Tensor x, Tensor? residual, Tensor? weight, float weight_offset, float eps,"
      " bool round_xhat, Tensor? scale, Tensor? scale_ub) -> (Tensor y_q, Tensor residual_out, Tensor row_scale)");
}

TORCH_LIBRARY_IMPL(rmsnorm_cuda, CUDA, m) {
  m.impl("rms_norm_fwd", &rms_norm_fwd_cuda);
  m.impl("add_rms_norm_fwd", &add_rms_norm_fwd_cuda);
  m.impl("rms_norm_bwd", &rms_norm_bwd_cuda);
  m.impl("rms_norm_quant_fwd", &rms_norm_quant_fwd_cuda);
}

// TORCH_EXTENSION_NAME: the library's file name, set by torch.utils.cpp_extension, under which
// rmsnorm/cuda_ext.py imports it (the ops above register when it is loaded, either way).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm_fwd", &rms_norm_fwd_direct, "rms_norm_fwd without the dispatcher: (y, rstd or None)");
  m.def("add_rms_norm_fwd", &add_rms_norm_fwd_direct,
        "add_rms_norm_fwd without the dispatcher: (y, residual_out, rstd or None)");
}
