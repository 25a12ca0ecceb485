// Launch geometry shared by the CUDA kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>

namespace quantext {
namespace cuda {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `work` elements: enough to fill the
// device, few enough to amortize per-block setup.
inline int64_t grid_for(int64_t work) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, sms * 32));
}

// Launches kernel(args...) on the current stream for a grid-stride loop over
// `numel` elements (nothing for none).
template <typename Kernel, typename... Args>
void launch_elementwise(Kernel kernel, int64_t numel, Args... args) {
  if (numel == 0) return;
  kernel<<<grid_for(numel), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Launches kernel(args...) with a block per item (block-stride beyond 2^20).
template <typename Kernel, typename... Args>
void launch_per_item(Kernel kernel, int64_t items, Args... args) {
  if (items == 0) return;
  kernel<<<std::min<int64_t>(items, int64_t(1) << 20), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The words of a clip mask for a masked kernel; nullptr for the plain one (mask undefined).
inline uint32_t* mask_words(const at::Tensor& mask) {
  return mask.defined() ? reinterpret_cast<uint32_t*>(mask.data_ptr<int32_t>()) : nullptr;
}

// The dtype of a backward's partial sums: the compute type of the input.
inline at::ScalarType partials_dtype(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace cuda
}  // namespace quantext
