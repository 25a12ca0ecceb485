// The host half of the fake-quant backwards once the arguments are prepared:
// dx in the layout of the input and, where asked, the parameter gradients.
#pragma once

#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "ops/kernel_stub.h"

namespace quantext {

// dx and `rows` gradients in the shape of `param` (the kernel's partial sums,
// reduced per parameter and times grad_factor; zeros unless param_grads).
template <typename Args, typename Kernel>
std::pair<at::Tensor, std::vector<at::Tensor>> backward_host(const char* op, const Args& a, const at::Tensor& grad,
                                                             const at::Tensor& x, const at::Tensor& param, int64_t rows,
                                                             const KernelStub<Kernel>& kernel, bool param_grads,
                                                             double grad_factor) {
  const at::Tensor dy = a.c.grad_in(op, grad, x);
  at::Tensor dx = a.c.empty_out();
  if (x.numel() == 0 || !param_grads) {
    if (x.numel() > 0) kernel(x.device().type())(a, dy, dx, false);
    std::vector<at::Tensor> zeros;  // a tensor each: the op's outputs must not alias
    for (int64_t r = 0; r < rows; ++r) zeros.push_back(at::zeros_like(param));
    return {a.c.restore(dx, x), std::move(zeros)};
  }
  const at::Tensor partials = kernel(x.device().type())(a, dy, dx, true);
  return {a.c.restore(dx, x), a.c.reduce_items(partials, grad_factor, param)};
}

}  // namespace quantext
