// The range (or the largest magnitude) of the finite values of a run,
// vectorized: what the dynamic ops (per tensor, per token) and the block-scaled
// formats (per block) derive their parameters from.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/vec_loops.h"

namespace quantext {
namespace cpu {

template <typename T>
struct Range {
  T lo = 0, hi = 0;
  Range merge(const Range& o) const { return {std::min(lo, o.lo), std::max(hi, o.hi)}; }
};

// The range of the finite values of x[0, n), widened to hold 0: a non-finite
// value counts as 0 (it does not stretch the grid; the formula maps it as usual).
template <typename T>
Range<T> finite_range(const T* x, int64_t n) {
  using V = at::vec::Vectorized<T>;
  const V zero(0);
  V lo0(0), hi0(0), lo1(0), hi1(0);
  const auto finite = [&](const V& v) { return V::blendv(zero, v, (v - v) == zero); };
  int64_t i = 0;
  for (; i + 2 * V::size() <= n; i += 2 * V::size()) {
    const V a = finite(V::loadu(x + i)), b = finite(V::loadu(x + i + V::size()));
    lo0 = at::vec::minimum(lo0, a);
    hi0 = at::vec::maximum(hi0, a);
    lo1 = at::vec::minimum(lo1, b);
    hi1 = at::vec::maximum(hi1, b);
  }
  T lo[V::size()], hi[V::size()];
  at::vec::minimum(lo0, lo1).store(lo);
  at::vec::maximum(hi0, hi1).store(hi);
  Range<T> r;
  for (int64_t j = 0; j < V::size(); ++j) r = r.merge({lo[j], hi[j]});
  for (; i < n; ++i) {
    const T v = x[i] - x[i] == T(0) ? x[i] : T(0);
    r = r.merge({v, v});
  }
  return r;
}

// The largest finite |x[i]| of x[0, n), 0 if there is none: a block's maximum
// for the block-scaled formats (one accumulator, reduced across lanes by
// shuffles: a block is a few vectors, and its reduction is per-block overhead).
template <typename T>
T finite_absmax(const T* x, int64_t n) {
  using V = at::vec::Vectorized<T>;
  const V zero(0);
  V acc(0);
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) {
    const V v = V::loadu(x + i);
    acc = at::vec::maximum(acc, V::blendv(zero, v.abs(), (v - v) == zero));
  }
  T m = at::vec::vec_reduce_all<T>([](const V& a, const V& b) { return at::vec::maximum(a, b); }, acc);
  for (; i < n; ++i) {
    const T a = std::abs(x[i]);
    if (x[i] - x[i] == T(0) && a > m) m = a;
  }
  return m;
}

// reduce(x, n) of a run, a float16/bfloat16 one converted to float in L1-sized
// blocks whose results are merged.
template <typename acc_t, typename scalar_t, typename Reduce, typename Merge>
auto reduce_run(const scalar_t* x, int64_t n, const Reduce& reduce, const Merge& merge) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return reduce(x, n);
  } else {
    acc_t buf[kConvertBlock];
    decltype(reduce(buf, n)) r{};
    for (int64_t i = 0; i < n; i += kConvertBlock) {
      const int64_t m = std::min(kConvertBlock, n - i);
      at::vec::convert(x + i, buf, m);
      r = merge(r, reduce(buf, m));
    }
    return r;
  }
}

template <typename acc_t, typename scalar_t>
Range<acc_t> run_range(const scalar_t* x, int64_t n) {
  return reduce_run<acc_t>(
      x, n, [](const acc_t* v, int64_t m) { return finite_range(v, m); },
      [](const Range<acc_t>& a, const Range<acc_t>& b) { return a.merge(b); });
}

template <typename acc_t, typename scalar_t>
acc_t run_absmax(const scalar_t* x, int64_t n) {
  return reduce_run<acc_t>(
      x, n, [](const acc_t* v, int64_t m) { return finite_absmax(v, m); },
      [](acc_t a, acc_t b) { return std::max(a, b); });
}

}  // namespace cpu
}  // namespace quantext
