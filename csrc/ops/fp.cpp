// Schemas and host halves of the minifloat fake-quant ops.
#include "ops/fp.h"

#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "ops/backward_host.h"
#include "ops/clip_mask.h"
#include "ops/dynamic.h"
#include "ops/value_checks.h"

namespace quantext {

KernelStub<FpForwardKernel> fp_forward_kernel{"quantext.fake_quant_fp"};
KernelStub<FpMaskedKernel> fp_masked_kernel{"quantext.fake_quant_fp_masked"};
KernelStub<FpBackwardKernel> fp_backward_kernel{"quantext.fake_quant_fp_backward"};
KernelStub<FpBlockKernel> fp_block_kernel{"quantext.fake_quant_fp_blocks"};

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

// NVFP4's tensor scale amax(x) / (448 * fp_max) over the finite |x| (1 when
// none exceeds 2^-126), from the dynamic op's one-pass finite-max reduction
// (its symmetric scale over qmax = 1), left on x's device: no host sync.
at::Tensor nvfp4_tensor_scale(const char* op, const at::Tensor& x, double fp_max) {
  constexpr double kMinNormal = 1.17549435082228750797e-38;  // 2^-126
  const auto f32 = x.options().dtype(at::kFloat);
  if (x.numel() == 0) return at::ones({}, f32);
  const DynamicArgs d = prepare_dynamic(op, x, -1, 1, true, false, kMinNormal);
  at::Tensor top = at::empty({1}, x.scalar_type() == at::kDouble ? x.options() : f32);
  at::Tensor zero_point = at::empty({1}, x.options().dtype(at::kInt));
  dynamic_kernel(x.device().type())(d, nullptr, nullptr, top, zero_point);
  top = top.to(at::kFloat).reshape({});
  return at::where(top > kMinNormal, top / (448.0 * fp_max), at::ones_like(top));
}

}  // namespace

FpBlockArgs prepare_fp_blocks(const char* op, const at::Tensor& x, int64_t exp_bits, int64_t man_bits,
                              c10::string_view special, int64_t block_size, c10::string_view scale_format,
                              const std::optional<at::Tensor>& tensor_scale) {
  const FpFormat format = fp_format(op, exp_bits, man_bits, special);
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op,
                   ": input must be float16, bfloat16, float32 or float64, got dtype ", t);
  TORCH_CHECK_VALUE(block_size >= 1 && block_size <= 32 && (block_size & (block_size - 1)) == 0, op,
                    ": block_size must be a power of two up to 32, got ", block_size);
  TORCH_CHECK_VALUE(x.dim() > 0 && x.size(-1) % block_size == 0, op, ": block_size=", block_size,
                    " must divide the last dimension, got input shape ", x.sizes());
  TORCH_CHECK_VALUE(scale_format == "e8m0" || scale_format == "e4m3", op,
                    ": scale_format must be 'e8m0' (MX) or 'e4m3' (NVFP4), got '", scale_format, "'");
  const bool nv = scale_format == "e4m3";
  TORCH_CHECK_VALUE(nv || !tensor_scale.has_value(), op, ": scale_format='e8m0' takes no tensor_scale");
  at::Tensor ts;
  if (nv && !tensor_scale.has_value()) {
    ts = nvfp4_tensor_scale(op, x, format.max_value);
  } else if (nv) {
    ts = *tensor_scale;
    TORCH_CHECK_TYPE(ts.scalar_type() == at::kFloat, op, ": tensor_scale must be float32, got ", ts.scalar_type());
    TORCH_CHECK_VALUE(ts.numel() == 1, op, ": tensor_scale must have one element, got shape ", ts.sizes());
    check_same_device(op, x, ts, "tensor_scale");
    check_values(op, {positive_finite(ts, "tensor_scale"), normal_scale(ts)});
  }
  return {x.contiguous(), block_size, format, std::ilogb(format.max_value), ts};
}

namespace {

at::Tensor fake_quant_fp_blocks_host(const at::Tensor& x, int64_t exp_bits, int64_t man_bits, c10::string_view special,
                                     int64_t block_size, c10::string_view scale_format,
                                     const std::optional<at::Tensor>& tensor_scale) {
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_fp_blocks("quantext.fake_quant_fp_blocks", x, exp_bits, man_bits, special, block_size,
                                   scale_format, tensor_scale);
  at::Tensor y = at::empty_like(a.x);
  if (x.numel() > 0) fp_block_kernel(x.device().type())(a, y, nullptr);
  return y;
}

std::tuple<at::Tensor, at::Tensor> fake_quant_fp_blocks_masked_host(const at::Tensor& x, int64_t exp_bits,
                                                                    int64_t man_bits, c10::string_view special,
                                                                    int64_t block_size, c10::string_view scale_format,
                                                                    const std::optional<at::Tensor>& tensor_scale) {
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_fp_blocks("quantext.fake_quant_fp_blocks_masked", x, exp_bits, man_bits, special, block_size,
                                   scale_format, tensor_scale);
  at::Tensor y = at::empty_like(a.x), mask = zeroed_clip_mask(x);
  if (x.numel() > 0) fp_block_kernel(x.device().type())(a, y, &mask);
  return {y, mask};
}

void register_fp_blocks(torch::Library& m) {
  m.impl("fake_quant_fp_blocks", &fake_quant_fp_blocks_host);
  m.impl("fake_quant_fp_blocks_masked", &fake_quant_fp_blocks_masked_host);
}

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
QUANTEXT_HOST_IMPL(register_fp_blocks)

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
  // Block-scaled (MX: E8M0 scales; NVFP4: E4M3 scales times tensor_scale, from x when not given) along the
  // last dimension.
  m.def(
      "fake_quant_fp_blocks(Tensor x, int exp_bits, int man_bits, str special, int block_size, str scale_format, "
      "Tensor? tensor_scale=None) -> Tensor");
  m.def(
      "fake_quant_fp_blocks_masked(Tensor x, int exp_bits, int man_bits, str special, int block_size, "
      "str scale_format, Tensor? tensor_scale=None) -> (Tensor, Tensor)");
}

}  // namespace quantext
