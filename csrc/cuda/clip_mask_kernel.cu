// CUDA kernel of the clip-mask backward: one element per thread, the word of
// 32 bits read by the 32 threads of a warp at once.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>

#include <cstdint>

#include "cuda/launch.cuh"
#include "math/clip_mask.h"
#include "ops/clip_mask.h"

namespace quantext {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void select_kernel(const scalar_t* __restrict__ dy, const uint32_t* __restrict__ mask,
                              scalar_t* __restrict__ dx, int64_t numel) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    dx[i] = math::mask_bit(mask, i) ? dy[i] : scalar_t(0);
  }
}

void backward(const at::Tensor& dy, const at::Tensor& mask, at::Tensor& dx) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "quantext_clip_mask_backward", [&] {
    select_kernel<scalar_t><<<grid_for(dy.numel()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        dy.const_data_ptr<scalar_t>(), reinterpret_cast<const uint32_t*>(mask.const_data_ptr<int32_t>()),
        dx.mutable_data_ptr<scalar_t>(), dy.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

QUANTEXT_REGISTER_KERNEL(clip_mask_backward_kernel, CUDA, &backward);

}  // namespace cuda
}  // namespace quantext
