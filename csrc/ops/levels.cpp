// Schemas of the level-scheme (PoT / APoT) ops: the level and decode tables,
// and fake quantization with a learned clipping value alpha. One op serves
// both schemes: they share the kernel, the gradients and the argument rules,
// and differ only in the table the kernel searches.
#include "ops/levels.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "ops/codes.h"
#include "ops/value_checks.h"
#include "quantext/quantext.h"

namespace quantext {

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

}  // namespace

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
