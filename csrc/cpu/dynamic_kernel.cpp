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

#include "cpu/finite_range.h"
#include "cpu/uniform_items.h"
#include "cpu/vec_loops.h"
#include "math/dynamic_range.h"
#include "ops/dynamic.h"

namespace quantext {
namespace cpu {
namespace {

constexpr int64_t kGrain = 32768;  // elements per task

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
