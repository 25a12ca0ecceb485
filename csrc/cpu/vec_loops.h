// Loops over one run of elements with a scheme formula, SIMD-wide (ATen
// Vectorized) with a scalar tail. float16/bfloat16 runs are converted to float
// in blocks that stay in L1 and go through the float loop. Formulas are
// template lambdas called with the math policy: f.template operator()<P>(...).
#pragma once

#include <ATen/cpu/vec/functional.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <type_traits>

#include "cpu/vec_policy.h"

namespace quantext {
namespace cpu {

constexpr int64_t kConvertBlock = 512;

// y[i] = f(x[i]). The outputs alias nothing else, which lets the compiler keep
// the formula's constants (level tables) in registers across the stores.
template <typename acc_t, typename scalar_t, typename F>
void map_run(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, const F& f) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    acc_t xb[kConvertBlock], yb[kConvertBlock];
    for (int64_t i = 0; i < n; i += kConvertBlock) {
      const int64_t m = std::min(kConvertBlock, n - i);
      at::vec::convert(x + i, xb, m);
      map_run<acc_t>(xb, yb, m, f);
      at::vec::convert(yb, y + i, m);
    }
  } else {
    using V = at::vec::Vectorized<acc_t>;
    int64_t i = 0;
    for (; i + V::size() <= n; i += V::size()) f.template operator()<VecPolicy<acc_t>>(V::loadu(x + i)).store(y + i);
    for (; i < n; ++i) y[i] = f.template operator()<math::Scalar<acc_t>>(x[i]);
  }
}

// dx[i] = g(dy[i], x[i]).first and, with kSum, returns the sums of the
// members of .second (an std::array: the parameters' gradients). Lane sums
// are flushed into double every kFlush elements to bound rounding error.
template <bool kSum, typename acc_t, typename scalar_t, typename G>
auto grad_run(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ dx, int64_t n,
              const G& g) {
  using Sums = decltype(g.template operator()<math::Scalar<acc_t>>(acc_t(0), acc_t(0)).second);
  constexpr size_t K = std::tuple_size_v<Sums>;
  std::array<double, K> sum{};
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    acc_t dyb[kConvertBlock], xb[kConvertBlock], dxb[kConvertBlock];
    for (int64_t i = 0; i < n; i += kConvertBlock) {
      const int64_t m = std::min(kConvertBlock, n - i);
      at::vec::convert(dy + i, dyb, m);
      at::vec::convert(x + i, xb, m);
      const auto block = grad_run<kSum, acc_t>(dyb, xb, dxb, m, g);
      for (size_t k = 0; k < K; ++k) sum[k] += block[k];
      at::vec::convert(dxb, dx + i, m);
    }
  } else {
    constexpr int64_t kFlush = 4096;
    using V = at::vec::Vectorized<acc_t>;
    int64_t i = 0;
    while (i + V::size() <= n) {
      std::array<V, K> lanes;
      lanes.fill(V(0));
      const int64_t stop = std::min(n, i + kFlush);
      for (; i + V::size() <= stop; i += V::size()) {
        const auto [d, dparams] = g.template operator()<VecPolicy<acc_t>>(V::loadu(dy + i), V::loadu(x + i));
        d.store(dx + i);
        if constexpr (kSum) {
          for (size_t k = 0; k < K; ++k) lanes[k] += dparams[k];
        }
      }
      if constexpr (kSum) {
        for (size_t k = 0; k < K; ++k) sum[k] += at::vec::vec_reduce_all<acc_t>(std::plus<V>(), lanes[k]);
      }
    }
    for (; i < n; ++i) {
      const auto [d, dparams] = g.template operator()<math::Scalar<acc_t>>(dy[i], x[i]);
      dx[i] = d;
      if constexpr (kSum) {
        for (size_t k = 0; k < K; ++k) sum[k] += dparams[k];
      }
    }
  }
  return sum;
}

}  // namespace cpu
}  // namespace quantext
