// Argument checking and memory-layout canonicalization shared by every op
// family and every backend, so CPU, CUDA and the C++ API reject the same
// inputs with the same messages.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "math/layout.h"
#include "quantext/quantext.h"

namespace quantext {

// The input laid out so that the kernels can walk raw memory, and how to
// write results back in the layout of at::empty_like(input).
struct Canonical {
  at::Tensor x;  // dense; per group: the group axis moved innermost, contiguous
  RunLayout layout;
  std::optional<int64_t> axis;  // wrapped axis, if any
  bool grouped = false;

  // Checks an incoming gradient against the input and brings it into the
  // physical layout (and dtype) of `x`.
  at::Tensor grad_in(const char* op, const at::Tensor& grad, const at::Tensor& input) const;
  // Allocates an output in the canonical layout.
  at::Tensor empty_out() const { return at::empty_like(x); }
  // The [rows, layout.num_partials()] partial sums of a backward's reduction.
  at::Tensor partials(int64_t rows, at::ScalarType dtype) const {
    return at::empty({rows, layout.num_partials()}, x.options().dtype(dtype));
  }
  // Returns a canonical-layout result (of any dtype) in the layout of
  // at::empty_like(input).
  at::Tensor restore(const at::Tensor& canonical_out, const at::Tensor& input) const;
  // Per-item partial sums [rows, items], times `factor` -> per row, one value
  // per parameter, in the shape and dtype of `param` (device ops only, no
  // host sync; the rows are reduced together to keep kernel launches few).
  std::vector<at::Tensor> reduce_items(const at::Tensor& partials, double factor, const at::Tensor& param) const;
};

// Validates x (floating dtype) and the granularity arguments, and lays it out.
// `params` is the per-channel/per-group parameter tensor whose shape is checked.
Canonical canonicalize(const char* op, const at::Tensor& x, const at::Tensor& param, const char* param_name,
                       std::optional<int64_t> axis, int64_t group_size);
// Integer code tensors are uint8, int8, int16, int32 or int64 (TypeError otherwise).
void check_code_dtype(const char* op, const at::Tensor& codes);
// The same as canonicalize for a tensor of integer codes.
Canonical canonicalize_codes(const char* op, const at::Tensor& codes, const at::Tensor& param, const char* param_name,
                             std::optional<int64_t> axis, int64_t group_size);

// Flattens a parameter tensor into the kernels' parameter order.
at::Tensor canonical_params(const Canonical& c, const at::Tensor& param);

void check_int_range(const char* op, int64_t qmin, int64_t qmax);
// The factor the parameter gradients are scaled by (LSQ's g): finite.
void check_grad_factor(const char* op, double grad_factor);
void check_param_dtype(const char* op, const at::Tensor& x, const at::Tensor& t, const char* name);
void check_same_device(const char* op, const at::Tensor& x, const at::Tensor& t, const char* name);

// Per-tensor chunk: large enough to amortize per-item work, small enough to
// parallelize 1e4-element tensors.
constexpr int64_t kTensorChunk = 8192;
// Per channel, shorter runs of one parameter (the channel axis nearly
// innermost) take the Interleaved layout on the CPU: a run per channel index
// would cost a call per few elements.
constexpr int64_t kMinChannelRun = 32;

}  // namespace quantext
