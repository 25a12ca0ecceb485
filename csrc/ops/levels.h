// Level-scheme (PoT / APoT) ops: argument preparation and the compute-type
// level table shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "ops/canonical.h"
#include "quantext/levels.h"
#include "quantext/scheme_math.h"

namespace quantext {

struct LevelArgs {
  Canonical c;
  at::Tensor alpha;  // flattened in parameter order, float32 or float64
  LevelSpec spec;
  const char* op;  // for errors
};

// Checks the scheme arguments, alpha (dtype, device, shape, values) and lays
// out x, or with `codes` an integer code tensor (whose values it checks too).
LevelArgs prepare_levels(const char* op, const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme,
                         int64_t bits, bool is_signed, int64_t k, c10::string_view rounding,
                         std::optional<int64_t> axis, bool codes = false);

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

// The grid in compute type T: its levels as T, and thresholds such that for
// every value a of type T, `threshold < a` holds exactly when a lies above the
// switching point: the midpoint of the two T levels (nearest; so the result is
// the nearest representable level, a tie going to the smaller), or for log
// rounding the geometric midpoint l[i+1] / sqrt(2).
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

}  // namespace quantext
