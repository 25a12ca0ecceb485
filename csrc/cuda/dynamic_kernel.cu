// CUDA kernels of the dynamic fake-quant ops (host half in ops/dynamic.cpp).
// Each row is cut into parts so that per tensor and long rows fill the
// device: the first kernel reduces every part to its range, the second
// reduces a row's part ranges in each of its blocks, derives the parameters
// there (no host sync, no third launch) and quantizes its part.
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>

#include "cuda/block_reduce.cuh"
#include "cuda/launch.cuh"
#include "math/clip_mask.h"
#include "math/dynamic_range.h"
#include "ops/dispatch.h"
#include "ops/dynamic.h"

namespace quantext {
namespace cuda {
namespace {

using math::Scalar;

struct Parts {
  int64_t cols, parts, part_len;
};

template <typename T>
struct Extremes {
  T lo, hi;
};

// The range of the block's values (0 when none is finite), valid in thread 0.
template <typename T>
__device__ __forceinline__ Extremes<T> block_range(T lo, T hi) {
  return {block_reduce(lo, T(0), [](T a, T b) { return a < b ? a : b; }),
          block_reduce(hi, T(0), [](T a, T b) { return a > b ? a : b; })};
}

// partials[2 item], [2 item + 1]: the range of the finite values of part
// `item % parts` of row `item / parts`.
template <typename scalar_t, typename acc_t>
__global__ void range_kernel(const scalar_t* __restrict__ x, Parts g, int64_t items, acc_t* __restrict__ partials) {
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t row = item / g.parts, begin = item % g.parts * g.part_len;
    const int64_t end = min(g.cols, begin + g.part_len);
    const scalar_t* xr = x + row * g.cols;
    acc_t lo = 0, hi = 0;
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
      const acc_t v = static_cast<acc_t>(xr[j]);
      if (isfinite(v)) {
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
      }
    }
    const auto r = block_range(lo, hi);
    if (threadIdx.x == 0) {
      partials[2 * item] = r.lo;
      partials[2 * item + 1] = r.hi;
    }
  }
}

// Writes each row's parameters (from the blocks of its first part) and, with
// kValues, y and with kMasked the clip mask over the block's part. Words at a
// part's ends are shared with the neighbouring part: OR-ed in atomically.
template <bool kValues, bool kMasked, typename scalar_t, typename acc_t>
__global__ void quantize_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, uint32_t* __restrict__ mask,
                                acc_t* __restrict__ scale, int32_t* __restrict__ zero_point,
                                const acc_t* __restrict__ partials, Parts g, int64_t items, acc_t qmin, acc_t qmax,
                                bool symmetric, acc_t min_scale) {
  __shared__ math::UniformParams<acc_t> shared;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t row = item / g.parts, part = item % g.parts;
    const acc_t* pr = partials + 2 * row * g.parts;
    acc_t lo = 0, hi = 0;
    for (int64_t j = threadIdx.x; j < g.parts; j += blockDim.x) {
      lo = pr[2 * j] < lo ? pr[2 * j] : lo;
      hi = pr[2 * j + 1] > hi ? pr[2 * j + 1] : hi;
    }
    const auto r = block_range(lo, hi);
    if (threadIdx.x == 0) {
      const auto q = math::dynamic_qparams(r.lo, r.hi, qmin, qmax, symmetric, min_scale);
      if (part == 0) {
        scale[row] = q.scale;
        zero_point[row] = static_cast<int32_t>(q.zero_point);
      }
      shared = math::load_uniform<acc_t>(&q.scale, &q.zero_point, 0, qmin, qmax);
    }
    __syncthreads();
    if constexpr (kValues) {
      const auto p = shared;
      const int64_t begin = row * g.cols + part * g.part_len;
      const int64_t end = row * g.cols + min(g.cols, (part + 1) * g.part_len);
      const int lane = threadIdx.x % math::kMaskWordBits;
      // Warps start on word boundaries, so that a warp's ballot is one mask word.
      for (int64_t i = begin - begin % math::kMaskWordBits + threadIdx.x; i - lane < end; i += blockDim.x) {
        bool inside = false;
        if (i >= begin && i < end) {
          const auto o = math::uniform_forward_masked<Scalar<acc_t>>(static_cast<acc_t>(x[i]), p);
          y[i] = static_cast<scalar_t>(o.y);
          inside = o.inside;
        }
        if constexpr (kMasked) {
          const uint32_t word = __ballot_sync(0xffffffffu, inside);
          if (lane == 0) {
            if (i >= begin && i + math::kMaskWordBits <= end) {
              mask[i / math::kMaskWordBits] = word;
            } else {
              atomicOr(&mask[i / math::kMaskWordBits], word);
            }
          }
        }
      }
    }
    __syncthreads();  // `shared` is rewritten for the next item
  }
}

Parts parts_for(const DynamicArgs& a) {
  if (a.cols == 0) return {0, 1, 0};
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const auto ceil_div = [](int64_t n, int64_t d) { return (n + d - 1) / d; };
  // Parts of at least 4096 elements, as many as it takes to give the device 8 blocks per SM.
  const int64_t parts = std::max<int64_t>(1, std::min(ceil_div(a.cols, 4096), ceil_div(sms * 8, a.rows)));
  const int64_t len = ceil_div(a.cols, parts);
  return {a.cols, ceil_div(a.cols, len), len};
}

void dynamic(const DynamicArgs& a, at::Tensor* y, at::Tensor* mask, at::Tensor& scale, at::Tensor& zero_point) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "quantext_dynamic", [&] {
    using acc_t = acc_type<scalar_t>;
    const Parts g = parts_for(a);
    const int64_t items = a.rows * g.parts;
    at::Tensor partials = at::empty({2 * items}, scale.options());
    const scalar_t* x = a.x.const_data_ptr<scalar_t>();
    launch_per_item(range_kernel<scalar_t, acc_t>, items, x, g, items, partials.mutable_data_ptr<acc_t>());
    with_flag(y != nullptr, [&](auto values) {
      with_flag(mask != nullptr, [&](auto masked) {
        launch_per_item(quantize_kernel<decltype(values)::value, decltype(masked)::value, scalar_t, acc_t>, items, x,
                        y ? y->mutable_data_ptr<scalar_t>() : nullptr,
                        mask ? reinterpret_cast<uint32_t*>(mask->mutable_data_ptr<int32_t>()) : nullptr,
                        scale.mutable_data_ptr<acc_t>(), zero_point.mutable_data_ptr<int32_t>(),
                        partials.const_data_ptr<acc_t>(), g, items, acc_t(a.qmin), acc_t(a.qmax), a.symmetric,
                        acc_t(a.min_scale));
      });
    });
  });
}

}  // namespace

QUANTEXT_REGISTER_KERNEL(dynamic_kernel, CUDA, &dynamic);

}  // namespace cuda
}  // namespace quantext
