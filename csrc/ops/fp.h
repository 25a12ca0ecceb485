// Minifloat (ExMy) fake quantization with a scale per tensor, channel or
// group: argument preparation shared by the backends and the kernels each
// registers. The format math is math/fp_math.h.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "ops/canonical.h"
#include "ops/kernel_stub.h"

namespace quantext {

// A format's constants; fp_format checks its arguments: 1 <= exp_bits,
// 1 + exp_bits + man_bits <= 8, special "ieee" (the top exponent holds inf and
// NaN: E5M2), "fn" (no inf; the all-ones code is NaN: E4M3FN) or "finite"
// (every code is a number: the OCP MX FP6 and FP4 formats).
struct FpFormat {
  double max_value, min_normal, ulp;
};
FpFormat fp_format(const char* op, int64_t exp_bits, int64_t man_bits, c10::string_view special);

struct FpArgs {
  Canonical c;
  at::Tensor scale;  // flattened in parameter order, float32 or float64
  FpFormat format;
};

FpArgs prepare_fp(const char* op, const at::Tensor& x, const at::Tensor& scale, int64_t exp_bits, int64_t man_bits,
                  c10::string_view special, std::optional<int64_t> axis, int64_t group_size);

// Non-empty inputs, canonical layout; the backward returns the per-item
// scale-gradient partials [1, items] with param_grads.
using FpForwardKernel = void (*)(const FpArgs& a, at::Tensor& y);
using FpMaskedKernel = void (*)(const FpArgs& a, at::Tensor& y, at::Tensor& mask);
using FpBackwardKernel = at::Tensor (*)(const FpArgs& a, const at::Tensor& dy, at::Tensor& dx, bool param_grads);
extern KernelStub<FpForwardKernel> fp_forward_kernel;
extern KernelStub<FpMaskedKernel> fp_masked_kernel;
extern KernelStub<FpBackwardKernel> fp_backward_kernel;

}  // namespace quantext
