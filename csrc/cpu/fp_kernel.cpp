// CPU kernels of the minifloat fake-quant ops: the loops of cpu/vec_loops.h
// over math/fp_math.h, one (scale, 1/scale) source per item.
#include <array>
#include <cstdint>
#include <utility>

#include "cpu/param_source.h"
#include "cpu/vec_loops.h"
#include "math/fp_math.h"
#include "ops/dispatch.h"
#include "ops/fp.h"

namespace quantext {
namespace cpu {
namespace {

template <typename P, typename T>
math::FpGrid<typename P::V> splat_grid(const math::FpGrid<T>& g) {
  return {P::splat(g.max_value), P::splat(g.min_normal), P::splat(g.ulp)};
}

template <typename P>
math::FpParams<typename P::V> params_of(const std::array<typename P::V, 2>& l) {
  return {l[0], l[1]};
}

// fn(tag, item, begin, length, src, grid) over every item, src the item's
// (scale, 1/scale) in the compute type with S gradient sums.
template <size_t S, typename F>
void for_each_fp_item(const FpArgs& a, const F& fn) {
  dispatch_types(a.c.x, a.scale, [&](auto x_tag, auto s_tag) {
    using acc_t = acc_type<decltype(x_tag)>;
    using scale_t = decltype(s_tag);
    const auto* sp = a.scale.const_data_ptr<scale_t>();
    const math::FpGrid<acc_t> grid{acc_t(a.format.max_value), acc_t(a.format.min_normal), acc_t(a.format.ulp)};
    const auto params = [&](int64_t i) {
      const scale_t s = sp[i];
      return std::array<acc_t, 2>{acc_t(s), acc_t(scale_t(1) / s)};  // the reciprocal in the scale's precision
    };
    for_each_source<acc_t, 2, S>(a.c.layout, params, [&](int64_t item, int64_t begin, int64_t len, auto& src) {
      fn(x_tag, item, begin, len, src, grid);
    });
  });
}

void forward(const FpArgs& a, at::Tensor& y) {
  const RawData x = RawData::in(a.c.x), out = RawData::out(y);
  for_each_fp_item<0>(a, [&](auto tag, int64_t, int64_t begin, int64_t len, auto& src, const auto& g) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    map_run<acc_t>(x.at<const scalar_t>(begin), out.at<scalar_t>(begin), len, src,
                   [&]<typename P>(typename P::V v, const auto& l) {
                     return math::fp_forward<P>(v, params_of<P>(l), splat_grid<P>(g));
                   });
  });
}

void forward_masked(const FpArgs& a, at::Tensor& y, at::Tensor& mask) {
  auto* words = reinterpret_cast<uint32_t*>(mask.mutable_data_ptr<int32_t>());
  const RawData x = RawData::in(a.c.x), out = RawData::out(y);
  for_each_fp_item<0>(a, [&](auto tag, int64_t, int64_t begin, int64_t len, auto& src, const auto& g) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    MaskWriter bits(words, begin, len);
    map_run_masked<acc_t>(x.at<const scalar_t>(begin), out.at<scalar_t>(begin), len, bits, src,
                          [&]<typename P>(typename P::V v, const auto& l) {
                            return math::fp_forward_masked<P>(v, params_of<P>(l), splat_grid<P>(g));
                          });
  });
}

at::Tensor backward(const FpArgs& a, const at::Tensor& dy, at::Tensor& dx, bool param_grads) {
  at::Tensor partials = a.c.partials(param_grads ? 1 : 0, at::kDouble);
  const GradData data(dy, a.c.x, dx, partials);
  with_flag(param_grads, [&](auto sums) {
    constexpr bool kSum = decltype(sums)::value;
    for_each_fp_item<kSum ? 1 : 0>(
        a, [&](auto tag, int64_t item, int64_t begin, int64_t len, auto& src, const auto& g) {
          using scalar_t = decltype(tag);
          grad_item<kSum, acc_type<scalar_t>, scalar_t>(
              data, item, begin, len, src, [&]<typename P>(typename P::V d, typename P::V v, const auto& l) {
                const auto r = math::fp_backward<P>(d, v, params_of<P>(l), splat_grid<P>(g));
                return std::pair{r.dx, std::array{r.dscale}};
              });
        });
  });
  return partials;
}

}  // namespace

QUANTEXT_REGISTER_FAKE_QUANT_KERNELS(fp, CPU);

}  // namespace cpu
}  // namespace quantext
