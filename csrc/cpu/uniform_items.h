// The items of a uniform op with their parameter sources, shared by the
// fake-quant and the code kernels so that both run one formula on one set of
// parameters.
#pragma once

#include <array>
#include <cstdint>

#include "cpu/param_source.h"
#include "ops/dispatch.h"
#include "ops/uniform.h"

namespace quantext {
namespace cpu {

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

}  // namespace cpu
}  // namespace quantext
