// Schemas of the uniform fake-quant ops, their host halves (argument
// handling, allocation, layout; the loops are the backends' kernels) and the
// C++ API entry points (which go through the dispatcher, so LibTorch users get
// the same autograd and device dispatch as Python).
#include "ops/uniform.h"

#include <ATen/DeviceGuard.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops/backward_host.h"
#include "ops/clip_mask.h"
#include "ops/value_checks.h"
#include "quantext/quantext.h"

namespace quantext {

KernelStub<UniformForwardKernel> uniform_forward_kernel{"quantext.fake_quant_uniform"};
KernelStub<UniformMaskedKernel> uniform_masked_kernel{"quantext.fake_quant_uniform_masked"};
KernelStub<UniformBackwardKernel> uniform_backward_kernel{"quantext.fake_quant_uniform_backward"};

UniformArgs prepare_uniform(const char* op, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                            int64_t qmin, int64_t qmax, std::optional<int64_t> axis, int64_t group_size, bool codes) {
  if (!codes) check_int_range(op, qmin, qmax);
  check_param_dtype(op, x, scale, "scale");
  TORCH_CHECK_TYPE(zero_point.scalar_type() == at::kInt || zero_point.scalar_type() == at::kLong ||
                       at::isFloatingType(zero_point.scalar_type()),
                   op, ": zero_point must be an int32, int64 or floating tensor, got ", zero_point.scalar_type());
  check_same_device(op, x, scale, "scale");
  check_same_device(op, x, zero_point, "zero_point");
  TORCH_CHECK_VALUE(zero_point.sizes() == scale.sizes(), op, ": zero_point shape ", zero_point.sizes(),
                    " does not match scale shape ", scale.sizes());
  Canonical c = codes ? canonicalize_codes(op, x, scale, "scale", axis, group_size)
                      : canonicalize(op, x, scale, "scale", axis, group_size);
  UniformArgs a{std::move(c), {}, {}, qmin, qmax};
  // A subnormal scale passes the first rule and is caught by the second.
  check_values(op, {positive_finite(scale, "scale"), normal_scale(scale), zero_point_in_range(zero_point, qmin, qmax)});
  a.scale = canonical_params(a.c, scale);
  a.zero_point = canonical_params(a.c, zero_point.to(scale.scalar_type()));
  return a;
}

namespace {

at::Tensor fake_quant_uniform_host(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                   int64_t qmin, int64_t qmax, std::optional<int64_t> axis, int64_t group_size,
                                   double grad_factor) {
  check_grad_factor("quantext.fake_quant_uniform", grad_factor);
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_uniform("quantext.fake_quant_uniform", x, scale, zero_point, qmin, qmax, axis, group_size);
  at::Tensor y = a.c.empty_out();
  if (x.numel() > 0) uniform_forward_kernel(x.device().type())(a, y);
  return a.c.restore(y, x);
}

std::tuple<at::Tensor, at::Tensor> fake_quant_uniform_masked_host(const at::Tensor& x, const at::Tensor& scale,
                                                                  const at::Tensor& zero_point, int64_t qmin,
                                                                  int64_t qmax, std::optional<int64_t> axis,
                                                                  int64_t group_size) {
  const char* op = "quantext.fake_quant_uniform_masked";
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_uniform(op, x, scale, zero_point, qmin, qmax, axis, group_size);
  return masked_forward(a, x, uniform_forward_kernel, uniform_masked_kernel);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quant_uniform_backward_host(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
    int64_t qmax, std::optional<int64_t> axis, int64_t group_size, double grad_factor, bool param_grads) {
  const char* op = "quantext.fake_quant_uniform_backward";
  check_grad_factor(op, grad_factor);
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_uniform(op, x, scale, zero_point, qmin, qmax, axis, group_size);
  auto [dx, grads] = backward_host(op, a, grad, x, scale, 2, uniform_backward_kernel, param_grads, grad_factor);
  return {dx, grads[0], grads[1]};
}

}  // namespace

QUANTEXT_FAKE_QUANT_HOST_IMPL(uniform);

std::pair<int64_t, int64_t> uniform_bounds(int64_t bits, bool is_signed, bool narrow_range) {
  TORCH_CHECK_VALUE(bits >= 2 && bits <= 16, "quantext.uniform_bounds: bits must be in [2, 16], got ", bits);
  const int64_t levels = int64_t{1} << bits;
  if (is_signed) return {-levels / 2 + (narrow_range ? 1 : 0), levels / 2 - 1};
  return {narrow_range ? 1 : 0, levels - 1};
}

at::Tensor fake_quant_uniform(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
                              int64_t qmax, std::optional<int64_t> axis, int64_t group_size, double grad_factor) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::fake_quant_uniform", "")
                       .typed<decltype(fake_quant_uniform)>();
  return op.call(x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor);
}

TORCH_LIBRARY_FRAGMENT(quantext, m) {
  m.def(
      "fake_quant_uniform(Tensor x, Tensor scale, Tensor zero_point, int qmin, int qmax, int? axis=None, "
      "int group_size=0, float grad_factor=1.0) -> Tensor");
  // The forward with the bit-packed clip mask its backward needs (ops/clip_mask.h).
  m.def(
      "fake_quant_uniform_masked(Tensor x, Tensor scale, Tensor zero_point, int qmin, int qmax, int? axis=None, "
      "int group_size=0) -> (Tensor, Tensor)");
  m.def(
      "fake_quant_uniform_backward(Tensor grad, Tensor x, Tensor scale, Tensor zero_point, int qmin, int qmax, "
      "int? axis, int group_size, float grad_factor, bool param_grads) -> (Tensor, Tensor, Tensor)");
}

}  // namespace quantext
