// CUDA kernels of the integer-code ops (host halves: ops/codes.cpp): elementwise grid-stride loops over the
// same scheme-math formulas as fake quantization (codes decode to exactly its
// outputs), level tables in shared memory.
#include <ATen/cuda/CUDAContext.h>

#include "cuda/launch.cuh"
#include "cuda/level_table.cuh"
#include "ops/codes.h"
#include "ops/dispatch.h"
#include "ops/level_ops.h"
#include "ops/uniform.h"

namespace quantext {
namespace cuda {
namespace {

using math::LevelTable;
using math::Scalar;

// Uniform codes (kDecode = false: x -> code) or values (true: code -> value),
// with the parameters of each element's item.
template <bool kDecode, typename in_t, typename out_t, typename acc_t, typename scale_t>
__global__ void uniform_kernel(const in_t* __restrict__ in, out_t* __restrict__ out, const scale_t* __restrict__ scale,
                               const scale_t* __restrict__ zero_point, RunLayout layout, acc_t qmin, acc_t qmax) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < layout.numel; i += stride) {
    const auto p = math::load_uniform<acc_t>(scale, zero_point, layout.param_of_element(i), qmin, qmax);
    const acc_t v = static_cast<acc_t>(in[i]);
    out[i] = static_cast<out_t>(kDecode ? math::uniform_dequant<Scalar<acc_t>>(v, p)
                                        : math::uniform_quantize<Scalar<acc_t>>(v, p));
  }
}

// Level codes (found by search S) or values. Decoding clamps the code into the table: the op
// validates codes, unless value checks are off, and a bad code must not read
// outside shared memory.
template <bool kDecode, typename in_t, typename out_t, typename acc_t, typename param_t,
          typename S = math::LevelSearch<math::SearchKind::Binary>>
__global__ void levels_kernel(const in_t* __restrict__ in, out_t* __restrict__ out, const param_t* __restrict__ alpha,
                              RunLayout layout, const __grid_constant__ LevelTable<acc_t> table) {
  __shared__ LevelTable<acc_t> t;
  load_table(table, t);
  const acc_t top = static_cast<acc_t>((1 << t.steps) - 1);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < layout.numel; i += stride) {
    const acc_t a = static_cast<acc_t>(alpha[layout.param_of_element(i)]);
    const acc_t v = static_cast<acc_t>(in[i]);
    out[i] =
        static_cast<out_t>(kDecode ? math::levels_dequantize<Scalar<acc_t>>(Scalar<acc_t>::clamp(v, -top, top), a, t)
                                   : math::levels_quantize<Scalar<acc_t>, S>(v, a, t));
  }
}

void quantize_uniform(const UniformArgs& a, at::Tensor& codes) {
  dispatch_quantize(a.c.x, a.scale, codes, [&](auto x_tag, auto c_tag, auto s_tag) {
    using x_t = decltype(x_tag);
    using code_t = decltype(c_tag);
    using scale_t = decltype(s_tag);
    using acc_t = acc_type<x_t>;
    launch_elementwise(uniform_kernel<false, x_t, code_t, acc_t, scale_t>, a.c.layout.numel,
                       a.c.x.const_data_ptr<x_t>(), codes.mutable_data_ptr<code_t>(), a.scale.const_data_ptr<scale_t>(),
                       a.zero_point.const_data_ptr<scale_t>(), a.c.layout, acc_t(a.qmin), acc_t(a.qmax));
  });
}

void dequantize_uniform(const UniformArgs& a, at::Tensor& y) {
  dispatch_codes(a.c.x, a.scale, [&](auto c_tag, auto s_tag) {
    using code_t = decltype(c_tag);
    using acc_t = decltype(s_tag);
    launch_elementwise(uniform_kernel<true, code_t, acc_t, acc_t, acc_t>, a.c.layout.numel,
                       a.c.x.const_data_ptr<code_t>(), y.mutable_data_ptr<acc_t>(), a.scale.const_data_ptr<acc_t>(),
                       a.zero_point.const_data_ptr<acc_t>(), a.c.layout, acc_t(a.qmin), acc_t(a.qmax));
  });
}

void quantize_levels(const LevelArgs& a, at::Tensor& codes) {
  dispatch_level_grid<true>(a, [&](auto x_tag, auto p_tag, const auto& table, auto search) {
    using x_t = decltype(x_tag);
    AT_DISPATCH_INTEGRAL_TYPES(codes.scalar_type(), "quantext_quantize_levels", [&] {
      launch_elementwise(levels_kernel<false, x_t, scalar_t, acc_type<x_t>, decltype(p_tag), decltype(search)>,
                         a.c.layout.numel, a.c.x.const_data_ptr<x_t>(), codes.mutable_data_ptr<scalar_t>(),
                         a.alpha.const_data_ptr<decltype(p_tag)>(), a.c.layout, table);
    });
  });
}

void dequantize_levels(const LevelArgs& a, at::Tensor& y) {
  dispatch_codes(a.c.x, a.alpha, [&](auto c_tag, auto p_tag) {
    using acc_t = decltype(p_tag);
    const auto* codes = a.c.x.const_data_ptr<decltype(c_tag)>();
    launch_elementwise(levels_kernel<true, decltype(c_tag), acc_t, acc_t, acc_t>, a.c.layout.numel, codes,
                       y.mutable_data_ptr<acc_t>(), a.alpha.const_data_ptr<acc_t>(), a.c.layout, level_table<acc_t>(a));
  });
}

}  // namespace

QUANTEXT_REGISTER_CODES_KERNELS(CUDA);

}  // namespace cuda
}  // namespace quantext
