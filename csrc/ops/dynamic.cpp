// Schemas and host halves of the dynamic fake-quant ops: the arguments are
// checked and the outputs allocated here, the backends fill them.
#include "ops/dynamic.h"

#include <ATen/DeviceGuard.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "ops/canonical.h"
#include "ops/clip_mask.h"

namespace quantext {

KernelStub<DynamicKernel> dynamic_kernel{"quantext.fake_quant_dynamic"};

DynamicArgs prepare_dynamic(const char* op, const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric,
                            bool per_token, double min_scale) {
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
                   ": input must be float16, bfloat16, float32 or float64, got dtype ", t);
  check_int_range(op, qmin, qmax);
  TORCH_CHECK_VALUE(qmin < qmax, op, ": a dynamic grid needs qmin < qmax, got qmin=", qmin, ", qmax=", qmax);
  TORCH_CHECK_VALUE(!symmetric || (qmin < 0 && qmax > 0), op,
                    ": symmetric=True needs a signed range (qmin < 0 < qmax), got [", qmin, ", ", qmax,
                    "]; use symmetric=False for non-negative data (its zero point is then qmin)");
  // A subnormal float32 scale would make 0 * (1 / scale) NaN.
  TORCH_CHECK_VALUE(std::isfinite(min_scale) && min_scale >= std::numeric_limits<float>::min() &&
                        min_scale <= std::numeric_limits<float>::max(),
                    op, ": min_scale must be finite and in [2^-126, float32 max], got ", min_scale);
  TORCH_CHECK_VALUE(!per_token || x.dim() > 0, op, ": per_token=True needs an input with a last dimension, got a ",
                    "0-dimensional tensor");
  if (per_token) {
    const int64_t rows = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
    return {x.contiguous(), rows, x.size(-1), qmin, qmax, symmetric, min_scale};
  }
  return {x.is_non_overlapping_and_dense() ? x : x.contiguous(), 1, x.numel(), qmin, qmax, symmetric, min_scale};
}

namespace {

struct DynamicOut {
  at::Tensor y, mask, scale, zero_point;
};

DynamicOut run_dynamic(const char* op, const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric, bool per_token,
                       double min_scale, bool values, bool masked) {
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const DynamicArgs a = prepare_dynamic(op, x, qmin, qmax, symmetric, per_token, min_scale);
  std::vector<int64_t> shape;
  if (per_token) {
    shape = x.sizes().vec();
    shape.back() = 1;
  }
  const auto scale_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  DynamicOut o{{}, {}, at::empty(shape, x.options().dtype(scale_dtype)), at::empty(shape, x.options().dtype(at::kInt))};
  if (values) o.y = at::empty_like(a.x);  // a dense a.x: the same strides
  if (masked) o.mask = zeroed_clip_mask(x);
  if (o.scale.numel() > 0) {
    dynamic_kernel(x.device().type())(a, values ? &o.y : nullptr, masked ? &o.mask : nullptr, o.scale, o.zero_point);
  }
  return o;
}

at::Tensor fake_quant_dynamic_host(const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric, bool per_token,
                                   double min_scale) {
  return run_dynamic("quantext.fake_quant_dynamic", x, qmin, qmax, symmetric, per_token, min_scale, true, false).y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fake_quant_dynamic_masked_host(
    const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric, bool per_token, double min_scale) {
  auto o =
      run_dynamic("quantext.fake_quant_dynamic_masked", x, qmin, qmax, symmetric, per_token, min_scale, true, true);
  return {o.y, o.mask, o.scale, o.zero_point};
}

std::tuple<at::Tensor, at::Tensor> dynamic_qparams_host(const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric,
                                                        bool per_token, double min_scale) {
  auto o = run_dynamic("quantext.dynamic_qparams", x, qmin, qmax, symmetric, per_token, min_scale, false, false);
  return {o.scale, o.zero_point};
}

void register_dynamic(torch::Library& m) {
  m.impl("fake_quant_dynamic", &fake_quant_dynamic_host);
  m.impl("fake_quant_dynamic_masked", &fake_quant_dynamic_masked_host);
  m.impl("dynamic_qparams", &dynamic_qparams_host);
}

}  // namespace

QUANTEXT_HOST_IMPL(register_dynamic)

TORCH_LIBRARY_FRAGMENT(quantext, m) {
  m.def(
      "fake_quant_dynamic(Tensor x, int qmin, int qmax, bool symmetric=True, bool per_token=True, "
      "float min_scale=1e-8) -> Tensor");
  // The forward with its clip mask (ops/clip_mask.h) and the parameters it used.
  m.def(
      "fake_quant_dynamic_masked(Tensor x, int qmin, int qmax, bool symmetric, bool per_token, float min_scale) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "dynamic_qparams(Tensor x, int qmin, int qmax, bool symmetric=True, bool per_token=True, "
      "float min_scale=1e-8) -> (Tensor, Tensor)");
}

}  // namespace quantext
