// Loops over one run of elements with a scheme formula, SIMD-wide (ATen
// Vectorized) when the tensor's dtype is the compute type, scalar otherwise
// and for the tail. Formulas are template lambdas called with the math
// policy: f.template operator()<P>(values...).
#pragma once

#include <algorithm>
#include <type_traits>

#include "cpu/vec_policy.h"

namespace quantext {
namespace cpu {

// y[i] = f(x[i]).
template <typename acc_t, typename scalar_t, typename F>
void map_run(const scalar_t* x, scalar_t* y, int64_t n, const F& f) {
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using V = at::vec::Vectorized<acc_t>;
    for (; i + V::size() <= n; i += V::size()) f.template operator()<VecPolicy<acc_t>>(V::loadu(x + i)).store(y + i);
  }
  for (; i < n; ++i) y[i] = static_cast<scalar_t>(f.template operator()<math::Scalar<acc_t>>(acc_t(x[i])));
}

// dx[i] = g(dy[i], x[i]).dx and, with kSum, returns the sum of the second
// member (a parameter's gradient). Lane sums are flushed into double every
// kFlush elements to bound rounding error.
template <bool kSum, typename acc_t, typename scalar_t, typename G>
double grad_run(const scalar_t* dy, const scalar_t* x, scalar_t* dx, int64_t n, const G& g) {
  constexpr int64_t kFlush = 4096;
  double sum = 0;
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using V = at::vec::Vectorized<acc_t>;
    while (i + V::size() <= n) {
      V lanes(0);
      const int64_t stop = std::min(n, i + kFlush);
      for (; i + V::size() <= stop; i += V::size()) {
        const auto [d, dparam] = g.template operator()<VecPolicy<acc_t>>(V::loadu(dy + i), V::loadu(x + i));
        d.store(dx + i);
        if constexpr (kSum) lanes += dparam;
      }
      if constexpr (kSum) sum += at::vec::vec_reduce_all<acc_t>(std::plus<V>(), lanes);
    }
  }
  for (; i < n; ++i) {
    const auto [d, dparam] = g.template operator()<math::Scalar<acc_t>>(acc_t(dy[i]), acc_t(x[i]));
    dx[i] = static_cast<scalar_t>(d);
    if constexpr (kSum) sum += dparam;
  }
  return sum;
}

}  // namespace cpu
}  // namespace quantext
