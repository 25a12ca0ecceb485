// CPU kernels of the level-scheme (PoT / APoT) fake-quant op: SIMD level
// search (closed form, bucket index, scan or binary search, picked once per
// call; see quantext/scheme_math.h), on x itself where one alpha serves the
// tensor (cpu/scaled_table.h), multi-threaded over the items of the
// RunLayout.
#include <torch/library.h>

#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "cpu/level_buckets.h"
#include "cpu/runs.h"
#include "cpu/scaled_table.h"
#include "cpu/vec_loops.h"
#include "ops/dispatch.h"
#include "ops/levels.h"

namespace quantext {
namespace cpu {
namespace {

// The CpuLevelTable of a grid, built on first use and kept for the process
// (there are a few hundred grids at most): building the bucket index of an
// 8-bit grid takes longer than searching 1e4 elements with it.
template <typename T>
const CpuLevelTable<T>& cpu_level_table(const LevelArgs& a) {
  using Key = std::tuple<LevelScheme, int64_t, bool, int64_t, LevelRounding>;
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<const CpuLevelTable<T>>> tables;
  const std::lock_guard<std::mutex> lock(mutex);
  auto& table = tables[Key{a.spec.scheme, a.spec.bits, a.spec.is_signed, a.spec.k, a.spec.rounding}];
  if (!table) table = std::make_unique<const CpuLevelTable<T>>(make_level_table<T>(a));
  return *table;
}

// Calls f(search, grid): the search picked for the table once per call, on its
// ScaledTable where one alpha serves the tensor and the search has one, else
// on the table itself.
template <typename acc_t, typename param_t, typename F>
void with_grid(const math::LevelTable<acc_t>& table, const param_t* alpha, int64_t alphas, const F& f) {
  math::with_level_search<VecPolicy<acc_t>, false>(table, [&](auto search) {
    with_scaled_table<decltype(search)>(table, alpha, alphas, [&](const auto& grid) { f(search, grid); });
  });
}

at::Tensor fake_quant_levels_cpu(const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme, int64_t bits,
                                 bool is_signed, int64_t k, c10::string_view rounding, std::optional<int64_t> axis,
                                 double /*grad_factor*/) {
  const auto a = prepare_levels("quantext.fake_quant_levels", x, alpha, scheme, bits, is_signed, k, rounding, axis);
  at::Tensor y = a.c.empty_out();
  dispatch_types(x, a.alpha, [&](auto x_tag, auto p_tag) {
    using scalar_t = decltype(x_tag);
    using param_t = decltype(p_tag);
    using acc_t = acc_type<scalar_t>;
    const CpuLevelTable<acc_t>& levels = cpu_level_table<acc_t>(a);
    const scalar_t* xp = a.c.x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const param_t* ap = a.alpha.const_data_ptr<param_t>();
    with_grid(levels.table, ap, a.alpha.numel(), [&](auto search, const auto& grid) {
      using S = decltype(search);
      for_each_item(a.c.layout, [&](int64_t item, int64_t begin, int64_t len) {
        const acc_t s = static_cast<acc_t>(ap[a.c.layout.param_of_item(item)]);
        map_run<acc_t>(xp + begin, yp + begin, len,
                       [&]<typename P>(typename P::V v) { return math::levels_forward<P, S>(v, P::splat(s), grid); });
      });
    });
  });
  return a.c.restore(y, x);
}

std::tuple<at::Tensor, at::Tensor> fake_quant_levels_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                  const at::Tensor& alpha, c10::string_view scheme,
                                                                  int64_t bits, bool is_signed, int64_t k,
                                                                  c10::string_view rounding,
                                                                  std::optional<int64_t> axis, double grad_factor,
                                                                  bool alpha_grad) {
  const char* op = "quantext.fake_quant_levels_backward";
  const auto a = prepare_levels(op, x, alpha, scheme, bits, is_signed, k, rounding, axis);
  const at::Tensor dy = a.c.grad_in(op, grad, x);
  at::Tensor dx = a.c.empty_out();
  at::Tensor partials = at::zeros({alpha_grad ? 1 : 0, a.c.layout.num_items()}, x.options().dtype(at::kDouble));
  dispatch_types(x, a.alpha, [&](auto x_tag, auto p_tag) {
    using scalar_t = decltype(x_tag);
    using param_t = decltype(p_tag);
    using acc_t = acc_type<scalar_t>;
    const CpuLevelTable<acc_t>& levels = cpu_level_table<acc_t>(a);
    const scalar_t* xp = a.c.x.const_data_ptr<scalar_t>();
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    const param_t* ap = a.alpha.const_data_ptr<param_t>();
    double* part = partials.mutable_data_ptr<double>();
    with_grid(levels.table, ap, a.alpha.numel(), [&](auto search, const auto& grid) {
      using S = decltype(search);
      for_each_item(a.c.layout, [&](int64_t item, int64_t begin, int64_t len) {
        const acc_t s = static_cast<acc_t>(ap[a.c.layout.param_of_item(item)]);
        const auto g = [&]<typename P>(typename P::V d, typename P::V v) {
          return math::levels_backward<P, S>(d, v, P::splat(s), grid);
        };
        if (alpha_grad) {
          part[item] = grad_run<true, acc_t>(dyp + begin, xp + begin, dxp + begin, len, g);
        } else {
          grad_run<false, acc_t>(dyp + begin, xp + begin, dxp + begin, len, g);
        }
      });
    });
  });
  at::Tensor dalpha = alpha_grad ? a.c.reduce_items(partials, grad_factor, alpha)[0] : at::zeros_like(alpha);
  return {a.c.restore(dx, x), dalpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(quantext, CPU, m) {
  m.impl("fake_quant_levels", &fake_quant_levels_cpu);
  m.impl("fake_quant_levels_backward", &fake_quant_levels_backward_cpu);
}

}  // namespace cpu
}  // namespace quantext
