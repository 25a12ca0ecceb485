// Uniform (affine) fake quantization: argument preparation shared by the
// CPU and CUDA kernels.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "ops/canonical.h"

namespace quantext {

struct UniformArgs {
  Canonical c;
  at::Tensor scale;       // flattened in parameter order, float32 or float64
  at::Tensor zero_point;  // same dtype as scale (rounded inside the kernels)
  int64_t qmin, qmax;
};

// With `codes`, x is an integer code tensor and [qmin, qmax] its dtype's range.
UniformArgs prepare_uniform(const char* op, const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                            int64_t qmin, int64_t qmax, std::optional<int64_t> axis, int64_t group_size,
                            bool codes = false);

}  // namespace quantext
