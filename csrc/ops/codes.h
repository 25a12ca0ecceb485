// Integer-code ops (quantize / dequantize for every scheme): dtype rules and
// checks shared by the CPU and CUDA kernels, and the kernels they register.
#pragma once

#include <ATen/ATen.h>

#include <utility>

#include "math/level_sets.h"
#include "ops/dispatch.h"
#include "ops/kernel_stub.h"
#include "ops/level_ops.h"
#include "ops/uniform.h"
#include "ops/value_checks.h"

namespace quantext {

// Narrowest dtype holding [qmin, qmax]: int8, uint8, int16, else int32.
at::ScalarType uniform_code_dtype(int64_t qmin, int64_t qmax);

// Level codes: int8 (signed grid, code = sign * magnitude index) or uint8.
inline at::ScalarType level_code_dtype(const LevelSpec& spec) { return spec.is_signed ? at::kChar : at::kByte; }

// [min, max] of the dtype of an integer code tensor (TypeError otherwise).
std::pair<int64_t, int64_t> code_dtype_range(const char* op, const at::Tensor& codes);

// Level codes must lie in [-(2^B - 1), 2^B - 1] (signed) or [0, 2^B - 1].
ValueCheck level_codes_in_range(const at::Tensor& codes, const LevelSpec& spec);

// out (canonical layout, non-empty) = codes of a.c.x, or the values of the codes a.c.x.
using UniformCodesKernel = void (*)(const UniformArgs& a, at::Tensor& out);
using LevelCodesKernel = void (*)(const LevelArgs& a, at::Tensor& out);
extern KernelStub<UniformCodesKernel> quantize_uniform_kernel;
extern KernelStub<UniformCodesKernel> dequantize_uniform_kernel;
extern KernelStub<LevelCodesKernel> quantize_levels_kernel;
extern KernelStub<LevelCodesKernel> dequantize_levels_kernel;

// The dtype dispatch of the quantize kernels on every backend:
// fn(in_t{}, code_t{}, param_t{}), computed in acc_type<in_t> (the dequantize
// kernels use dispatch_codes of ops/dispatch.h).
template <typename Fn>
void dispatch_quantize(const at::Tensor& x, const at::Tensor& param, const at::Tensor& codes, const Fn& fn) {
  dispatch_types(x, param, [&](auto x_tag, auto p_tag) {
    AT_DISPATCH_INTEGRAL_TYPES(codes.scalar_type(), "quantext_quantize", [&] { fn(x_tag, scalar_t{}, p_tag); });
  });
}

// A backend registers its four code kernels, named after the ops, in its namespace.
#define QUANTEXT_REGISTER_CODES_KERNELS(DEVICE)                                     \
  QUANTEXT_REGISTER_KERNEL(quantize_uniform_kernel, DEVICE, &quantize_uniform);     \
  QUANTEXT_REGISTER_KERNEL(dequantize_uniform_kernel, DEVICE, &dequantize_uniform); \
  QUANTEXT_REGISTER_KERNEL(quantize_levels_kernel, DEVICE, &quantize_levels);       \
  QUANTEXT_REGISTER_KERNEL(dequantize_levels_kernel, DEVICE, &dequantize_levels)

}  // namespace quantext
