// Uniform (affine) fake quantization: argument preparation shared by the
// CPU and CUDA kernels, and the kernels each backend registers.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "ops/canonical.h"
#include "ops/kernel_stub.h"

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

// y (canonical layout, non-empty) = fake_quant(a.c.x).
using UniformForwardKernel = void (*)(const UniformArgs& a, at::Tensor& y);
// Writes dx (canonical layout, non-empty input) and, with param_grads,
// returns the per-item partial sums [2, items] of the scale and zero-point
// gradients (in the backend's accumulation dtype) for Canonical::reduce_items.
using UniformBackwardKernel = at::Tensor (*)(const UniformArgs& a, const at::Tensor& dy, at::Tensor& dx,
                                             bool param_grads);
// The same with the clip mask (math/clip_mask.h; zeroed words) written too.
using UniformMaskedKernel = void (*)(const UniformArgs& a, at::Tensor& y, at::Tensor& mask);
extern KernelStub<UniformForwardKernel> uniform_forward_kernel;
extern KernelStub<UniformMaskedKernel> uniform_masked_kernel;
extern KernelStub<UniformBackwardKernel> uniform_backward_kernel;

}  // namespace quantext
