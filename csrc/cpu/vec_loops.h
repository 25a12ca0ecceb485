// Loops over one run of elements with a scheme formula, SIMD-wide (ATen
// Vectorized) with a scalar tail. float16/bfloat16 runs are converted to float
// in blocks that stay in L1 and go through the float loop. Formulas are
// template lambdas called with the math policy: f.template operator()<P>(...).
#pragma once

#include <ATen/cpu/vec/functional.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <tuple>
#include <type_traits>

#include "cpu/vec_policy.h"
#include "math/clip_mask.h"

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

// Writes the clip-mask bits (math/clip_mask.h) of the run of elements
// [first, first + n), in order. Words the run covers whole are stored; the
// partial words at its ends are OR-ed in atomically, since the neighbouring
// run may be another thread's: the mask must start zeroed.
class MaskWriter {
 public:
  MaskWriter(uint32_t* words, int64_t first, int64_t n) : words_(words), next_(first), first_(first), end_(first + n) {}
  MaskWriter(const MaskWriter&) = delete;
  MaskWriter& operator=(const MaskWriter&) = delete;
  ~MaskWriter() {
    if (next_ % math::kMaskWordBits != 0) store((next_ - 1) / math::kMaskWordBits, static_cast<uint32_t>(pending_));
  }

  // The bits of the next `count` (at most 32) elements, element j in bit j.
  void put(uint32_t bits, int count) {
    const int shift = static_cast<int>(next_ % math::kMaskWordBits);
    const int64_t word = next_ / math::kMaskWordBits;
    pending_ |= uint64_t{bits} << shift;
    next_ += count;
    if (shift + count >= math::kMaskWordBits) {
      store(word, static_cast<uint32_t>(pending_));
      pending_ >>= math::kMaskWordBits;
    }
  }

 private:
  void store(int64_t word, uint32_t v) {
    const int64_t lo = word * math::kMaskWordBits;
    if (lo >= first_ && lo + math::kMaskWordBits <= end_) {
      words_[word] = v;
    } else {
      std::atomic_ref<uint32_t>(words_[word]).fetch_or(v, std::memory_order_relaxed);
    }
  }

  uint32_t* words_;
  int64_t next_, first_, end_;
  uint64_t pending_ = 0;
};

// y[i] = f(x[i]).y, and the mask bit of element i from f(x[i]).inside.
template <typename acc_t, typename scalar_t, typename F>
void map_run_masked(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, MaskWriter& mask, const F& f) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    acc_t xb[kConvertBlock], yb[kConvertBlock];
    for (int64_t i = 0; i < n; i += kConvertBlock) {
      const int64_t m = std::min(kConvertBlock, n - i);
      at::vec::convert(x + i, xb, m);
      map_run_masked<acc_t>(xb, yb, m, mask, f);
      at::vec::convert(yb, y + i, m);
    }
  } else {
    using V = at::vec::Vectorized<acc_t>;
    constexpr uint32_t kLanes = (uint32_t{1} << V::size()) - 1;
    int64_t i = 0;
    for (; i + V::size() <= n; i += V::size()) {
      const auto r = f.template operator()<VecPolicy<acc_t>>(V::loadu(x + i));
      r.y.store(y + i);
      // The inside lanes are all ones, the others zero.
      mask.put(~static_cast<uint32_t>(r.inside.zero_mask()) & kLanes, V::size());
    }
    for (; i < n; ++i) {
      const auto r = f.template operator()<math::Scalar<acc_t>>(x[i]);
      y[i] = r.y;
      mask.put(r.inside ? 1u : 0u, 1);
    }
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
