// CPU kernels of the uniform fake-quant ops: the loops of cpu/vec_loops.h
// over the scheme-math formulas (ATen's Vectorized<T>; float16/bfloat16
// computed in float), multi-threaded over the items of the RunLayout.
#include <array>
#include <cstdint>
#include <utility>

#include "cpu/param_source.h"
#include "cpu/vec_loops.h"
#include "ops/dispatch.h"
#include "ops/uniform.h"

namespace quantext {
namespace cpu {
namespace {

// The parameters of a vector from its source's (scale, 1/scale, zero point).
template <typename P, typename acc_t>
math::UniformParams<typename P::V> params_of(const std::array<typename P::V, 3>& l, acc_t qmin, acc_t qmax) {
  return {l[0], l[1], l[2], P::splat(qmin), P::splat(qmax)};
}

// fn(tag, item, begin, length, src, qmin, qmax) over every item: src the
// item's source of (scale, 1/scale, zero point) in the compute type of the
// input (scalar_t of tag), with S gradient sums.
template <size_t S, typename F>
void for_each_uniform_item(const UniformArgs& a, const F& fn) {
  dispatch_types(a.c.x, a.scale, [&](auto x_tag, auto s_tag) {
    using acc_t = acc_type<decltype(x_tag)>;
    const acc_t qmin(a.qmin), qmax(a.qmax);
    const auto* sp = a.scale.const_data_ptr<decltype(s_tag)>();
    const auto* zp = a.zero_point.const_data_ptr<decltype(s_tag)>();
    const auto params = [&](int64_t i) {
      const auto p = math::load_uniform<acc_t>(sp, zp, i, qmin, qmax);
      return std::array<acc_t, 3>{p.scale, p.inv_scale, p.zero_point};
    };
    for_each_source<acc_t, 3, S>(a.c.layout, params, [&](int64_t item, int64_t begin, int64_t len, auto& src) {
      fn(x_tag, item, begin, len, src, qmin, qmax);
    });
  });
}

void forward(const UniformArgs& a, at::Tensor& y) {
  for_each_uniform_item<0>(a, [&](auto tag, int64_t, int64_t begin, int64_t len, auto& src, auto qmin, auto qmax) {
    using scalar_t = decltype(tag);
    map_run<decltype(qmin)>(a.c.x.const_data_ptr<scalar_t>() + begin, y.mutable_data_ptr<scalar_t>() + begin, len, src,
                            [&]<typename P>(typename P::V v, const auto& l) {
                              return math::uniform_forward<P>(v, params_of<P>(l, qmin, qmax));
                            });
  });
}

void forward_masked(const UniformArgs& a, at::Tensor& y, at::Tensor& mask) {
  auto* words = reinterpret_cast<uint32_t*>(mask.mutable_data_ptr<int32_t>());
  for_each_uniform_item<0>(a, [&](auto tag, int64_t, int64_t begin, int64_t len, auto& src, auto qmin, auto qmax) {
    using scalar_t = decltype(tag);
    MaskWriter bits(words, begin, len);
    map_run_masked<decltype(qmin)>(a.c.x.const_data_ptr<scalar_t>() + begin, y.mutable_data_ptr<scalar_t>() + begin,
                                   len, bits, src, [&]<typename P>(typename P::V v, const auto& l) {
                                     return math::uniform_forward_masked<P>(v, params_of<P>(l, qmin, qmax));
                                   });
  });
}

at::Tensor backward(const UniformArgs& a, const at::Tensor& dy, at::Tensor& dx, bool param_grads) {
  at::Tensor partials = a.c.partials(param_grads ? 2 : 0, at::kDouble);
  with_flag(param_grads, [&](auto sums) {
    constexpr bool kSum = decltype(sums)::value;
    for_each_uniform_item<kSum ? 2 : 0>(
        a, [&](auto tag, int64_t item, int64_t begin, int64_t len, auto& src, auto qmin, auto qmax) {
          grad_item<kSum, decltype(qmin), decltype(tag)>(
              dy, a.c.x, dx, partials, item, begin, len, src,
              [&]<typename P>(typename P::V d, typename P::V v, const auto& l) {
                const auto r = math::uniform_backward<P>(d, v, params_of<P>(l, qmin, qmax));
                return std::pair{r.dx, std::array{r.dscale, r.dzero}};
              });
        });
  });
  return partials;
}

}  // namespace

QUANTEXT_REGISTER_FAKE_QUANT_KERNELS(uniform, CPU);

}  // namespace cpu
}  // namespace quantext
