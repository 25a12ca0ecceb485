// CUDA kernels of the level-scheme (PoT / APoT) fake-quant op (host half:
// ops/level_ops.cpp; level tables from its per-grid cache): each element
// runs the PoT closed form or the branch-free binary search of
// math/scheme_math.h over the thresholds in shared memory. The backward writes dx and one alpha-gradient
// partial per item (a block per item), reduced per parameter on the device.
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <tuple>

#include "cuda/block_reduce.cuh"
#include "cuda/clip_mask.cuh"
#include "cuda/launch.cuh"
#include "cuda/level_table.cuh"
#include "ops/dispatch.h"
#include "ops/level_ops.h"

namespace quantext {
namespace cuda {
namespace {

using math::LevelTable;
using math::Scalar;

// The forward, and with kMasked its clip mask (cuda/clip_mask.cuh).
template <bool kMasked, typename scalar_t, typename acc_t, typename param_t, typename S>
__global__ void forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                               const param_t* __restrict__ alpha, RunLayout layout,
                               const __grid_constant__ LevelTable<acc_t> table, uint32_t* __restrict__ mask) {
  __shared__ LevelTable<acc_t> t;
  load_table(table, t);
  for_each_element<kMasked>(layout.numel, mask, [&](int64_t i) {
    const acc_t a = static_cast<acc_t>(alpha[layout.param_of_element(i)]);
    const auto r = math::levels_forward_masked<Scalar<acc_t>, S>(static_cast<acc_t>(x[i]), a, t);
    y[i] = static_cast<scalar_t>(r.y);
    return r.inside;
  });
}

template <bool kAlphaGrad, typename scalar_t, typename acc_t, typename param_t, typename S>
__global__ void backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                scalar_t* __restrict__ dx, const param_t* __restrict__ alpha, RunLayout layout,
                                const __grid_constant__ LevelTable<acc_t> table, acc_t* __restrict__ partials) {
  __shared__ LevelTable<acc_t> t;
  load_table(table, t);
  const int64_t items = layout.num_items();
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const acc_t a = static_cast<acc_t>(alpha[layout.param_of_item(item)]);
    const int64_t begin = layout.item_begin(item), len = layout.item_length(item);
    acc_t da = 0;
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
      const int64_t i = begin + j;
      const auto g = math::levels_backward<Scalar<acc_t>, S>(static_cast<acc_t>(dy[i]), static_cast<acc_t>(x[i]), a, t);
      dx[i] = static_cast<scalar_t>(g.dx);
      da += g.dalpha;
    }
    if constexpr (kAlphaGrad) {
      da = block_sum(da);
      if (threadIdx.x == 0) partials[item] = da;
    }
  }
}

// mask: undefined for the plain forward.
void launch_forward(const LevelArgs& a, at::Tensor& y, const at::Tensor& mask) {
  dispatch_types(a.c.x, a.alpha, [&](auto x_tag, auto p_tag) {
    using scalar_t = decltype(x_tag);
    using param_t = decltype(p_tag);
    using acc_t = acc_type<scalar_t>;
    const auto& table = level_table<acc_t>(a);
    const bool masked = mask.defined();
    math::with_level_search<Scalar<acc_t>, false>(table, [&](auto search) {
      using S = decltype(search);
      const auto kernel = masked ? forward_kernel<true, scalar_t, acc_t, param_t, S>
                                 : forward_kernel<false, scalar_t, acc_t, param_t, S>;
      kernel<<<grid_for(a.c.layout.numel), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          a.c.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), a.alpha.const_data_ptr<param_t>(),
          a.c.layout, table, masked ? reinterpret_cast<uint32_t*>(mask.data_ptr<int32_t>()) : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void forward(const LevelArgs& a, at::Tensor& y) { launch_forward(a, y, at::Tensor()); }
void forward_masked(const LevelArgs& a, at::Tensor& y, at::Tensor& mask) { launch_forward(a, y, mask); }

at::Tensor backward(const LevelArgs& a, const at::Tensor& dy, at::Tensor& dx, bool alpha_grad) {
  const int64_t items = a.c.layout.num_items();
  const auto acc_dtype = a.c.x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partials = at::empty({alpha_grad ? 1 : 0, items}, a.c.x.options().dtype(acc_dtype));
  dispatch_types(a.c.x, a.alpha, [&](auto x_tag, auto p_tag) {
    using scalar_t = decltype(x_tag);
    using param_t = decltype(p_tag);
    using acc_t = acc_type<scalar_t>;
    const int64_t grid = std::min<int64_t>(items, int64_t(1) << 20);
    const auto& table = level_table<acc_t>(a);
    auto launch = [&](auto kernel) {
      kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          dy.const_data_ptr<scalar_t>(), a.c.x.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
          a.alpha.const_data_ptr<param_t>(), a.c.layout, table,
          alpha_grad ? partials.mutable_data_ptr<acc_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    math::with_level_search<Scalar<acc_t>, false>(table, [&](auto search) {
      using S = decltype(search);
      if (alpha_grad) {
        launch(backward_kernel<true, scalar_t, acc_t, param_t, S>);
      } else {
        launch(backward_kernel<false, scalar_t, acc_t, param_t, S>);
      }
    });
  });
  return partials;
}

}  // namespace

QUANTEXT_REGISTER_KERNEL(level_forward_kernel, CUDA, &forward);
QUANTEXT_REGISTER_KERNEL(level_masked_kernel, CUDA, &forward_masked);
QUANTEXT_REGISTER_KERNEL(level_backward_kernel, CUDA, &backward);

}  // namespace cuda
}  // namespace quantext
