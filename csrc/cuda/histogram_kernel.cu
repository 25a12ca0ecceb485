// CUDA kernels of the histogram ops. Each block counts a slice of one row
// into a shared-memory histogram (32-bit counters, shared atomics) and adds it
// to the int64 output with one global atomic per non-empty counter. Rows too
// wide for shared memory count straight into global memory. The ranges are
// read on the device: no host sync.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>

#include "math/histogram_bin.h"
#include "ops/histogram.h"

namespace quantext {
namespace cuda {
namespace {

constexpr int kThreads = 512;
// A block's share of a row stays below 2^31 values, so 32-bit shared counters cannot overflow.
constexpr int64_t kMaxPerBlock = int64_t{1} << 31;

using Count = unsigned long long;
static_assert(sizeof(Count) == sizeof(int64_t), "int64 output is counted with 64-bit atomics");

template <bool kMagnitude, bool kShared, typename scalar_t>
__global__ void histogram_kernel(const scalar_t* __restrict__ x, int64_t rows, int64_t n, const double* __restrict__ lo,
                                 const double* __restrict__ hi, int64_t bins, Count* __restrict__ out) {
  extern __shared__ unsigned int local[];
  const int64_t width = (kMagnitude ? 2 : 1) * bins;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    if constexpr (kShared) {
      for (int64_t i = threadIdx.x; i < width; i += blockDim.x) local[i] = 0;
      __syncthreads();
    }
    const hist::BinMap map = hist::make_bin_map(lo[row], hi[row], bins);
    const scalar_t* xr = x + row * n;
    Count* dst = out + row * width;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
      const int64_t s = hist::slot_of<kMagnitude>(static_cast<double>(xr[i]), map);
      if (s < 0) continue;
      if constexpr (kShared) {
        atomicAdd(&local[s], 1u);
      } else {
        atomicAdd(&dst[s], Count{1});
      }
    }
    if constexpr (kShared) {
      __syncthreads();
      for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
        if (local[i] != 0) atomicAdd(&dst[i], static_cast<Count>(local[i]));
      }
      __syncthreads();  // `local` is cleared for the next row only after every flush
    }
  }
}

// The host half holds the device guard.
at::Tensor count(const HistogramArgs& a) {
  at::Tensor out = a.zero_counts();
  if (a.n == 0 || a.rows == 0) return out;
  const auto* props = at::cuda::getCurrentDeviceProperties();
  const int64_t smem = a.row_width() * int64_t(sizeof(unsigned int));
  const bool shared = smem <= int64_t(props->sharedMemPerBlock);
  // Enough blocks to fill the device, spread over the rows; at most 65535 rows per launch pass.
  const int64_t grid_y = std::min<int64_t>(a.rows, 65535);
  const int64_t want = std::max<int64_t>(1, int64_t(props->multiProcessorCount) * 4 / grid_y);
  const int64_t grid_x = std::max<int64_t>(
      {std::min<int64_t>(want, (a.n + kThreads - 1) / kThreads), (a.n + kMaxPerBlock - 1) / kMaxPerBlock, int64_t{1}});
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  auto* dst = reinterpret_cast<Count*>(out.mutable_data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.data.scalar_type(), "quantext_histogram_cuda", [&] {
    const auto launch = [&](auto kernel, size_t bytes) {
      kernel<<<grid, kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(a.data.const_data_ptr<scalar_t>(), a.rows,
                                                                          a.n, a.lo.const_data_ptr<double>(),
                                                                          a.hi.const_data_ptr<double>(), a.bins, dst);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (a.magnitude) {
      shared ? launch(histogram_kernel<true, true, scalar_t>, smem)
             : launch(histogram_kernel<true, false, scalar_t>, 0);
    } else {
      shared ? launch(histogram_kernel<false, true, scalar_t>, smem)
             : launch(histogram_kernel<false, false, scalar_t>, 0);
    }
  });
  return out;
}

}  // namespace

QUANTEXT_REGISTER_KERNEL(histogram_count_kernel, CUDA, &count);

}  // namespace cuda
}  // namespace quantext
