// Schemas and host halves of the minifloat fake-quant ops.
#include "ops/fp.h"

#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "ops/backward_host.h"
#include "ops/clip_mask.h"
#include "ops/value_checks.h"

namespace quantext {

KernelStub<FpForwardKernel> fp_forward_kernel{"quantext.fake_quant_fp"};
KernelStub<FpMaskedKernel> fp_masked_kernel{"quantext.fake_quant_fp_masked"};
KernelStub<FpBackwardKernel> fp_backward_kernel{"quantext.fake_quant_fp_backward"};

FpFormat fp_format(const char* op, int64_t exp_bits, int64_t man_bits, c10::string_view special) {
  TORCH_CHECK_VALUE(exp_bits >= 1 && man_bits >= 0 && 1 + exp_bits + man_bits <= 8, op,
                    ": exp_bits >= 1, man_bits >= 0 and 1 + exp_bits + man_bits <= 8 are needed, got exp_bits=",
                    exp_bits, ", man_bits=", man_bits);
  TORCH_CHECK_VALUE(special == "ieee" || special == "fn" || special == "finite", op,
                    ": special must be 'ieee', 'fn' or 'finite', got '", special, "'");
  TORCH_CHECK_VALUE(special != "ieee" || exp_bits >= 2, op,
                    ": special='ieee' reserves the top exponent for inf and NaN, which needs exp_bits >= 2, got ",
                    exp_bits);
  TORCH_CHECK_VALUE(special != "fn" || man_bits >= 1, op,
                    ": special='fn' makes the all-ones mantissa of the top exponent NaN, which needs man_bits >= 1, "
                    "got ",
                    man_bits);
  const int64_t bias = (int64_t{1} << (exp_bits - 1)) - 1;
  const int64_t top = (int64_t{1} << exp_bits) - 1 - bias - (special == "ieee" ? 1 : 0);  // largest exponent
  const double ulp = std::ldexp(1.0, static_cast<int>(-man_bits));
  const double mantissa = 2.0 - (special == "fn" ? 2 * ulp : ulp);  // fn: the all-ones mantissa is NaN
  return {std::ldexp(mantissa, static_cast<int>(top)), std::ldexp(1.0, static_cast<int>(1 - bias)), ulp};
}

FpArgs prepare_fp(const char* op, const at::Tensor& x, const at::Tensor& scale, int64_t exp_bits, int64_t man_bits,
                  c10::string_view special, std::optional<int64_t> axis, int64_t group_size) {
  const FpFormat format = fp_format(op, exp_bits, man_bits, special);
  check_param_dtype(op, x, scale, "scale");
  check_same_device(op, x, scale, "scale");
  Canonical c = canonicalize(op, x, scale, "scale", axis, group_size);
  // A subnormal scale passes the first rule and is caught by the second.
  check_values(op, {positive_finite(scale, "scale"), normal_scale(scale)});
  at::Tensor flat = canonical_params(c, scale);
  return {std::move(c), std::move(flat), format};
}

namespace {

at::Tensor fake_quant_fp_host(const at::Tensor& x, const at::Tensor& scale, int64_t exp_bits, int64_t man_bits,
                              c10::string_view special, std::optional<int64_t> axis, int64_t group_size,
                              double grad_factor) {
  check_grad_factor("quantext.fake_quant_fp", grad_factor);
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_fp("quantext.fake_quant_fp", x, scale, exp_bits, man_bits, special, axis, group_size);
  at::Tensor y = a.c.empty_out();
  if (x.numel() > 0) fp_forward_kernel(x.device().type())(a, y);
  return a.c.restore(y, x);
}

std::tuple<at::Tensor, at::Tensor> fake_quant_fp_masked_host(const at::Tensor& x, const at::Tensor& scale,
                                                             int64_t exp_bits, int64_t man_bits,
                                                             c10::string_view special, std::optional<int64_t> axis,
                                                             int64_t group_size) {
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_fp("quantext.fake_quant_fp_masked", x, scale, exp_bits, man_bits, special, axis, group_size);
  return masked_forward(a, x, fp_forward_kernel, fp_masked_kernel);
}

std::tuple<at::Tensor, at::Tensor> fake_quant_fp_backward_host(const at::Tensor& grad, const at::Tensor& x,
                                                               const at::Tensor& scale, int64_t exp_bits,
                                                               int64_t man_bits, c10::string_view special,
                                                               std::optional<int64_t> axis, int64_t group_size,
                                                               double grad_factor, bool param_grads) {
  const char* op = "quantext.fake_quant_fp_backward";
  check_grad_factor(op, grad_factor);
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_fp(op, x, scale, exp_bits, man_bits, special, axis, group_size);
  auto [dx, grads] = backward_host(op, a, grad, x, scale, 1, fp_backward_kernel, param_grads, grad_factor);
  return {dx, grads[0]};
}

}  // namespace

QUANTEXT_FAKE_QUANT_HOST_IMPL(fp);

TORCH_LIBRARY_FRAGMENT(quantext, m) {
  m.def(
      "fake_quant_fp(Tensor x, Tensor scale, int exp_bits, int man_bits, str special, int? axis=None, "
      "int group_size=0, float grad_factor=1.0) -> Tensor");
  // The forward with the bit-packed clip mask its backward needs (ops/clip_mask.h).
  m.def(
      "fake_quant_fp_masked(Tensor x, Tensor scale, int exp_bits, int man_bits, str special, int? axis=None, "
      "int group_size=0) -> (Tensor, Tensor)");
  m.def(
      "fake_quant_fp_backward(Tensor grad, Tensor x, Tensor scale, int exp_bits, int man_bits, str special, "
      "int? axis, int group_size, float grad_factor, bool param_grads) -> (Tensor, Tensor)");
}

}  // namespace quantext
