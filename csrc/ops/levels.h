// Level-scheme (PoT / APoT) ops: argument preparation and the compute-type
// level table shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>

#include "ops/canonical.h"
#include "quantext/levels.h"
#include "quantext/scheme_math.h"

namespace quantext {

struct LevelArgs {
  Canonical c;
  at::Tensor alpha;  // flattened in parameter order, float32 or float64
  LevelSpec spec;
  LevelGrid grid;
};

// Checks the scheme arguments, alpha (dtype, device, shape, values) and lays
// out x, or with `codes` an integer code tensor.
LevelArgs prepare_levels(const char* op, const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme,
                         int64_t bits, bool is_signed, int64_t k, c10::string_view rounding,
                         std::optional<int64_t> axis, bool codes = false);

// The grid in compute type T. Thresholds are rounded down (toward zero) so
// that, for every value a of type T, `threshold < a` holds exactly when a lies
// above the double-precision midpoint.
template <typename T>
math::LevelTable<T> make_level_table(const LevelArgs& a) {
  math::LevelTable<T> t{};
  const auto& g = a.grid;
  t.steps = static_cast<int>(a.spec.magnitude_bits());
  t.lo = a.spec.is_signed ? T(-1) : T(0);
  for (size_t i = 0; i < g.levels.size(); ++i) t.levels[i] = static_cast<T>(g.levels[i]);
  for (size_t i = 0; i < g.thresholds.size(); ++i) {
    T v = static_cast<T>(g.thresholds[i]);
    if (static_cast<double>(v) > g.thresholds[i]) v = std::nextafter(v, T(0));
    t.thresholds[i] = v;
  }
  return t;
}

}  // namespace quantext
