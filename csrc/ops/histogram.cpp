// Schemas of the histogram ops, their shared argument checks and host halves.
#include "ops/histogram.h"

#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include "ops/canonical.h"
#include "ops/value_checks.h"

namespace quantext {

KernelStub<HistogramKernel> histogram_count_kernel{"quantext.histogram"};

namespace {

// More bins than this is a mistake (and would not fit the CUDA kernel's grid math).
constexpr int64_t kMaxBins = int64_t{1} << 24;

at::Tensor range_param(const char* op, const at::Tensor& x, const at::Tensor& t, const char* name, int64_t rows,
                       std::optional<int64_t> axis) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
                   t.scalar_type());
  check_same_device(op, x, t, name);
  if (axis.has_value()) {
    TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == rows, op, ": per-channel ", name, " must have shape [", rows,
                      "] (size of axis ", *axis, "), got ", t.sizes());
  } else {
    TORCH_CHECK_VALUE(t.numel() == 1, op, ": per-tensor ", name, " must have one element, got shape ", t.sizes());
  }
  return t.reshape({rows}).to(at::kDouble).contiguous();
}

}  // namespace

HistogramArgs prepare_histogram(const char* op, const at::Tensor& x, int64_t bins, const std::optional<at::Tensor>& lo,
                                const at::Tensor& hi, std::optional<int64_t> axis) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": input must be a floating point tensor, got dtype ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(bins >= 1 && bins <= kMaxBins, op, ": bins must be in [1, ", kMaxBins, "], got ", bins);
  HistogramArgs a;
  a.bins = bins;
  a.magnitude = !lo.has_value();
  if (axis.has_value()) {
    TORCH_CHECK_VALUE(x.dim() > 0, op, ": axis=", *axis, " given for a 0-dimensional input");
    TORCH_CHECK_VALUE(*axis >= -x.dim() && *axis < x.dim(), op, ": axis=", *axis, " is out of range for an input with ",
                      x.dim(), " dimensions");
    const int64_t ax = *axis < 0 ? *axis + x.dim() : *axis;
    a.rows = x.size(ax);
    a.data = x.movedim(ax, 0).contiguous();
    a.out_shape = {a.rows};
  } else {
    a.rows = 1;
    // Per tensor the order of the values does not matter: walk raw memory.
    a.data = x.is_non_overlapping_and_dense() ? x : x.contiguous();
  }
  a.n = a.rows == 0 ? 0 : x.numel() / a.rows;
  if (a.magnitude) a.out_shape.push_back(2);
  a.out_shape.push_back(bins);
  const char* hi_name = a.magnitude ? "amax" : "hi";
  a.hi = range_param(op, x, hi, hi_name, a.rows, axis);
  a.lo = a.magnitude ? at::zeros_like(a.hi) : range_param(op, x, *lo, "lo", a.rows, axis);
  // One check covers every bad range: non-finite ends give a non-finite width.
  check_values(op, {positive_finite(a.magnitude ? a.hi : a.hi - a.lo, a.magnitude ? "amax" : "hi - lo")});
  return a;
}

namespace {

at::Tensor histogram_host(const at::Tensor& x, int64_t bins, const at::Tensor& lo, const at::Tensor& hi,
                          std::optional<int64_t> axis) {
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  return histogram_count_kernel(x.device().type())(prepare_histogram("quantext.histogram", x, bins, lo, hi, axis));
}

at::Tensor magnitude_histogram_host(const at::Tensor& x, int64_t bins, const at::Tensor& amax,
                                    std::optional<int64_t> axis) {
  const c10::OptionalDeviceGuard guard(at::device_of(x));
  return histogram_count_kernel(x.device().type())(
      prepare_histogram("quantext.magnitude_histogram", x, bins, std::nullopt, amax, axis));
}

void register_histogram(torch::Library& m) {
  m.impl("histogram", &histogram_host);
  m.impl("magnitude_histogram", &magnitude_histogram_host);
}

}  // namespace

QUANTEXT_HOST_IMPL(register_histogram)

TORCH_LIBRARY_FRAGMENT(quantext, m) {
  m.def("histogram(Tensor x, int bins, Tensor lo, Tensor hi, int? axis=None) -> Tensor");
  m.def("magnitude_histogram(Tensor x, int bins, Tensor amax, int? axis=None) -> Tensor");
}

}  // namespace quantext
