// What an autograd Function saves when its backward is the clipped
// straight-through estimator alone: the forward's bit-packed clip mask and
// the layout its bits follow, instead of the input (16.25 instead of 20
// bytes per float32 element over forward and backward).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <utility>
#include <vector>

namespace quantext {

inline std::vector<c10::SymInt> row_major_strides(const at::Tensor& x) {
  std::vector<c10::SymInt> strides(x.dim());
  c10::SymInt step = 1;
  for (int64_t d = x.dim() - 1; d >= 0; --d) {
    strides[d] = step;
    step = step * x.sym_size(d);
  }
  return strides;
}

// The mask's element order: the memory order of the op's canonical input,
// x's own layout when it is dense, row-major otherwise.
inline std::vector<c10::SymInt> clip_mask_strides(const at::Tensor& x) {
  return x.is_non_overlapping_and_dense() ? x.sym_strides().vec() : row_major_strides(x);
}

// Saves the mask whose bits follow the element order of `strides`.
inline void save_clip_mask(torch::autograd::AutogradContext* ctx, const at::Tensor& mask,
                           std::vector<c10::SymInt> strides) {
  ctx->save_for_backward({mask});
  ctx->saved_data["mask_strides"] = std::move(strides);
}

inline void save_clip_mask(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mask) {
  save_clip_mask(ctx, mask, clip_mask_strides(x));
}

// dx = grad where the saved mask is set, 0 elsewhere.
inline at::Tensor clip_mask_grad(torch::autograd::AutogradContext* ctx, const at::Tensor& grad) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::clip_mask_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  const auto strides = ctx->saved_data["mask_strides"].toSymIntList().vec();
  const at::Tensor mask = ctx->get_saved_variables()[0];
  const bool same = grad.sym_strides().vec() == strides;
  const at::Tensor dense =
      same ? grad : at::empty_strided_symint(grad.sym_sizes(), strides, grad.options()).copy_(grad);
  return op.call(dense, mask);
}

}  // namespace quantext
