// Launch geometry shared by the CUDA kernels.
#pragma once

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>

namespace quantext {
namespace cuda {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `work` elements: enough to fill the
// device, few enough to amortize per-block setup.
inline int64_t grid_for(int64_t work) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, sms * 32));
}

}  // namespace cuda
}  // namespace quantext
