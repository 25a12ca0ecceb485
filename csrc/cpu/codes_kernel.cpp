// CPU kernels of the integer-code ops. Quantize runs the SIMD loops of the
// fake-quant kernels with the same scheme-math formulas, so codes decode to
// exactly their outputs; dequantize is a scalar map.
#include <array>
#include <cstdint>

#include "cpu/runs.h"
#include "cpu/uniform_items.h"
#include "cpu/vec_loops.h"
#include "ops/codes.h"
#include "ops/dispatch.h"
#include "ops/level_ops.h"
#include "ops/uniform.h"

namespace quantext {
namespace cpu {
namespace {

using math::Scalar;

// out[i] = f(in[i], parameter index of element i), over the items in parallel.
template <typename in_t, typename out_t, typename F>
void map_items(const RunLayout& layout, const at::Tensor& in, at::Tensor& out, const F& f) {
  const in_t* ip = in.const_data_ptr<in_t>();
  out_t* op = out.mutable_data_ptr<out_t>();
  for_each_item(layout, [&](int64_t item, int64_t begin, int64_t len) {
    if (layout.kind == Granularity::Interleaved) {
      for (int64_t i = begin; i < begin + len; ++i) op[i] = static_cast<out_t>(f(ip[i], layout.param_of_element(i)));
      return;
    }
    const int64_t param = layout.param_of_item(item);
    for (int64_t i = begin; i < begin + len; ++i) op[i] = static_cast<out_t>(f(ip[i], param));
  });
}

// The codes are the fake-quant formulas' SIMD loops with an integer output.
void quantize_uniform(const UniformArgs& a, at::Tensor& codes) {
  AT_DISPATCH_INTEGRAL_TYPES(codes.scalar_type(), "quantext_quantize_uniform", [&] {
    using code_t = scalar_t;
    for_each_uniform_item<0>(a, [&](auto tag, int64_t, int64_t begin, int64_t len, auto& src, auto qmin, auto qmax) {
      map_run<decltype(qmin)>(a.c.x.const_data_ptr<decltype(tag)>() + begin, codes.mutable_data_ptr<code_t>() + begin,
                              len, src, [&]<typename P>(typename P::V v, const auto& l) {
                                return math::uniform_quantize<P>(v, params_of<P>(l, qmin, qmax));
                              });
    });
  });
}

void dequantize_uniform(const UniformArgs& a, at::Tensor& y) {
  dispatch_codes(a.c.x, a.scale, [&](auto c_tag, auto s_tag) {
    using acc_t = decltype(s_tag);
    const acc_t* sp = a.scale.const_data_ptr<acc_t>();
    const acc_t* zp = a.zero_point.const_data_ptr<acc_t>();
    map_items<decltype(c_tag), acc_t>(a.c.layout, a.c.x, y, [&](auto q, int64_t i) {
      return math::uniform_dequant<Scalar<acc_t>>(acc_t(q), math::load_uniform<acc_t>(sp, zp, i, a.qmin, a.qmax));
    });
  });
}

void quantize_levels(const LevelArgs& a, at::Tensor& codes) {
  dispatch_quantize(a.c.x, a.alpha, codes, [&](auto x_tag, auto c_tag, auto p_tag) {
    using acc_t = acc_type<decltype(x_tag)>;
    const auto& table = level_table<acc_t>(a);
    const auto* ap = a.alpha.const_data_ptr<decltype(p_tag)>();
    const auto params = [&](int64_t i) { return std::array<acc_t, 1>{static_cast<acc_t>(ap[i])}; };
    math::with_level_search<VecPolicy<acc_t>, true>(table, [&](auto search) {
      for_each_source<acc_t, 1, 0>(a.c.layout, params, [&](int64_t, int64_t begin, int64_t len, auto& src) {
        map_run<acc_t>(a.c.x.const_data_ptr<decltype(x_tag)>() + begin,
                       codes.mutable_data_ptr<decltype(c_tag)>() + begin, len, src,
                       [&]<typename P>(typename P::V v, const auto& l) {
                         return math::levels_quantize<P, decltype(search)>(v, l[0], table);
                       });
      });
    });
  });
}

void dequantize_levels(const LevelArgs& a, at::Tensor& y) {
  dispatch_codes(a.c.x, a.alpha, [&](auto c_tag, auto p_tag) {
    using acc_t = decltype(p_tag);
    const auto& table = level_table<acc_t>(a);
    const acc_t* ap = a.alpha.const_data_ptr<acc_t>();
    map_items<decltype(c_tag), acc_t>(a.c.layout, a.c.x, y, [&](auto q, int64_t i) {
      return math::levels_dequantize<Scalar<acc_t>>(acc_t(q), ap[i], table);
    });
  });
}

}  // namespace

QUANTEXT_REGISTER_CODES_KERNELS(CPU);

}  // namespace cpu
}  // namespace quantext
