// CPU kernels of the level-scheme (PoT / APoT) fake-quant op: SIMD level
// search (closed form, bucket index, scan or binary search, picked once per
// call; see math/scheme_math.h), on x itself where one alpha serves the
// tensor (cpu/scaled_table.h), multi-threaded over the items of the
// RunLayout.
#include <array>
#include <cstdint>
#include <memory>
#include <utility>

#include "cpu/level_buckets.h"
#include "cpu/param_source.h"
#include "cpu/scaled_table.h"
#include "cpu/vec_loops.h"
#include "ops/dispatch.h"
#include "ops/level_ops.h"

namespace quantext {
namespace cpu {
namespace {

// The grid's CpuLevelTable: the shared level table plus, for 8-bit float32
// grids, the bucket index, built once per grid like the table itself.
template <typename T>
const CpuLevelTable<T>& cpu_level_table(const LevelArgs& a) {
  return cached_per_grid<CpuLevelTable<T>>(a.spec,
                                           [&] { return std::make_unique<const CpuLevelTable<T>>(level_table<T>(a)); });
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

// fn(tag, search, grid, item, begin, length, src) over every item: the grid
// in the compute type of the input (scalar_t of tag) with its search, src the
// item's source of alpha with S gradient sums.
template <size_t S, typename F>
void for_each_level_item(const LevelArgs& a, const F& fn) {
  dispatch_types(a.c.x, a.alpha, [&](auto x_tag, auto p_tag) {
    using param_t = decltype(p_tag);
    using acc_t = acc_type<decltype(x_tag)>;
    const param_t* ap = a.alpha.const_data_ptr<param_t>();
    const auto params = [&](int64_t i) { return std::array<acc_t, 1>{static_cast<acc_t>(ap[i])}; };
    with_grid(cpu_level_table<acc_t>(a).table, ap, a.alpha.numel(), [&](auto search, const auto& grid) {
      for_each_source<acc_t, 1, S>(a.c.layout, params, [&](int64_t item, int64_t begin, int64_t len, auto& src) {
        fn(x_tag, search, grid, item, begin, len, src);
      });
    });
  });
}

void forward(const LevelArgs& a, at::Tensor& y) {
  const RawData x = RawData::in(a.c.x), out = RawData::out(y);
  for_each_level_item<0>(
      a, [&](auto tag, auto search, const auto& grid, int64_t, int64_t begin, int64_t len, auto& src) {
        using scalar_t = decltype(tag);
        using S = decltype(search);
        map_run<acc_type<decltype(tag)>>(
            x.at<const scalar_t>(begin), out.at<scalar_t>(begin), len, src,
            [&]<typename P>(typename P::V v, const auto& l) { return math::levels_forward<P, S>(v, l[0], grid); });
      });
}

void forward_masked(const LevelArgs& a, at::Tensor& y, at::Tensor& mask) {
  auto* words = reinterpret_cast<uint32_t*>(mask.mutable_data_ptr<int32_t>());
  const RawData x = RawData::in(a.c.x), out = RawData::out(y);
  for_each_level_item<0>(
      a, [&](auto tag, auto search, const auto& grid, int64_t, int64_t begin, int64_t len, auto& src) {
        using scalar_t = decltype(tag);
        using S = decltype(search);
        MaskWriter bits(words, begin, len);
        map_run_masked<acc_type<decltype(tag)>>(x.at<const scalar_t>(begin), out.at<scalar_t>(begin), len, bits, src,
                                                [&]<typename P>(typename P::V v, const auto& l) {
                                                  return math::levels_forward_masked<P, S>(v, l[0], grid);
                                                });
      });
}

at::Tensor backward(const LevelArgs& a, const at::Tensor& dy, at::Tensor& dx, bool alpha_grad) {
  at::Tensor partials = a.c.partials(alpha_grad ? 1 : 0, at::kDouble);
  const GradData data(dy, a.c.x, dx, partials);
  with_flag(alpha_grad, [&](auto sums) {
    constexpr bool kSum = decltype(sums)::value;
    for_each_level_item<kSum ? 1 : 0>(
        a, [&](auto tag, auto search, const auto& grid, int64_t item, int64_t begin, int64_t len, auto& src) {
          using S = decltype(search);
          grad_item<kSum, acc_type<decltype(tag)>, decltype(tag)>(
              data, item, begin, len, src, [&]<typename P>(typename P::V d, typename P::V v, const auto& l) {
                const auto r = math::levels_backward<P, S>(d, v, l[0], grid);
                return std::pair{r.dx, std::array{r.dalpha}};
              });
        });
  });
  return partials;
}

}  // namespace

QUANTEXT_REGISTER_FAKE_QUANT_KERNELS(level, CPU);

}  // namespace cpu
}  // namespace quantext
