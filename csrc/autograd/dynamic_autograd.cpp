// Autograd for the dynamic fake-quant op: the clipped straight-through
// estimator. The parameters are a function of the input but, as in every
// dynamic-quantization QAT recipe, are not differentiated through: dx = dy
// where the input lies inside the grid, from the forward's bit-packed mask.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "autograd/clip_mask_grad.h"

namespace quantext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor forward_op(const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric, bool per_token,
                      double min_scale) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("quantext::fake_quant_dynamic", "").typed<decltype(forward_op)>();
  return op.call(x, qmin, qmax, symmetric, per_token, min_scale);
}

using MaskedResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

MaskedResult masked_op(const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric, bool per_token,
                       double min_scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::fake_quant_dynamic_masked", "")
                       .typed<decltype(masked_op)>();
  return op.call(x, qmin, qmax, symmetric, per_token, min_scale);
}

class FakeQuantDynamic : public torch::autograd::Function<FakeQuantDynamic> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric,
                            bool per_token, double min_scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, mask, scale, zero_point] = masked_op(x, qmin, qmax, symmetric, per_token, min_scale);
    // The kernels read rows in row-major order; per tensor, a dense input in its own (ops/dynamic.h).
    save_clip_mask(ctx, mask, per_token ? row_major_strides(x) : clip_mask_strides(x));
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(6);
    out[0] = clip_mask_grad(ctx, grads[0]);
    return out;
  }
};

at::Tensor fake_quant_dynamic_autograd(const at::Tensor& x, int64_t qmin, int64_t qmax, bool symmetric, bool per_token,
                                       double min_scale) {
  if (!at::GradMode::is_enabled() || !x.requires_grad()) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_op(x, qmin, qmax, symmetric, per_token, min_scale);
  }
  return FakeQuantDynamic::apply(x, qmin, qmax, symmetric, per_token, min_scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(quantext, Autograd, m) { m.impl("fake_quant_dynamic", &fake_quant_dynamic_autograd); }

}  // namespace quantext
