// Writing the clip mask (math/clip_mask.h) from a CUDA kernel: each warp of a
// grid-stride loop covers 32 consecutive elements, one mask word, and its
// ballot forms the word (the grid stride is a multiple of 32).
#pragma once

#include <cstdint>

#include "cuda/launch.cuh"
#include "math/clip_mask.h"

namespace quantext {
namespace cuda {

static_assert(kThreads % math::kMaskWordBits == 0, "a warp forms one mask word");

// inside(i) computes element i and returns whether it lies inside the grid.
template <typename F>
__device__ __forceinline__ void for_each_masked(int64_t numel, uint32_t* __restrict__ mask, const F& inside) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int lane = threadIdx.x % math::kMaskWordBits;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i - lane < numel; i += stride) {
    const uint32_t word = __ballot_sync(0xffffffffu, i < numel && inside(i));
    if (lane == 0) mask[i / math::kMaskWordBits] = word;
  }
}

}  // namespace cuda
}  // namespace quantext
