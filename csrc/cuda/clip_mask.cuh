// The elementwise grid-stride loop of the CUDA kernels, optionally writing the
// clip mask (math/clip_mask.h): each warp covers 32 consecutive elements, one
// mask word, and its ballot forms the word (the grid stride is a multiple of 32).
#pragma once

#include <cstdint>

#include "cuda/launch.cuh"
#include "math/clip_mask.h"

namespace quantext {
namespace cuda {

static_assert(kThreads % math::kMaskWordBits == 0, "a warp forms one mask word");

// inside(i) computes element i and returns whether it lies inside the grid;
// with a mask (kMasked) the answers form its words, else they are dropped.
template <bool kMasked, typename F>
__device__ __forceinline__ void for_each_element(int64_t numel, uint32_t* __restrict__ mask, const F& inside) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (kMasked) {
    const int lane = threadIdx.x % math::kMaskWordBits;
    for (int64_t i = first; i - lane < numel; i += stride) {
      const uint32_t word = __ballot_sync(0xffffffffu, i < numel && inside(i));
      if (lane == 0) mask[i / math::kMaskWordBits] = word;
    }
  } else {
    for (int64_t i = first; i < numel; i += stride) inside(i);
  }
}

}  // namespace cuda
}  // namespace quantext
