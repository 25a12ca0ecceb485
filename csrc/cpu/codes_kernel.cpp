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

void quantize_uniform(const UniformArgs& a, at::Tensor& codes) {
  dispatch_quantize(a.c.x, a.scale, codes, [&](auto x_tag, auto c_tag, auto s_tag) {
    using acc_t = acc_type<decltype(x_tag)>;
    const auto* sp = a.scale.const_data_ptr<decltype(s_tag)>();
    const auto* zp = a.zero_point.const_data_ptr<decltype(s_tag)>();
    map_items<decltype(x_tag), decltype(c_tag)>(a.c.layout, a.c.x, codes, [&](auto v, int64_t i) {
      const auto p = math::load_uniform<acc_t>(sp, zp, i, acc_t(a.qmin), acc_t(a.qmax));
      return math::uniform_quantize<Scalar<acc_t>>(acc_t(v), p);
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
  dispatch_level_grid<true>(a, [&](auto x_tag, auto p_tag, const auto& table, auto search) {
    using acc_t = acc_type<decltype(x_tag)>;
    const auto* ap = a.alpha.const_data_ptr<decltype(p_tag)>();
    AT_DISPATCH_INTEGRAL_TYPES(codes.scalar_type(), "quantext_quantize_levels", [&] {
      map_items<decltype(x_tag), scalar_t>(a.c.layout, a.c.x, codes, [&](auto v, int64_t i) {
        return math::levels_quantize<Scalar<acc_t>, decltype(search)>(acc_t(v), acc_t(ap[i]), table);
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
