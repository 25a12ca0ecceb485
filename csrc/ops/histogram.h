// Histogram ops: argument handling shared by the CPU and CUDA kernels, and
// the counting kernel each backend registers.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "ops/kernel_stub.h"

namespace quantext {

// The input as `rows` runs of `n` values (one row per tensor, or one per
// channel), each counted over its own range [lo[row], hi[row]].
struct HistogramArgs {
  at::Tensor data;  // dense; per channel: [C, n] contiguous
  at::Tensor lo;    // [rows] float64 on the input's device
  at::Tensor hi;    // [rows] float64
  int64_t rows, n, bins;
  bool magnitude;  // |x| split by sign: two sides of `bins` counters per row
  std::vector<int64_t> out_shape;

  int64_t row_width() const { return (magnitude ? 2 : 1) * bins; }
  at::Tensor zero_counts() const { return at::zeros(out_shape, data.options().dtype(at::kLong)); }
};

// Validates and lays out the arguments. Without `lo` it is the magnitude
// histogram over [0, hi] (and `hi` is called amax in messages).
HistogramArgs prepare_histogram(const char* op, const at::Tensor& x, int64_t bins, const std::optional<at::Tensor>& lo,
                                const at::Tensor& hi, std::optional<int64_t> axis);

// The counts, in the shape a.out_shape (int64).
using HistogramKernel = at::Tensor (*)(const HistogramArgs& a);
extern KernelStub<HistogramKernel> histogram_count_kernel;

}  // namespace quantext
