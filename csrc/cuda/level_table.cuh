// The level table in CUDA kernels: passed by value as a __grid_constant__
// kernel parameter (at most 4 KiB) and copied into shared memory once per
// block, where the per-element searches read it.
#pragma once

#include "math/scheme_math.h"

namespace quantext {
namespace cuda {

template <typename T>
__device__ __forceinline__ void load_table(const math::LevelTable<T>& src, math::LevelTable<T>& dst) {
  const int n = 1 << src.steps;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    dst.levels[i] = src.levels[i];
    if (i + 1 < n) dst.thresholds[i] = src.thresholds[i];
  }
  if (threadIdx.x == 0) {
    dst.steps = src.steps;
    dst.lo = src.lo;
    dst.pot_factor = src.pot_factor;
    dst.pot_up = src.pot_up;
    dst.pot_down = src.pot_down;
  }
  __syncthreads();
}

}  // namespace cuda
}  // namespace quantext
