// CPU kernels of the integer-code ops. They run the scalar form of the same
// scheme-math formulas as fake quantization, so codes decode to exactly its
// outputs; they serve export and inspection, not the training loop.
#include "cpu/runs.h"
#include "ops/codes.h"
#include "ops/dispatch.h"
#include "ops/level_ops.h"
#include "ops/uniform.h"

namespace quantext {
namespace cpu {
namespace {

using math::Scalar;

// out[i] = f(in[i], param index) for every element, over the items in parallel.
template <typename in_t, typename out_t, typename F>
void map_items(const RunLayout& layout, const at::Tensor& in, at::Tensor& out, const F& f) {
  const in_t* ip = in.const_data_ptr<in_t>();
  out_t* op = out.mutable_data_ptr<out_t>();
  for_each_item(layout, [&](int64_t item, int64_t begin, int64_t len) {
    const int64_t param = layout.param_of_item(item);
    for (int64_t i = begin; i < begin + len; ++i) op[i] = static_cast<out_t>(f(ip[i], param));
  });
}

void quantize_uniform(const UniformArgs& a, at::Tensor& codes) {
  dispatch_types(a.c.x, a.scale, [&](auto x_tag, auto s_tag) {
    using x_t = decltype(x_tag);
    using scale_t = decltype(s_tag);
    using acc_t = acc_type<x_t>;
    const scale_t* sp = a.scale.const_data_ptr<scale_t>();
    const scale_t* zp = a.zero_point.const_data_ptr<scale_t>();
    AT_DISPATCH_INTEGRAL_TYPES(codes.scalar_type(), "quantext_quantize_uniform", [&] {
      map_items<x_t, scalar_t>(a.c.layout, a.c.x, codes, [&](x_t v, int64_t i) {
        const auto p = math::load_uniform<acc_t>(sp, zp, i, acc_t(a.qmin), acc_t(a.qmax));
        return math::uniform_quantize<Scalar<acc_t>>(acc_t(v), p);
      });
    });
  });
}

void dequantize_uniform(const UniformArgs& a, at::Tensor& y) {
  dispatch_codes(a.c.x, a.scale, [&](auto c_tag, auto s_tag) {
    using code_t = decltype(c_tag);
    using acc_t = decltype(s_tag);
    const acc_t* sp = a.scale.const_data_ptr<acc_t>();
    const acc_t* zp = a.zero_point.const_data_ptr<acc_t>();
    map_items<code_t, acc_t>(a.c.layout, a.c.x, y, [&](code_t q, int64_t i) {
      const auto p = math::load_uniform<acc_t>(sp, zp, i, acc_t(a.qmin), acc_t(a.qmax));
      return math::uniform_dequant<Scalar<acc_t>>(acc_t(q), p);
    });
  });
}

void quantize_levels(const LevelArgs& a, at::Tensor& codes) {
  dispatch_types(a.c.x, a.alpha, [&](auto x_tag, auto p_tag) {
    using x_t = decltype(x_tag);
    using param_t = decltype(p_tag);
    using acc_t = acc_type<x_t>;
    const auto& table = level_table<acc_t>(a);
    const param_t* ap = a.alpha.const_data_ptr<param_t>();
    math::with_level_search<Scalar<acc_t>, true>(table, [&](auto search) {
      using S = decltype(search);
      AT_DISPATCH_INTEGRAL_TYPES(codes.scalar_type(), "quantext_quantize_levels", [&] {
        map_items<x_t, scalar_t>(a.c.layout, a.c.x, codes, [&](x_t v, int64_t i) {
          return math::levels_quantize<Scalar<acc_t>, S>(acc_t(v), acc_t(ap[i]), table);
        });
      });
    });
  });
}

void dequantize_levels(const LevelArgs& a, at::Tensor& y) {
  dispatch_codes(a.c.x, a.alpha, [&](auto c_tag, auto p_tag) {
    using code_t = decltype(c_tag);
    using acc_t = decltype(p_tag);
    const auto& table = level_table<acc_t>(a);
    const acc_t* ap = a.alpha.const_data_ptr<acc_t>();
    map_items<code_t, acc_t>(a.c.layout, a.c.x, y, [&](code_t q, int64_t i) {
      return math::levels_dequantize<Scalar<acc_t>>(acc_t(q), ap[i], table);
    });
  });
}

}  // namespace

QUANTEXT_REGISTER_CODES_KERNELS(CPU);

}  // namespace cpu
}  // namespace quantext
