// CUDA kernels of the uniform fake-quant ops (their host half is in
// ops/uniform.cpp). The forward is one elementwise pass; the backward writes dx and, for learned scale/offset, one
// partial sum per item (a block per item), reduced per parameter on the device.
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <tuple>
#include <type_traits>

#include "cuda/block_reduce.cuh"
#include "cuda/clip_mask.cuh"
#include "cuda/launch.cuh"
#include "ops/dispatch.h"
#include "ops/uniform.h"

namespace quantext {
namespace cuda {
namespace {

using math::Scalar;

// The forward, and with kMasked its clip mask (cuda/clip_mask.cuh).
template <bool kMasked, typename scalar_t, typename acc_t, typename scale_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                               const scale_t* __restrict__ scale, const scale_t* __restrict__ zero_point,
                               RunLayout layout, acc_t qmin, acc_t qmax, uint32_t* __restrict__ mask) {
  for_each_element<kMasked>(layout.numel, mask, [&](int64_t i) {
    const auto p = math::load_uniform<acc_t>(scale, zero_point, layout.param_of_element(i), qmin, qmax);
    const auto r = math::uniform_forward_masked<Scalar<acc_t>>(static_cast<acc_t>(x[i]), p);
    y[i] = static_cast<scalar_t>(r.y);
    return r.inside;
  });
}

template <bool kParamGrads, typename scalar_t, typename acc_t, typename scale_t>
__global__ void backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                scalar_t* __restrict__ dx, const scale_t* __restrict__ scale,
                                const scale_t* __restrict__ zero_point, RunLayout layout, acc_t qmin, acc_t qmax,
                                acc_t* __restrict__ partials) {
  const int64_t items = layout.num_items();
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const auto p = math::load_uniform<acc_t>(scale, zero_point, layout.param_of_item(item), qmin, qmax);
    const int64_t begin = layout.item_begin(item), len = layout.item_length(item);
    acc_t ds = 0, dz = 0;
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
      const int64_t i = begin + j;
      const auto g = math::uniform_backward<Scalar<acc_t>>(static_cast<acc_t>(dy[i]), static_cast<acc_t>(x[i]), p);
      dx[i] = static_cast<scalar_t>(g.dx);
      ds += g.dscale;
      dz += g.dzero;
    }
    if constexpr (kParamGrads) {
      ds = block_sum(ds);
      dz = block_sum(dz);
      if (threadIdx.x == 0) {
        partials[item] = ds;
        partials[items + item] = dz;
      }
    }
  }
}

// mask: undefined for the plain forward.
void launch_forward(const UniformArgs& a, at::Tensor& y, const at::Tensor& mask) {
  dispatch_types(a.c.x, a.scale, [&](auto x_tag, auto s_tag) {
    using scalar_t = decltype(x_tag);
    using scale_t = decltype(s_tag);
    using acc_t = acc_type<scalar_t>;
    with_flag(mask.defined(), [&](auto masked) {
      launch_elementwise(forward_kernel<decltype(masked)::value, scalar_t, acc_t, scale_t>, a.c.layout.numel,
                         a.c.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                         a.scale.const_data_ptr<scale_t>(), a.zero_point.const_data_ptr<scale_t>(), a.c.layout,
                         acc_t(a.qmin), acc_t(a.qmax), mask_words(mask));
    });
  });
}

void forward(const UniformArgs& a, at::Tensor& y) { launch_forward(a, y, at::Tensor()); }
void forward_masked(const UniformArgs& a, at::Tensor& y, at::Tensor& mask) { launch_forward(a, y, mask); }

at::Tensor backward(const UniformArgs& a, const at::Tensor& dy, at::Tensor& dx, bool param_grads) {
  at::Tensor partials = a.c.partials(param_grads ? 2 : 0, partials_dtype(a.c.x));
  dispatch_types(a.c.x, a.scale, [&](auto x_tag, auto s_tag) {
    using scalar_t = decltype(x_tag);
    using scale_t = decltype(s_tag);
    using acc_t = acc_type<scalar_t>;
    with_flag(param_grads, [&](auto sums) {
      launch_per_item(backward_kernel<decltype(sums)::value, scalar_t, acc_t, scale_t>, a.c.layout.num_items(),
                      dy.const_data_ptr<scalar_t>(), a.c.x.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
                      a.scale.const_data_ptr<scale_t>(), a.zero_point.const_data_ptr<scale_t>(), a.c.layout,
                      acc_t(a.qmin), acc_t(a.qmax), param_grads ? partials.mutable_data_ptr<acc_t>() : nullptr);
    });
  });
  return partials;
}

}  // namespace

QUANTEXT_REGISTER_FAKE_QUANT_KERNELS(uniform, CUDA);

}  // namespace cuda
}  // namespace quantext
