// CPU kernel of the dynamic fake-quant ops. Rows are reduced and quantized in
// parallel, each while it is in cache: one pass over memory. Rows too long
// for that (per tensor, a few long tokens) are reduced in parallel chunks,
// then quantized in parallel chunks. Min and max do not depend on the order
// of the reduction, so results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "cpu/uniform_items.h"
#include "cpu/vec_loops.h"
#include "math/dynamic_range.h"
#include "ops/dynamic.h"

namespace quantext {
namespace cpu {
namespace {

constexpr int64_t kGrain = 32768;  // elements per task

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

// finite_range of a float16/bfloat16 run, converted to float in L1-sized blocks.
template <typename acc_t, typename scalar_t>
Range<acc_t> run_range(const scalar_t* x, int64_t n) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return finite_range(x, n);
  } else {
    acc_t buf[kConvertBlock];
    Range<acc_t> r;
    for (int64_t i = 0; i < n; i += kConvertBlock) {
      const int64_t m = std::min(kConvertBlock, n - i);
      at::vec::convert(x + i, buf, m);
      r = r.merge(finite_range(buf, m));
    }
    return r;
  }
}

void dynamic(const DynamicArgs& a, at::Tensor* y, at::Tensor* mask, at::Tensor& scale, at::Tensor& zero_point) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "quantext_dynamic", [&] {
    using acc_t = acc_type<scalar_t>;  // also the scale's type
    const scalar_t* x = a.x.const_data_ptr<scalar_t>();
    scalar_t* out = y ? y->mutable_data_ptr<scalar_t>() : nullptr;
    auto* words = mask ? reinterpret_cast<uint32_t*>(mask->mutable_data_ptr<int32_t>()) : nullptr;
    auto* sp = scale.mutable_data_ptr<acc_t>();
    auto* zp = zero_point.mutable_data_ptr<int32_t>();
    const acc_t qmin(a.qmin), qmax(a.qmax), min_scale(a.min_scale);
    const int64_t cols = a.cols;

    // Stores row r's parameters and returns them as the uniform kernels use them.
    const auto params = [&](int64_t r, const Range<acc_t>& range) {
      const auto q = math::dynamic_qparams(range.lo, range.hi, qmin, qmax, a.symmetric, min_scale);
      sp[r] = q.scale;
      zp[r] = static_cast<int32_t>(q.zero_point);
      return math::load_uniform<acc_t>(&q.scale, &q.zero_point, 0, qmin, qmax);
    };
    const auto quantize = [&](const math::UniformParams<acc_t>& p, int64_t begin, int64_t len) {
      SplatParams<acc_t, 3> src({p.scale, p.inv_scale, p.zero_point});
      if (words) {
        MaskWriter bits(words, begin, len);
        map_run_masked<acc_t>(x + begin, out + begin, len, bits, src, [&]<typename P>(typename P::V v, const auto& l) {
          return math::uniform_forward_masked<P>(v, params_of<P>(l, qmin, qmax));
        });
      } else {
        map_run<acc_t>(x + begin, out + begin, len, src, [&]<typename P>(typename P::V v, const auto& l) {
          return math::uniform_forward<P>(v, params_of<P>(l, qmin, qmax));
        });
      }
    };

    if (a.rows >= at::get_num_threads() || cols <= kGrain) {
      at::parallel_for(0, a.rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(cols, 1)),
                       [&](int64_t lo, int64_t hi) {
                         for (int64_t r = lo; r < hi; ++r) {
                           const auto p = params(r, run_range<acc_t>(x + r * cols, cols));
                           if (out) quantize(p, r * cols, cols);
                         }
                       });
      return;
    }
    for (int64_t r = 0; r < a.rows; ++r) {
      const int64_t base = r * cols;
      const auto range = at::parallel_reduce(
          int64_t{0}, cols, kGrain, Range<acc_t>{},
          [&](int64_t b, int64_t e, Range<acc_t> acc) { return acc.merge(run_range<acc_t>(x + base + b, e - b)); },
          [](const Range<acc_t>& l, const Range<acc_t>& rr) { return l.merge(rr); });
      const auto p = params(r, range);
      if (out) at::parallel_for(0, cols, kGrain, [&](int64_t b, int64_t e) { quantize(p, base + b, e - b); });
    }
  });
}

}  // namespace

QUANTEXT_REGISTER_KERNEL(dynamic_kernel, CPU, &dynamic);

}  // namespace cpu
}  // namespace quantext
