// Dtype dispatch shared by the CPU and CUDA kernels: inputs in
// float16/bfloat16/float32/float64 with their parameter (scale, alpha) in
// float32/float64, integer code tensors, and the compute type of each.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <type_traits>

namespace quantext {

// Half-precision inputs compute in float; float64 inputs in double.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// fn(scalar_t{}, param_t{}) for the dtypes of x and its parameter tensor.
template <typename Fn>
void dispatch_types(const at::Tensor& x, const at::Tensor& param, const Fn& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantext_input", [&] {
    using x_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "quantext_param", [&] { fn(x_t{}, scalar_t{}); });
  });
}

// fn(code_t{}, param_t{}) for an integer code tensor and its float parameter.
template <typename Fn>
void dispatch_codes(const at::Tensor& codes, const at::Tensor& param, const Fn& fn) {
  AT_DISPATCH_INTEGRAL_TYPES(codes.scalar_type(), "quantext_codes", [&] {
    using code_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "quantext_param", [&] { fn(code_t{}, scalar_t{}); });
  });
}

// fn(std::bool_constant<flag>{}): a runtime flag as a template argument.
template <typename Fn>
void with_flag(bool flag, const Fn& fn) {
  if (flag) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

}  // namespace quantext
