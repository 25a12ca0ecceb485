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
  dispatch_level_grid<false>(a, [&](auto x_tag, auto p_tag, const auto& table, auto search) {
    using scalar_t = decltype(x_tag);
    with_flag(mask.defined(), [&](auto masked) {
      launch_elementwise(
          forward_kernel<decltype(masked)::value, scalar_t, acc_type<scalar_t>, decltype(p_tag), decltype(search)>,
          a.c.layout.numel, a.c.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
          a.alpha.const_data_ptr<decltype(p_tag)>(), a.c.layout, table, mask_words(mask));
    });
  });
}

void forward(const LevelArgs& a, at::Tensor& y) { launch_forward(a, y, at::Tensor()); }
void forward_masked(const LevelArgs& a, at::Tensor& y, at::Tensor& mask) { launch_forward(a, y, mask); }

at::Tensor backward(const LevelArgs& a, const at::Tensor& dy, at::Tensor& dx, bool alpha_grad) {
  at::Tensor partials = a.c.partials(alpha_grad ? 1 : 0, partials_dtype(a.c.x));
  dispatch_level_grid<false>(a, [&](auto x_tag, auto p_tag, const auto& table, auto search) {
    using scalar_t = decltype(x_tag);
    using acc_t = acc_type<scalar_t>;
    with_flag(alpha_grad, [&](auto sums) {
      launch_per_item(backward_kernel<decltype(sums)::value, scalar_t, acc_t, decltype(p_tag), decltype(search)>,
                      a.c.layout.num_items(), dy.const_data_ptr<scalar_t>(), a.c.x.const_data_ptr<scalar_t>(),
                      dx.mutable_data_ptr<scalar_t>(), a.alpha.const_data_ptr<decltype(p_tag)>(), a.c.layout, table,
                      alpha_grad ? partials.mutable_data_ptr<acc_t>() : nullptr);
    });
  });
  return partials;
}

}  // namespace

QUANTEXT_REGISTER_FAKE_QUANT_KERNELS(level, CUDA);

}  // namespace cuda
}  // namespace quantext
