// CPU kernels of the integer-code ops. They run the scalar form of the same
// scheme-math formulas as fake quantization, so codes decode to exactly its
// outputs; they serve export and inspection, not the training loop.
#include <torch/library.h>

#include "cpu/runs.h"
#include "ops/codes.h"
#include "ops/dispatch.h"
#include "ops/levels.h"
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

at::Tensor quantize_uniform_cpu(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                int64_t qmin, int64_t qmax, std::optional<int64_t> axis, int64_t group_size) {
  const auto a = prepare_uniform("quantext.quantize_uniform", x, scale, zero_point, qmin, qmax, axis, group_size);
  at::Tensor codes = at::empty_like(a.c.x, a.c.x.options().dtype(uniform_code_dtype(qmin, qmax)));
  dispatch_types(x, a.scale, [&](auto x_tag, auto s_tag) {
    using x_t = decltype(x_tag);
    using scale_t = decltype(s_tag);
    using acc_t = acc_type<x_t>;
    const scale_t* sp = a.scale.const_data_ptr<scale_t>();
    const scale_t* zp = a.zero_point.const_data_ptr<scale_t>();
    AT_DISPATCH_INTEGRAL_TYPES(codes.scalar_type(), "quantext_quantize_uniform", [&] {
      map_items<x_t, scalar_t>(a.c.layout, a.c.x, codes, [&](x_t v, int64_t i) {
        const auto p = math::load_uniform<acc_t>(sp, zp, i, acc_t(qmin), acc_t(qmax));
        return math::uniform_quantize<Scalar<acc_t>>(acc_t(v), p);
      });
    });
  });
  return a.c.restore(codes, x);
}

at::Tensor dequantize_uniform_cpu(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero_point,
                                  std::optional<int64_t> axis, int64_t group_size) {
  const char* op = "quantext.dequantize_uniform";
  const auto [lo, hi] = code_dtype_range(op, codes);
  const auto a = prepare_uniform(op, codes, scale, zero_point, lo, hi, axis, group_size, true);
  at::Tensor y = at::empty_like(a.c.x, a.c.x.options().dtype(scale.scalar_type()));
  dispatch_codes(codes, a.scale, [&](auto c_tag, auto s_tag) {
    using code_t = decltype(c_tag);
    using acc_t = decltype(s_tag);
    const acc_t* sp = a.scale.const_data_ptr<acc_t>();
    const acc_t* zp = a.zero_point.const_data_ptr<acc_t>();
    map_items<code_t, acc_t>(a.c.layout, a.c.x, y, [&](code_t q, int64_t i) {
      const auto p = math::load_uniform<acc_t>(sp, zp, i, acc_t(lo), acc_t(hi));
      return math::uniform_dequant<Scalar<acc_t>>(acc_t(q), p);
    });
  });
  return a.c.restore(y, codes);
}

at::Tensor quantize_levels_cpu(const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme, int64_t bits,
                               bool is_signed, int64_t k, c10::string_view rounding, std::optional<int64_t> axis) {
  const auto a = prepare_levels("quantext.quantize_levels", x, alpha, scheme, bits, is_signed, k, rounding, axis);
  at::Tensor codes = at::empty_like(a.c.x, a.c.x.options().dtype(level_code_dtype(a.spec)));
  dispatch_types(x, a.alpha, [&](auto x_tag, auto p_tag) {
    using x_t = decltype(x_tag);
    using param_t = decltype(p_tag);
    using acc_t = acc_type<x_t>;
    const auto table = make_level_table<acc_t>(a);
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
  return a.c.restore(codes, x);
}

at::Tensor dequantize_levels_cpu(const at::Tensor& codes, const at::Tensor& alpha, c10::string_view scheme,
                                 int64_t bits, bool is_signed, int64_t k, std::optional<int64_t> axis) {
  const char* op = "quantext.dequantize_levels";
  const auto a = prepare_levels(op, codes, alpha, scheme, bits, is_signed, k, "nearest", axis, true);
  at::Tensor y = at::empty_like(a.c.x, a.c.x.options().dtype(alpha.scalar_type()));
  dispatch_codes(codes, a.alpha, [&](auto c_tag, auto p_tag) {
    using code_t = decltype(c_tag);
    using acc_t = decltype(p_tag);
    const auto table = make_level_table<acc_t>(a);
    const acc_t* ap = a.alpha.const_data_ptr<acc_t>();
    map_items<code_t, acc_t>(a.c.layout, a.c.x, y, [&](code_t q, int64_t i) {
      return math::levels_dequantize<Scalar<acc_t>>(acc_t(q), ap[i], table);
    });
  });
  return a.c.restore(y, codes);
}

}  // namespace

TORCH_LIBRARY_IMPL(quantext, CPU, m) {
  m.impl("quantize_uniform", &quantize_uniform_cpu);
  m.impl("dequantize_uniform", &dequantize_uniform_cpu);
  m.impl("quantize_levels", &quantize_levels_cpu);
  m.impl("dequantize_levels", &dequantize_levels_cpu);
}

}  // namespace cpu
}  // namespace quantext
