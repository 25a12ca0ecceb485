// The bit-packed clip mask (math/clip_mask.h) as a tensor: int32 words in the
// canonical element order of the forward's input, and the op that applies it
// in the backward, dx = dy where the bit is set.
#pragma once

#include <ATen/ATen.h>

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

// dx[i] = mask bit i ? dy[i] : 0 over the memory of the dense dy (non-empty).
using ClipMaskBackwardKernel = void (*)(const at::Tensor& dy, const at::Tensor& mask, at::Tensor& dx);
extern KernelStub<ClipMaskBackwardKernel> clip_mask_backward_kernel;

}  // namespace quantext
