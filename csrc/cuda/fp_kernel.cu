// CUDA kernels of the minifloat fake-quant ops (host half in ops/fp.cpp), in
// the shape of the uniform ones: an elementwise forward, a backward with one
// scale-gradient partial per item.
#include <ATen/cuda/CUDAContext.h>

#include "cuda/block_reduce.cuh"
#include "cuda/clip_mask.cuh"
#include "cuda/launch.cuh"
#include "math/fp_math.h"
#include "ops/dispatch.h"
#include "ops/fp.h"

namespace quantext {
namespace cuda {
namespace {

using math::Scalar;

template <typename acc_t, typename scale_t>
__device__ __forceinline__ math::FpParams<acc_t> load_fp(const scale_t* scale, int64_t i) {
  const scale_t s = scale[i];
  return {static_cast<acc_t>(s), static_cast<acc_t>(scale_t(1) / s)};
}

template <bool kMasked, typename scalar_t, typename acc_t, typename scale_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                               const scale_t* __restrict__ scale, RunLayout layout, math::FpGrid<acc_t> grid,
                               uint32_t* __restrict__ mask) {
  for_each_element<kMasked>(layout.numel, mask, [&](int64_t i) {
    const auto p = load_fp<acc_t>(scale, layout.param_of_element(i));
    const auto r = math::fp_forward_masked<Scalar<acc_t>>(static_cast<acc_t>(x[i]), p, grid);
    y[i] = static_cast<scalar_t>(r.y);
    return r.inside;
  });
}

template <bool kParamGrads, typename scalar_t, typename acc_t, typename scale_t>
__global__ void backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                scalar_t* __restrict__ dx, const scale_t* __restrict__ scale, RunLayout layout,
                                math::FpGrid<acc_t> grid, acc_t* __restrict__ partials) {
  for (int64_t item = blockIdx.x; item < layout.num_items(); item += gridDim.x) {
    const auto p = load_fp<acc_t>(scale, layout.param_of_item(item));
    const int64_t begin = layout.item_begin(item), len = layout.item_length(item);
    acc_t ds = 0;
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
      const int64_t i = begin + j;
      const auto g = math::fp_backward<Scalar<acc_t>>(static_cast<acc_t>(dy[i]), static_cast<acc_t>(x[i]), p, grid);
      dx[i] = static_cast<scalar_t>(g.dx);
      ds += g.dscale;
    }
    if constexpr (kParamGrads) {
      ds = block_sum(ds);
      if (threadIdx.x == 0) partials[item] = ds;
    }
  }
}

template <typename acc_t>
math::FpGrid<acc_t> grid_of(const FpArgs& a) {
  return {acc_t(a.format.max_value), acc_t(a.format.min_normal), acc_t(a.format.ulp)};
}

// mask: undefined for the plain forward.
void launch_forward(const FpArgs& a, at::Tensor& y, const at::Tensor& mask) {
  dispatch_types(a.c.x, a.scale, [&](auto x_tag, auto s_tag) {
    using scalar_t = decltype(x_tag);
    using scale_t = decltype(s_tag);
    using acc_t = acc_type<scalar_t>;
    with_flag(mask.defined(), [&](auto masked) {
      launch_elementwise(forward_kernel<decltype(masked)::value, scalar_t, acc_t, scale_t>, a.c.layout.numel,
                         a.c.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                         a.scale.const_data_ptr<scale_t>(), a.c.layout, grid_of<acc_t>(a), mask_words(mask));
    });
  });
}

void forward(const FpArgs& a, at::Tensor& y) { launch_forward(a, y, at::Tensor()); }
void forward_masked(const FpArgs& a, at::Tensor& y, at::Tensor& mask) { launch_forward(a, y, mask); }

at::Tensor backward(const FpArgs& a, const at::Tensor& dy, at::Tensor& dx, bool param_grads) {
  at::Tensor partials = a.c.partials(param_grads ? 1 : 0, partials_dtype(a.c.x));
  dispatch_types(a.c.x, a.scale, [&](auto x_tag, auto s_tag) {
    using scalar_t = decltype(x_tag);
    using scale_t = decltype(s_tag);
    using acc_t = acc_type<scalar_t>;
    with_flag(param_grads, [&](auto sums) {
      launch_per_item(backward_kernel<decltype(sums)::value, scalar_t, acc_t, scale_t>, a.c.layout.num_items(),
                      dy.const_data_ptr<scalar_t>(), a.c.x.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
                      a.scale.const_data_ptr<scale_t>(), a.c.layout, grid_of<acc_t>(a),
                      param_grads ? partials.mutable_data_ptr<acc_t>() : nullptr);
    });
  });
  return partials;
}

}  // namespace

QUANTEXT_REGISTER_FAKE_QUANT_KERNELS(fp, CUDA);

}  // namespace cuda
}  // namespace quantext
