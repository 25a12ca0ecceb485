// Block-wide reductions: the sums of the parameter-gradient reductions, the
// extremes of the dynamic ops.
#pragma once

namespace quantext {
namespace cuda {

// Reduces `v` over the block with the associative `op`; the result is valid
// in thread 0. blockDim.x must be a multiple of 32 and at most 1024; `identity`
// is op's neutral element.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T identity, const Op& op) {
  __shared__ T warp_values[32];
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // warp_values may still be read by a previous call
  if (lane == 0) warp_values[warp] = v;
  __syncthreads();
  v = threadIdx.x < (blockDim.x >> 5) ? warp_values[lane] : identity;
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
  }
  return v;
}

template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  return block_reduce(v, T(0), [](T a, T b) { return a + b; });
}

}  // namespace cuda
}  // namespace quantext
