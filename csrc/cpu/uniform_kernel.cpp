// CPU kernels of the uniform fake-quant ops: the loops of cpu/vec_loops.h
// over the scheme-math formulas (ATen's Vectorized<T>; float16/bfloat16
// computed in float), multi-threaded over the items of the RunLayout.
#include <array>
#include <cstdint>
#include <utility>

#include "cpu/uniform_items.h"
#include "cpu/vec_loops.h"

namespace quantext {
namespace cpu {
namespace {

void forward(const UniformArgs& a, at::Tensor& y) {
  const RawData x = RawData::in(a.c.x), out = RawData::out(y);
  for_each_uniform_item<0>(a, [&](auto tag, int64_t, int64_t begin, int64_t len, auto& src, auto qmin, auto qmax) {
    using scalar_t = decltype(tag);
    map_run<decltype(qmin)>(x.at<const scalar_t>(begin), out.at<scalar_t>(begin), len, src,
                            [&]<typename P>(typename P::V v, const auto& l) {
                              return math::uniform_forward<P>(v, params_of<P>(l, qmin, qmax));
                            });
  });
}

void forward_masked(const UniformArgs& a, at::Tensor& y, at::Tensor& mask) {
  auto* words = reinterpret_cast<uint32_t*>(mask.mutable_data_ptr<int32_t>());
  const RawData x = RawData::in(a.c.x), out = RawData::out(y);
  for_each_uniform_item<0>(a, [&](auto tag, int64_t, int64_t begin, int64_t len, auto& src, auto qmin, auto qmax) {
    using scalar_t = decltype(tag);
    MaskWriter bits(words, begin, len);
    map_run_masked<decltype(qmin)>(x.at<const scalar_t>(begin), out.at<scalar_t>(begin), len, bits, src,
                                   [&]<typename P>(typename P::V v, const auto& l) {
                                     return math::uniform_forward_masked<P>(v, params_of<P>(l, qmin, qmax));
                                   });
  });
}

at::Tensor backward(const UniformArgs& a, const at::Tensor& dy, at::Tensor& dx, bool param_grads) {
  at::Tensor partials = a.c.partials(param_grads ? 2 : 0, at::kDouble);
  const GradData data(dy, a.c.x, dx, partials);
  with_flag(param_grads, [&](auto sums) {
    constexpr bool kSum = decltype(sums)::value;
    for_each_uniform_item<kSum ? 2 : 0>(
        a, [&](auto tag, int64_t item, int64_t begin, int64_t len, auto& src, auto qmin, auto qmax) {
          grad_item<kSum, decltype(qmin), decltype(tag)>(
              data, item, begin, len, src, [&]<typename P>(typename P::V d, typename P::V v, const auto& l) {
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
