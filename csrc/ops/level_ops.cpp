// Schemas of the level-scheme (PoT / APoT) ops: the level and decode tables,
// and fake quantization with a learned clipping value alpha. One op serves
// both schemes: they share the kernel, the gradients and the argument rules,
// and differ only in the table the kernel searches.
#include "ops/level_ops.h"

#include <ATen/DeviceGuard.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ops/backward_host.h"
#include "ops/clip_mask.h"
#include "ops/codes.h"
#include "ops/value_checks.h"
#include "quantext/quantext.h"

namespace quantext {

KernelStub<LevelForwardKernel> level_forward_kernel{"quantext.fake_quant_levels"};
KernelStub<LevelMaskedKernel> level_masked_kernel{"quantext.fake_quant_levels_masked"};
KernelStub<LevelBackwardKernel> level_backward_kernel{"quantext.fake_quant_levels_backward"};

namespace {

// The largest T <= x (x >= 0).
template <typename T>
T round_down(double x) {
  const T v = static_cast<T>(x);
  return static_cast<double>(v) > x ? std::nextafter(v, T(0)) : v;
}

// The largest T <= (a + b) / 2 for levels 0 <= a <= b. float: the sum is
// exact in double (neighbouring levels are within a factor 2^29, or a = 0).
inline float midpoint_down(float a, float b) { return round_down<float>((double(a) + double(b)) / 2); }
// double: a + b = s + e exactly (two-sum); the midpoint is below s / 2 iff e < 0.
inline double midpoint_down(double a, double b) {
  const double s = a + b, bv = s - a, e = (a - (s - bv)) + (b - bv);
  return e < 0 ? std::nextafter(s / 2, 0.0) : s / 2;
}

// The LevelTable::pot_factor of a grid: c with thresholds[i] == levels[i] * c
// for i >= 1 when the non-zero levels of T are the consecutive normal powers
// of two up to 1 (and 0 <= thresholds[0] < levels[1]), else 0. Checked on the
// finished table, so the closed form can only reproduce the search.
template <typename T>
T pot_factor(const LevelSpec& spec, const math::LevelTable<T>& t) {
  const int n = 1 << t.steps;
  if (spec.scheme != LevelScheme::PoT || t.levels[n - 1] != T(1) || !(t.levels[1] >= std::numeric_limits<T>::min()) ||
      !(t.thresholds[0] >= T(0) && t.thresholds[0] < t.levels[1])) {
    return T(0);
  }
  const T c = n > 2 ? t.thresholds[1] / t.levels[1] : T(1.5);  // {0, 1}: any factor in (1, 2)
  if (!(c > T(1) && c < T(2))) return T(0);
  for (int i = 2; i < n; ++i) {
    if (t.levels[i] != t.levels[i - 1] * T(2)) return T(0);
    if (i + 1 < n && t.thresholds[i] != t.levels[i] * c) return T(0);
  }
  return c;
}

template <typename T>
math::LevelTable<T> make_level_table(const LevelArgs& a) {
  math::LevelTable<T> t{};
  t.steps = static_cast<int>(a.spec.magnitude_bits());
  t.lo = a.spec.is_signed ? T(-1) : T(0);
  const std::vector<double> levels = magnitude_levels(a.op, a.spec);
  for (size_t i = 0; i < levels.size(); ++i) t.levels[i] = static_cast<T>(levels[i]);
  for (size_t i = 0; i + 1 < levels.size(); ++i) {
    t.thresholds[i] = a.spec.rounding == LevelRounding::Log ? round_down<T>(levels[i + 1] * M_SQRT1_2)
                                                            : midpoint_down(t.levels[i], t.levels[i + 1]);
  }
  t.pot_factor = pot_factor(a.spec, t);
  t.pot_up = T(2);
  t.pot_down = T(1);
  return t;
}

}  // namespace

template <typename T>
const math::LevelTable<T>& level_table(const LevelArgs& a) {
  return cached_per_grid<math::LevelTable<T>>(
      a.spec, [&] { return std::make_unique<const math::LevelTable<T>>(make_level_table<T>(a)); });
}
template const math::LevelTable<float>& level_table<float>(const LevelArgs&);
template const math::LevelTable<double>& level_table<double>(const LevelArgs&);

LevelArgs prepare_levels(const char* op, const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme,
                         int64_t bits, bool is_signed, int64_t k, c10::string_view rounding,
                         std::optional<int64_t> axis, bool codes) {
  const LevelSpec spec = parse_level_spec(op, scheme, bits, is_signed, k, rounding);
  check_param_dtype(op, x, alpha, "alpha");
  check_same_device(op, x, alpha, "alpha");
  Canonical c =
      codes ? canonicalize_codes(op, x, alpha, "alpha", axis, 0) : canonicalize(op, x, alpha, "alpha", axis, 0);
  // Codes are checked with alpha: one host sync on a device.
  check_values(op, {positive_finite(alpha, "alpha"), codes ? level_codes_in_range(x, spec) : ValueCheck{}});
  at::Tensor flat = canonical_params(c, alpha);
  return {std::move(c), std::move(flat), spec, op};
}

namespace {

at::Tensor levels_op(c10::string_view scheme, int64_t bits, bool is_signed, int64_t k) {
  const char* op = "quantext.levels";
  const LevelSpec spec = parse_level_spec(op, scheme, bits, is_signed, k, "nearest");
  const auto magnitudes = magnitude_levels(op, spec);
  std::vector<double> table;
  if (is_signed) {
    for (auto it = magnitudes.rbegin(); it + 1 != magnitudes.rend(); ++it) table.push_back(-*it);
  }
  table.insert(table.end(), magnitudes.begin(), magnitudes.end());
  return at::tensor(table, at::kDouble);
}

at::Tensor apot_decode_table_op(int64_t bits, bool is_signed, int64_t k) {
  const char* op = "quantext.apot_decode_table";
  const LevelSpec spec = parse_level_spec(op, "apot", bits, is_signed, k, "nearest");
  const auto rows = apot_decode_rows(op, spec);
  const int64_t codes = int64_t{1} << spec.magnitude_bits();
  return at::tensor(rows, at::kLong).view({codes, static_cast<int64_t>(rows.size()) / codes});
}

at::Tensor fake_quant_levels_host(const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme, int64_t bits,
                                  bool is_signed, int64_t k, c10::string_view rounding, std::optional<int64_t> axis,
                                  double grad_factor) {
  check_grad_factor("quantext.fake_quant_levels", grad_factor);
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_levels("quantext.fake_quant_levels", x, alpha, scheme, bits, is_signed, k, rounding, axis);
  at::Tensor y = a.c.empty_out();
  if (x.numel() > 0) level_forward_kernel(x.device().type())(a, y);
  return a.c.restore(y, x);
}

std::tuple<at::Tensor, at::Tensor> fake_quant_levels_masked_host(const at::Tensor& x, const at::Tensor& alpha,
                                                                 c10::string_view scheme, int64_t bits, bool is_signed,
                                                                 int64_t k, c10::string_view rounding,
                                                                 std::optional<int64_t> axis) {
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a =
      prepare_levels("quantext.fake_quant_levels_masked", x, alpha, scheme, bits, is_signed, k, rounding, axis);
  return masked_forward(a, x, level_forward_kernel, level_masked_kernel);
}

std::tuple<at::Tensor, at::Tensor> fake_quant_levels_backward_host(const at::Tensor& grad, const at::Tensor& x,
                                                                   const at::Tensor& alpha, c10::string_view scheme,
                                                                   int64_t bits, bool is_signed, int64_t k,
                                                                   c10::string_view rounding,
                                                                   std::optional<int64_t> axis, double grad_factor,
                                                                   bool alpha_grad) {
  const char* op = "quantext.fake_quant_levels_backward";
  check_grad_factor(op, grad_factor);
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  const auto a = prepare_levels(op, x, alpha, scheme, bits, is_signed, k, rounding, axis);
  auto [dx, grads] = backward_host(op, a, grad, x, alpha, 1, level_backward_kernel, alpha_grad, grad_factor);
  return {dx, grads[0]};
}

}  // namespace

QUANTEXT_FAKE_QUANT_HOST_IMPL(levels);

at::Tensor levels(c10::string_view scheme, int64_t bits, bool is_signed, int64_t k) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("quantext::levels", "").typed<decltype(levels_op)>();
  return op.call(scheme, bits, is_signed, k);
}

