// CPU kernels of the uniform fake-quant ops: the loops of cpu/vec_loops.h
// over the scheme-math formulas (ATen's Vectorized<T>; float16/bfloat16
// computed in float), multi-threaded over the items of the RunLayout.
#include <array>
#include <cstdint>
#include <utility>

#include "cpu/runs.h"
#include "cpu/vec_loops.h"
#include "ops/dispatch.h"
#include "ops/uniform.h"

namespace quantext {
namespace cpu {
namespace {

using math::UniformParams;

// The parameters in the lanes of policy P (broadcast once per run).
template <typename P, typename acc_t>
UniformParams<typename P::V> lanes(const UniformParams<acc_t>& p) {
  return {P::splat(p.scale), P::splat(p.inv_scale), P::splat(p.zero_point), P::splat(p.qmin), P::splat(p.qmax)};
}

// fn(item, begin, length, params) over every item, with the item's parameters
// in the compute type of the input.
template <typename F>
void for_each_uniform_item(const UniformArgs& a, const F& fn) {
  dispatch_types(a.c.x, a.scale, [&](auto x_tag, auto s_tag) {
    using scalar_t = decltype(x_tag);
    using scale_t = decltype(s_tag);
    using acc_t = acc_type<scalar_t>;
    const scale_t* sp = a.scale.const_data_ptr<scale_t>();
    const scale_t* zp = a.zero_point.const_data_ptr<scale_t>();
    for_each_item(a.c.layout, [&](int64_t item, int64_t begin, int64_t len) {
      const auto p = math::load_uniform<acc_t>(sp, zp, a.c.layout.param_of_item(item), acc_t(a.qmin), acc_t(a.qmax));
      fn(scalar_t{}, item, begin, len, p);
    });
  });
}

void forward(const UniformArgs& a, at::Tensor& y) {
  for_each_uniform_item(a, [&](auto tag, int64_t, int64_t begin, int64_t len, const auto& p) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    map_run<acc_t>(a.c.x.const_data_ptr<scalar_t>() + begin, y.mutable_data_ptr<scalar_t>() + begin, len,
                   [&]<typename P>(typename P::V v) { return math::uniform_forward<P>(v, lanes<P>(p)); });
  });
}

void forward_masked(const UniformArgs& a, at::Tensor& y, at::Tensor& mask) {
  auto* words = reinterpret_cast<uint32_t*>(mask.mutable_data_ptr<int32_t>());
  for_each_uniform_item(a, [&](auto tag, int64_t, int64_t begin, int64_t len, const auto& p) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    MaskWriter bits(words, begin, len);
    map_run_masked<acc_t>(a.c.x.const_data_ptr<scalar_t>() + begin, y.mutable_data_ptr<scalar_t>() + begin, len, bits,
                          [&]<typename P>(typename P::V v) { return math::uniform_forward_masked<P>(v, lanes<P>(p)); });
  });
}

at::Tensor backward(const UniformArgs& a, const at::Tensor& dy, at::Tensor& dx, bool param_grads) {
  const int64_t items = a.c.layout.num_items();
  at::Tensor partials = at::empty({param_grads ? 2 : 0, items}, a.c.x.options().dtype(at::kDouble));
  double* part = partials.mutable_data_ptr<double>();
  for_each_uniform_item(a, [&](auto tag, int64_t item, int64_t begin, int64_t len, const auto& p) {
    using scalar_t = decltype(tag);
    using acc_t = acc_type<scalar_t>;
    const auto g = [&]<typename P>(typename P::V d, typename P::V v) {
      const auto r = math::uniform_backward<P>(d, v, lanes<P>(p));
      return std::pair{r.dx, std::array{r.dscale, r.dzero}};
    };
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>() + begin;
    const scalar_t* xp = a.c.x.const_data_ptr<scalar_t>() + begin;
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>() + begin;
    if (param_grads) {
      const auto [ds, dz] = grad_run<true, acc_t>(dyp, xp, dxp, len, g);
      part[item] = ds;
      part[items + item] = dz;
    } else {
      grad_run<false, acc_t>(dyp, xp, dxp, len, g);
    }
  });
  return partials;
}

}  // namespace

QUANTEXT_REGISTER_KERNEL(uniform_forward_kernel, CPU, &forward);
QUANTEXT_REGISTER_KERNEL(uniform_masked_kernel, CPU, &forward_masked);
QUANTEXT_REGISTER_KERNEL(uniform_backward_kernel, CPU, &backward);

}  // namespace cpu
}  // namespace quantext
