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

// Block-scaled formats (MX, NVFP4): scales from each block of `block`
// consecutive elements along the last dimension of the contiguous x.
struct FpBlockArgs {
  at::Tensor x;  // contiguous, non-empty
  int64_t block;
  FpFormat format;
  int emax;                 // MX: the exponent of the element format's largest normal
  at::Tensor tensor_scale;  // NVFP4: float32, one element; undefined for MX
};

FpBlockArgs prepare_fp_blocks(const char* op, const at::Tensor& x, int64_t exp_bits, int64_t man_bits,
                              c10::string_view special, int64_t block_size, c10::string_view scale_format,
                              const std::optional<at::Tensor>& tensor_scale);

// Writes y and, when given, the clip mask (zeroed words) in the order of a.x.
using FpBlockKernel = void (*)(const FpBlockArgs& a, at::Tensor& y, at::Tensor* mask);
extern KernelStub<FpBlockKernel> fp_block_kernel;

}  // namespace quantext
