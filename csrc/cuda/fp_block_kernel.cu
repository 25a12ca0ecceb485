// CUDA kernel of the block-scaled minifloat op: a thread per element, the
// lanes of a block (a power of two up to 32, so a warp holds whole blocks)
// reduce its range by shuffles, each derives the scale and quantizes its
// element; the warp's ballot is one clip-mask word.
#include <ATen/cuda/CUDAContext.h>

#include "cuda/launch.cuh"
#include "math/clip_mask.h"
#include "math/fp_math.h"
#include "ops/dispatch.h"
#include "ops/fp.h"

namespace quantext {
namespace cuda {
namespace {

using math::Scalar;

template <bool kMasked, typename scalar_t, typename acc_t>
__global__ void blocks_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t numel, int block,
                              math::FpGrid<acc_t> grid, int emax, const float* __restrict__ tensor_scale,
                              uint32_t* __restrict__ mask) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int lane = threadIdx.x % math::kMaskWordBits;
  const float fp_max = static_cast<float>(grid.max_value);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i - lane < numel; i += stride) {
    const bool mine = i < numel;
    const acc_t v = mine ? static_cast<acc_t>(x[i]) : acc_t(0);
    float amax = isfinite(v) ? static_cast<float>(v < acc_t(0) ? -v : v) : 0.0f;
    for (int offset = block / 2; offset > 0; offset >>= 1)
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    const float s = tensor_scale ? math::nv_block_scale(amax, fp_max, *tensor_scale) : math::mx_block_scale(amax, emax);
    const math::FpParams<acc_t> p{acc_t(s), acc_t(1.0f / s)};
    const auto r = math::fp_forward_masked<Scalar<acc_t>>(v, p, grid);
    if (mine) y[i] = static_cast<scalar_t>(r.y);
    if constexpr (kMasked) {
      const uint32_t word = __ballot_sync(0xffffffffu, mine && r.inside);
      if (lane == 0) mask[i / math::kMaskWordBits] = word;
    }
  }
}

void fp_blocks(const FpBlockArgs& a, at::Tensor& y, at::Tensor* mask) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "quantext_fp_blocks", [&] {
    using acc_t = acc_type<scalar_t>;
    const math::FpGrid<acc_t> grid{acc_t(a.format.max_value), acc_t(a.format.min_normal), acc_t(a.format.ulp)};
    const float* ts = a.tensor_scale.defined() ? a.tensor_scale.const_data_ptr<float>() : nullptr;
    with_flag(mask != nullptr, [&](auto masked) {
      launch_elementwise(blocks_kernel<decltype(masked)::value, scalar_t, acc_t>, a.x.numel(),
                         a.x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), a.x.numel(),
                         static_cast<int>(a.block), grid, a.emax, ts, mask ? mask_words(*mask) : nullptr);
    });
  });
}

}  // namespace

QUANTEXT_REGISTER_KERNEL(fp_block_kernel, CUDA, &fp_blocks);

}  // namespace cuda
}  // namespace quantext
