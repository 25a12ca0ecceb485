// ScaledTables (math/scheme_math.h) for the CPU kernels: a grid's
// thresholds carried over to x for one clipping value alpha, so that the
// forward compares |x| with them and needs no division per element.
#pragma once

#include <c10/util/bit_cast.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "math/scheme_math.h"

namespace quantext {
namespace cpu {

template <typename T>
using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

// The largest x >= 0 of type T whose quotient x / alpha, rounded in T, is at
// most q >= 0. The quotient does not decrease with x, nor x with its bits:
// a binary search over the bits, its bracket first narrowed around q * alpha.
template <typename T>
T largest_at_most(T q, T alpha) {
  using U = Bits<T>;
  const auto at_most = [&](U bits) { return c10::bit_cast<T>(bits) / alpha <= q; };
  U lo = 0;                                                     // 0 / alpha <= q
  U hi = c10::bit_cast<U>(std::numeric_limits<T>::infinity());  // inf / alpha > q
  constexpr U kNear = 2;
  const U guess = c10::bit_cast<U>(q * alpha);
  if (guess >= kNear && at_most(guess - kNear)) lo = guess - kNear;
  if (guess < hi - kNear && !at_most(guess + kNear)) hi = guess + kNear;
  while (hi - lo > 1) {
    const U mid = lo + (hi - lo) / 2;
    (at_most(mid) ? lo : hi) = mid;
  }
  return c10::bit_cast<T>(lo);
}

// Searches that a ScaledTable serves: the unrolled scan (up to 15 thresholds
// to carry over) and the PoT closed form (two).
template <typename S>
constexpr bool kScalable =
    S::kind == math::SearchKind::ClosedForm || (S::kind == math::SearchKind::Scan && S::steps > 0);

// The ScaledTable of grid t for search S and alpha, or false where the
// closed form does not carry over. Halving x halves its rounded quotient as
// long as both stay normal numbers, so the carried-over thresholds of a PoT
// grid are the largest one's halvings down to a normal smallest one (which is
// also computed to check).
template <typename S, typename T>
bool scale_table(const math::LevelTable<T>& t, T alpha, math::ScaledTable<T>& out) {
  static_assert(kScalable<S>);
  using U = Bits<T>;
  const int n = 1 << t.steps;  // levels
  out.table = t;
  out.inside_hi = largest_at_most(T(1), alpha);
  out.inside_lo = t.lo < 0 ? -out.inside_hi : -largest_at_most(T(0), alpha);
  const U all = ~U(0);
  out.magnitude_mask = c10::bit_cast<T>(t.lo < 0 ? all >> 1 : all);
  T* bounds = out.table.thresholds;
  if constexpr (S::kind == math::SearchKind::Scan) {
    for (int i = 0; i + 1 < n; ++i) bounds[i] = largest_at_most(t.thresholds[i], alpha);
    return true;
  } else {
    bounds[0] = largest_at_most(t.thresholds[0], alpha);
    if (n == 2) return true;  // {0, 1}: the zero threshold decides alone
    // thresholds[i] = thresholds[n - 2] * 2^(i - n + 2) for i >= 1.
    const T top = largest_at_most(t.thresholds[n - 2], alpha);
    const T smallest = std::ldexp(top, 3 - n);
    if (!(smallest >= std::numeric_limits<T>::min()) || largest_at_most(t.thresholds[1], alpha) != smallest) {
      return false;
    }
    const T binade = math::Scalar<T>::floor_pow2(top);  // where x switches from level 1/2 to 1
    out.table.pot_factor = top / binade;
    out.table.pot_up = T(1) / binade;
    out.table.pot_down = out.table.pot_up / 2;
    return true;
  }
}

// Calls f(grid) with the ScaledTable of t for search S where one alpha
// (alphas == 1) serves the whole tensor and S has one, else with t.
template <typename S, typename T, typename param_t, typename F>
void with_scaled_table(const math::LevelTable<T>& t, const param_t* alpha, int64_t alphas, const F& f) {
  if constexpr (kScalable<S>) {
    math::ScaledTable<T> scaled;
    if (alphas == 1 && scale_table<S>(t, static_cast<T>(alpha[0]), scaled)) return f(scaled);
  }
  f(t);
}

}  // namespace cpu
}  // namespace quantext
