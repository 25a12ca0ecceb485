// The clip-mask backward op: the clipped straight-through estimator from the
// bit-packed mask of the forward, for every op whose backward needs nothing
// else (uniform with fixed parameters, PoT/APoT with a fixed alpha).
#include "ops/clip_mask.h"

#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include "math/clip_mask.h"

namespace quantext {

KernelStub<ClipMaskBackwardKernel> clip_mask_backward_kernel{"quantext.clip_mask_backward"};

bool has_clip_mask_order(const Canonical& c) {
  return !c.grouped && (c.layout.kind != Granularity::Channel || c.layout.run >= math::kMaskWordBits);
}

at::Tensor zeroed_clip_mask(const at::Tensor& x) {
  return at::zeros({math::mask_words(x.numel())}, x.options().dtype(at::kInt));
}

at::Tensor empty_clip_mask(const at::Tensor& x) { return at::empty({0}, x.options().dtype(at::kInt)); }

namespace {

at::Tensor clip_mask_backward_host(const at::Tensor& grad, const at::Tensor& mask) {
  const char* op = "quantext.clip_mask_backward";
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), op, ": grad must be a floating point tensor, got dtype ",
                   grad.scalar_type());
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kInt, op, ": mask must be an int32 tensor, got dtype ",
                   mask.scalar_type());
  TORCH_CHECK_VALUE(grad.is_non_overlapping_and_dense(), op, ": grad must be dense (the mask follows its memory)");
  TORCH_CHECK_VALUE(mask.dim() == 1 && mask.is_contiguous() && mask.numel() == math::mask_words(grad.numel()), op,
                    ": mask must hold ", math::mask_words(grad.numel()), " contiguous words for ", grad.numel(),
                    " elements, got shape ", mask.sizes());
  check_same_device(op, grad, mask, "mask");
  const c10::OptionalDeviceGuard guard(at::device_of(grad));
  at::Tensor dx = at::empty_like(grad);
  if (grad.numel() > 0) clip_mask_backward_kernel(grad.device().type())(grad, mask, dx);
  return dx;
}

void register_clip_mask(torch::Library& m) { m.impl("clip_mask_backward", &clip_mask_backward_host); }

}  // namespace

QUANTEXT_HOST_IMPL(register_clip_mask)

TORCH_LIBRARY_FRAGMENT(quantext, m) { m.def("clip_mask_backward(Tensor grad, Tensor mask) -> Tensor"); }

}  // namespace quantext
