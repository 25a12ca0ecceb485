// CPU kernels of the uniform fake-quant ops: vectorized with ATen's
// Vectorized<T> (float16/bfloat16 computed in float) and multi-threaded over
// the items of the RunLayout.
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "cpu/runs.h"
#include "cpu/vec_policy.h"
#include "ops/dispatch.h"
#include "ops/uniform.h"

namespace quantext {
namespace cpu {
namespace {

using math::Scalar;
using math::UniformParams;

template <typename acc_t>
UniformParams<at::vec::Vectorized<acc_t>> splat(const UniformParams<acc_t>& p) {
  using V = at::vec::Vectorized<acc_t>;
  return {V(p.scale), V(p.inv_scale), V(p.zero_point), V(p.qmin), V(p.qmax)};
}

// float16/bfloat16 runs are converted to float in blocks that stay in L1 and
// go through the float kernels.
constexpr int64_t kConvertBlock = 512;

template <typename scalar_t, typename acc_t>
void forward_run(const scalar_t* x, scalar_t* y, int64_t n, const UniformParams<acc_t>& p) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    acc_t xb[kConvertBlock], yb[kConvertBlock];
    for (int64_t i = 0; i < n; i += kConvertBlock) {
      const int64_t m = std::min(kConvertBlock, n - i);
      at::vec::convert(x + i, xb, m);
      forward_run(xb, yb, m, p);
      at::vec::convert(yb, y + i, m);
    }
  } else {
    using V = at::vec::Vectorized<acc_t>;
    const auto pv = splat(p);
    int64_t i = 0;
    for (; i + V::size() <= n; i += V::size()) {
      math::uniform_forward<VecPolicy<acc_t>>(V::loadu(x + i), pv).store(y + i);
    }
    for (; i < n; ++i) y[i] = math::uniform_forward<Scalar<acc_t>>(x[i], p);
  }
}

// Writes dx for one run and returns the run's (dscale, dzero) sums. Lane sums
// are flushed into double every kFlush elements to bound rounding error.
template <bool kParamGrads, typename scalar_t, typename acc_t>
std::pair<double, double> backward_run(const scalar_t* dy, const scalar_t* x, scalar_t* dx, int64_t n,
                                       const UniformParams<acc_t>& p) {
  constexpr int64_t kFlush = 4096;
  double ds = 0, dz = 0;
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    acc_t dyb[kConvertBlock], xb[kConvertBlock], dxb[kConvertBlock];
    for (int64_t i = 0; i < n; i += kConvertBlock) {
      const int64_t m = std::min(kConvertBlock, n - i);
      at::vec::convert(dy + i, dyb, m);
      at::vec::convert(x + i, xb, m);
      const auto [bs, bz] = backward_run<kParamGrads>(dyb, xb, dxb, m, p);
      at::vec::convert(dxb, dx + i, m);
      ds += bs;
      dz += bz;
    }
    return {ds, dz};
  } else {
    using V = at::vec::Vectorized<acc_t>;
    const auto pv = splat(p);
    int64_t i = 0;
    while (i + V::size() <= n) {
      V ds_lanes(0), dz_lanes(0);
      const int64_t stop = std::min(n, i + kFlush);
      for (; i + V::size() <= stop; i += V::size()) {
        const auto g = math::uniform_backward<VecPolicy<acc_t>>(V::loadu(dy + i), V::loadu(x + i), pv);
        g.dx.store(dx + i);
        if constexpr (kParamGrads) {
          ds_lanes += g.dscale;
          dz_lanes += g.dzero;
        }
      }
      if constexpr (kParamGrads) {
        ds += at::vec::vec_reduce_all<acc_t>(std::plus<V>(), ds_lanes);
        dz += at::vec::vec_reduce_all<acc_t>(std::plus<V>(), dz_lanes);
      }
    }
    for (; i < n; ++i) {
      const auto g = math::uniform_backward<Scalar<acc_t>>(dy[i], x[i], p);
      dx[i] = g.dx;
      if constexpr (kParamGrads) {
        ds += g.dscale;
        dz += g.dzero;
      }
    }
    return {ds, dz};
  }
}

at::Tensor fake_quant_uniform_cpu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                  int64_t qmin, int64_t qmax, std::optional<int64_t> axis, int64_t group_size,
                                  double /*grad_factor*/) {
  const auto a = prepare_uniform("quantext.fake_quant_uniform", x, scale, zero_point, qmin, qmax, axis, group_size);
  at::Tensor y = a.c.empty_out();
  dispatch_types(x, a.scale, [&](auto x_tag, auto s_tag) {
    using scalar_t = decltype(x_tag);
    using scale_t = decltype(s_tag);
    using acc_t = acc_type<scalar_t>;
    const scalar_t* xp = a.c.x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const scale_t* sp = a.scale.const_data_ptr<scale_t>();
    const scale_t* zp = a.zero_point.const_data_ptr<scale_t>();
    for_each_item(a.c.layout, [&](int64_t item, int64_t begin, int64_t len) {
      const auto p = math::load_uniform<acc_t>(sp, zp, a.c.layout.param_of_item(item), acc_t(a.qmin), acc_t(a.qmax));
      forward_run(xp + begin, yp + begin, len, p);
    });
  });
  return a.c.restore(y, x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quant_uniform_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
    int64_t qmax, std::optional<int64_t> axis, int64_t group_size, double grad_factor, bool param_grads) {
  const auto a =
      prepare_uniform("quantext.fake_quant_uniform_backward", x, scale, zero_point, qmin, qmax, axis, group_size);
  const at::Tensor dy = a.c.grad_in("quantext.fake_quant_uniform_backward", grad, x);
  at::Tensor dx = a.c.empty_out();
  const int64_t items = a.c.layout.num_items();
  at::Tensor partials = at::zeros({param_grads ? 2 : 0, items}, x.options().dtype(at::kDouble));
  dispatch_types(x, a.scale, [&](auto x_tag, auto s_tag) {
    using scalar_t = decltype(x_tag);
    using scale_t = decltype(s_tag);
    using acc_t = acc_type<scalar_t>;
    const scalar_t* xp = a.c.x.const_data_ptr<scalar_t>();
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    const scale_t* sp = a.scale.const_data_ptr<scale_t>();
    const scale_t* zp = a.zero_point.const_data_ptr<scale_t>();
    double* part = partials.mutable_data_ptr<double>();
    for_each_item(a.c.layout, [&](int64_t item, int64_t begin, int64_t len) {
      const auto p = math::load_uniform<acc_t>(sp, zp, a.c.layout.param_of_item(item), acc_t(a.qmin), acc_t(a.qmax));
      if (param_grads) {
        const auto [ds, dz] = backward_run<true>(dyp + begin, xp + begin, dxp + begin, len, p);
        part[item] = ds;
        part[items + item] = dz;
      } else {
        backward_run<false>(dyp + begin, xp + begin, dxp + begin, len, p);
      }
    });
  });
  if (!param_grads) return {a.c.restore(dx, x), at::zeros_like(scale), at::zeros_like(scale)};
  const auto grads = a.c.reduce_items(partials, grad_factor, scale);
  return {a.c.restore(dx, x), grads[0], grads[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(quantext, CPU, m) {
  m.impl("fake_quant_uniform", &fake_quant_uniform_cpu);
  m.impl("fake_quant_uniform_backward", &fake_quant_uniform_backward_cpu);
}

}  // namespace cpu
}  // namespace quantext
