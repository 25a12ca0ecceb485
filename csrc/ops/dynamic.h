// Dynamic fake quantization: the uniform grid's scale and zero point computed
// from the input itself, per tensor or per token (per row over the last
// dimension), inside the op. Argument preparation shared by the backends and
// the kernel each registers.
#pragma once

#include <ATen/ATen.h>

#include "ops/kernel_stub.h"

namespace quantext {

struct DynamicArgs {
  // The input in the order its rows are read: contiguous per token; per
  // tensor, the memory of a dense input as it lies (the outputs get its strides).
  at::Tensor x;
  int64_t rows, cols;  // rows * cols == x.numel(); one row per tensor
  int64_t qmin, qmax;
  bool symmetric;
  double min_scale;
};

DynamicArgs prepare_dynamic(const char* op, const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric,
                            bool per_token, double min_scale);

// Writes scale[rows] (float32, float64 for a float64 input) and zero_point[rows]
// (int32) and, when given, y = fake_quant(x) and its clip mask (zeroed words,
// math/clip_mask.h) in the element order of a.x. a.x is non-empty.
using DynamicKernel = void (*)(const DynamicArgs& a, at::Tensor* y, at::Tensor* mask, at::Tensor& scale,
                               at::Tensor& zero_point);
extern KernelStub<DynamicKernel> dynamic_kernel;

}  // namespace quantext
