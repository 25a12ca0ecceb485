// The bit-packed clip mask (math/clip_mask.h) as a tensor: int32 words in the
// canonical element order of the forward's input, and the op that applies it
// in the backward, dx = dy where the bit is set.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "ops/canonical.h"
#include "ops/kernel_stub.h"

namespace quantext {

// Whether the canonical order of `c` is the memory order of its dense input
// with whole runs of at least one word per item, which the backward reads the
// mask in. Per-group layouts (the group axis moved innermost) and per-channel
// runs shorter than a word (the channel axis innermost) save the input instead.
bool has_clip_mask_order(const Canonical& c);

// mask_words(x.numel()) zeroed words on x's device; the empty mask ([0]) says "no mask".
at::Tensor zeroed_clip_mask(const at::Tensor& x);
at::Tensor empty_clip_mask(const at::Tensor& x);

// The host half of a masked forward: y and, where the layout keeps one, the
// clip mask (else the empty mask), with the backend's plain or masked kernel.
template <typename Args, typename Plain, typename Masked>
std::tuple<at::Tensor, at::Tensor> masked_forward(const Args& a, const at::Tensor& x, const KernelStub<Plain>& plain,
                                                  const KernelStub<Masked>& masked) {
  at::Tensor y = a.c.empty_out();
  if (!has_clip_mask_order(a.c)) {
    if (x.numel() > 0) plain(x.device().type())(a, y);
    return {a.c.restore(y, x), empty_clip_mask(x)};
  }
  at::Tensor mask = zeroed_clip_mask(x);
  if (x.numel() > 0) masked(x.device().type())(a, y, mask);
  return {a.c.restore(y, x), mask};
}

// dx[i] = mask bit i ? dy[i] : 0 over the memory of the dense dy (non-empty).
using ClipMaskBackwardKernel = void (*)(const at::Tensor& dy, const at::Tensor& mask, at::Tensor& dx);
extern KernelStub<ClipMaskBackwardKernel> clip_mask_backward_kernel;

}  // namespace quantext
