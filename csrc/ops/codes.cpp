// Schemas of the integer-code ops, their dtype rules, host halves and the
// C++ API entry points. quantize gives the integer each element would be stored as;
// dequantize maps codes back to values bit-identical to fake quantization.
#include "ops/codes.h"

#include <ATen/DeviceGuard.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops/canonical.h"
#include "ops/value_checks.h"
#include "quantext/quantext.h"

namespace quantext {

KernelStub<UniformCodesKernel> quantize_uniform_kernel{"quantext.quantize_uniform"};
KernelStub<UniformCodesKernel> dequantize_uniform_kernel{"quantext.dequantize_uniform"};
KernelStub<LevelCodesKernel> quantize_levels_kernel{"quantext.quantize_levels"};
KernelStub<LevelCodesKernel> dequantize_levels_kernel{"quantext.dequantize_levels"};

at::ScalarType uniform_code_dtype(int64_t qmin, int64_t qmax) {
  if (qmin >= -128 && qmax <= 127) return at::kChar;
  if (qmin >= 0 && qmax <= 255) return at::kByte;
  if (qmin >= -32768 && qmax <= 32767) return at::kShort;
  return at::kInt;
}

std::pair<int64_t, int64_t> code_dtype_range(const char* op, const at::Tensor& codes) {
  check_code_dtype(op, codes);
  std::pair<int64_t, int64_t> range;
  AT_DISPATCH_INTEGRAL_TYPES(codes.scalar_type(), "quantext_code_range", [&] {
    range = {std::numeric_limits<scalar_t>::lowest(), std::numeric_limits<scalar_t>::max()};
  });
  return range;
}

ValueCheck level_codes_in_range(const at::Tensor& codes, const LevelSpec& spec) {
  const int64_t top = (int64_t{1} << spec.magnitude_bits()) - 1;
  const int64_t lo = spec.is_signed ? -top : 0;
  return integers_in_range(codes, lo, top, [=] {
    return c10::str("codes must lie in [", lo, ", ", top, "] for ", spec.bits, "-bit ",
                    spec.is_signed ? "signed" : "unsigned", " levels");
  });
}

namespace {

// Allocates the canonical output of dtype `dtype`, runs the backend's kernel
// on it (non-empty inputs) and restores the layout of `input`.
template <typename Args, typename Kernel>
at::Tensor run_codes(const Args& a, const KernelStub<Kernel>& kernel, const at::Tensor& input, at::ScalarType dtype) {
  at::Tensor out = at::empty_like(a.c.x, a.c.x.options().dtype(dtype));
  if (input.numel() > 0) kernel(input.device().type())(a, out);
  return a.c.restore(out, input);
}

at::Tensor quantize_uniform_host(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                 int64_t qmin, int64_t qmax, std::optional<int64_t> axis, int64_t group_size) {
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_uniform("quantext.quantize_uniform", x, scale, zero_point, qmin, qmax, axis, group_size);
  return run_codes(a, quantize_uniform_kernel, x, uniform_code_dtype(qmin, qmax));
}

at::Tensor dequantize_uniform_host(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero_point,
                                   std::optional<int64_t> axis, int64_t group_size) {
  const c10::OptionalDeviceGuard guard(at::device_of(codes));
  const char* op = "quantext.dequantize_uniform";
  const auto [lo, hi] = code_dtype_range(op, codes);
  const auto a = prepare_uniform(op, codes, scale, zero_point, lo, hi, axis, group_size, true);
  return run_codes(a, dequantize_uniform_kernel, codes, scale.scalar_type());
}

at::Tensor quantize_levels_host(const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme, int64_t bits,
                                bool is_signed, int64_t k, c10::string_view rounding, std::optional<int64_t> axis) {
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_levels("quantext.quantize_levels", x, alpha, scheme, bits, is_signed, k, rounding, axis);
  return run_codes(a, quantize_levels_kernel, x, level_code_dtype(a.spec));
}

at::Tensor dequantize_levels_host(const at::Tensor& codes, const at::Tensor& alpha, c10::string_view scheme,
                                  int64_t bits, bool is_signed, int64_t k, std::optional<int64_t> axis) {
  const c10::OptionalDeviceGuard guard(at::device_of(codes));
  const auto a =
      prepare_levels("quantext.dequantize_levels", codes, alpha, scheme, bits, is_signed, k, "nearest", axis, true);
  return run_codes(a, dequantize_levels_kernel, codes, alpha.scalar_type());
}

void register_codes(torch::Library& m) {
  m.impl("quantize_uniform", &quantize_uniform_host);
  m.impl("dequantize_uniform", &dequantize_uniform_host);
  m.impl("quantize_levels", &quantize_levels_host);
  m.impl("dequantize_levels", &dequantize_levels_host);
}

}  // namespace

QUANTEXT_HOST_IMPL(register_codes)

at::Tensor quantize_uniform(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
                            int64_t qmax, std::optional<int64_t> axis, int64_t group_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::quantize_uniform", "")
                       .typed<decltype(quantize_uniform)>();
  return op.call(x, scale, zero_point, qmin, qmax, axis, group_size);
}

at::Tensor dequantize_uniform(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero_point,
                              std::optional<int64_t> axis, int64_t group_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::dequantize_uniform", "")
                       .typed<decltype(dequantize_uniform)>();
  return op.call(codes, scale, zero_point, axis, group_size);
}

at::Tensor quantize_levels(const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme, int64_t bits,
                           bool is_signed, int64_t k, c10::string_view rounding, std::optional<int64_t> axis) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::quantize_levels", "")
                       .typed<decltype(quantize_levels)>();
  return op.call(x, alpha, scheme, bits, is_signed, k, rounding, axis);
}

at::Tensor dequantize_levels(const at::Tensor& codes, const at::Tensor& alpha, c10::string_view scheme, int64_t bits,
                             bool is_signed, int64_t k, std::optional<int64_t> axis) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::dequantize_levels", "")
                       .typed<decltype(dequantize_levels)>();
  return op.call(codes, alpha, scheme, bits, is_signed, k, axis);
}

TORCH_LIBRARY_FRAGMENT(quantext, m) {
  m.def(
      "quantize_uniform(Tensor x, Tensor scale, Tensor zero_point, int qmin, int qmax, int? axis=None, "
      "int group_size=0) -> Tensor");
  m.def(
      "dequantize_uniform(Tensor codes, Tensor scale, Tensor zero_point, int? axis=None, int group_size=0) -> Tensor");
  m.def(
      "quantize_levels(Tensor x, Tensor alpha, str scheme, int bits, bool signed, int k=2, str rounding=\"nearest\", "
      "int? axis=None) -> Tensor");
  m.def(
      "dequantize_levels(Tensor codes, Tensor alpha, str scheme, int bits, bool signed, int k=2, int? axis=None) "
      "-> Tensor");
}

}  // namespace quantext