at::Tensor apot_decode_table(int64_t bits, bool is_signed, int64_t k) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::apot_decode_table", "")
                       .typed<decltype(apot_decode_table_op)>();
  return op.call(bits, is_signed, k);
}

at::Tensor fake_quant_levels(const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme, int64_t bits,
                             bool is_signed, int64_t k, c10::string_view rounding, std::optional<int64_t> axis,
                             double grad_factor) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::fake_quant_levels", "")
                       .typed<decltype(fake_quant_levels)>();
  return op.call(x, alpha, scheme, bits, is_signed, k, rounding, axis, grad_factor);
}

TORCH_LIBRARY_FRAGMENT(quantext, m) {
  m.def("levels(str scheme, int bits, bool signed, int k=2) -> Tensor");
  m.def("apot_decode_table(int bits, bool signed, int k=2) -> Tensor");
  m.def(
      "fake_quant_levels(Tensor x, Tensor alpha, str scheme, int bits, bool signed, int k=2, "
      "str rounding=\"nearest\", int? axis=None, float grad_factor=1.0) -> Tensor");
  // The forward with the bit-packed clip mask its backward needs (ops/clip_mask.h).
  m.def(
      "fake_quant_levels_masked(Tensor x, Tensor alpha, str scheme, int bits, bool signed, int k=2, "
      "str rounding=\"nearest\", int? axis=None) -> (Tensor, Tensor)");
  m.def(
      "fake_quant_levels_backward(Tensor grad, Tensor x, Tensor alpha, str scheme, int bits, bool signed, int k, "
      "str rounding, int? axis, float grad_factor, bool alpha_grad) -> (Tensor, Tensor)");
}

// The tables take no tensor: one kernel for every backend.
TORCH_LIBRARY_IMPL(quantext, CompositeExplicitAutograd, m) {
  m.impl("levels", &levels_op);
  m.impl("apot_decode_table", &apot_decode_table_op);
}

}  // namespace quantext
