// CPU kernels of the histogram ops. The rows are cut into fixed-size chunks
// (independent of the thread count); each task counts into a local histogram
// that is added to the output under a lock. Integer counts make the result
// independent of the merge order.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <mutex>
#include <vector>

#include "math/histogram_bin.h"
#include "ops/histogram.h"

namespace quantext {
namespace cpu {
namespace {

constexpr int64_t kChunk = int64_t{1} << 16;

template <bool kMagnitude, typename scalar_t>
void count_rows(const HistogramArgs& a, int64_t* out) {
  const scalar_t* x = a.data.const_data_ptr<scalar_t>();
  const double* lo = a.lo.const_data_ptr<double>();
  const double* hi = a.hi.const_data_ptr<double>();
  const int64_t width = a.row_width();
  const int64_t chunks = std::max<int64_t>(1, (a.n + kChunk - 1) / kChunk);
  std::mutex mutex;
  at::parallel_for(0, a.rows * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> local(width, 0);
    int64_t row = -1;
    hist::BinMap map{};
    const auto flush = [&] {
      std::lock_guard<std::mutex> lock(mutex);
      int64_t* dst = out + row * width;
      for (int64_t i = 0; i < width; ++i) dst[i] += local[i];
      std::fill(local.begin(), local.end(), 0);
    };
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / chunks;
      if (r != row) {
        if (row >= 0) flush();
        row = r;
        map = hist::make_bin_map(lo[r], hi[r], a.bins);
      }
      const scalar_t* xr = x + r * a.n;
      const int64_t stop = std::min(a.n, (task % chunks + 1) * kChunk);
      for (int64_t i = (task % chunks) * kChunk; i < stop; ++i) {
        const int64_t s = hist::slot_of<kMagnitude>(static_cast<double>(xr[i]), map);
        if (s >= 0) ++local[s];
      }
    }
    if (row >= 0) flush();
  });
}

at::Tensor count(const HistogramArgs& a) {
  at::Tensor out = a.zero_counts();
  if (a.n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.data.scalar_type(), "quantext_histogram_cpu", [&] {
    if (a.magnitude) {
      count_rows<true, scalar_t>(a, out.mutable_data_ptr<int64_t>());
    } else {
      count_rows<false, scalar_t>(a, out.mutable_data_ptr<int64_t>());
    }
  });
  return out;
}

}  // namespace

QUANTEXT_REGISTER_KERNEL(histogram_count_kernel, CPU, &count);

}  // namespace cpu
}  // namespace quantext
