// Autograd for the uniform fake-quant op, in C++ so LibTorch training loops
// get the same gradients as Python. With fixed parameters the backward is the
// clipped straight-through estimator: the forward saves its bit-packed clip
// mask (autograd/clip_mask_grad.h). Learned parameters (LSQ/LSQ+) need x:
// their backward recomputes the codes from it.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

#include "autograd/clip_mask_grad.h"
#include "ops/value_checks.h"

namespace quantext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor forward_op(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
                      int64_t qmax, std::optional<int64_t> axis, int64_t group_size, double grad_factor) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("quantext::fake_quant_uniform", "").typed<decltype(forward_op)>();
  return op.call(x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(const at::Tensor& grad, const at::Tensor& x,
                                                           const at::Tensor& scale, const at::Tensor& zero_point,
                                                           int64_t qmin, int64_t qmax, std::optional<int64_t> axis,
                                                           int64_t group_size, double grad_factor, bool param_grads) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::fake_quant_uniform_backward", "")
                       .typed<decltype(backward_op)>();
  return op.call(grad, x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor, param_grads);
}

std::tuple<at::Tensor, at::Tensor> masked_op(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                             int64_t qmin, int64_t qmax, std::optional<int64_t> axis,
                                             int64_t group_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::fake_quant_uniform_masked", "")
                       .typed<decltype(masked_op)>();
  return op.call(x, scale, zero_point, qmin, qmax, axis, group_size);
}

class FakeQuantUniform : public torch::autograd::Function<FakeQuantUniform> {
 public:
  // want_mask: the backward needs dx only (x requires grad under grad mode, the
  // parameters do not), so the clip mask can stand in for x.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t qmin, int64_t qmax, std::optional<int64_t> axis,
                            int64_t group_size, double grad_factor, bool want_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y, mask;
    if (want_mask) {
      std::tie(y, mask) = masked_op(x, scale, zero_point, qmin, qmax, axis, group_size);
    } else {
      y = forward_op(x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor);
    }
    // An empty mask of a non-empty input: its layout keeps no mask (ops/clip_mask.h).
    const bool masked = want_mask && (mask.sym_numel() > 0 || x.sym_numel() == 0);
    ctx->saved_data["masked"] = masked;
    if (masked) {
      save_clip_mask(ctx, x, mask);
      return y;
    }
    ctx->save_for_backward({x, scale, zero_point});
    ctx->saved_data["qmin"] = qmin;
    ctx->saved_data["qmax"] = qmax;
    ctx->saved_data["axis"] = axis.has_value() ? c10::IValue(*axis) : c10::IValue();
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["grad_factor"] = grad_factor;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (ctx->saved_data["masked"].toBool()) {
      variable_list out(9);
      out[0] = clip_mask_grad(ctx, grads[0]);
      return out;
    }
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& scale = saved[1];
    const at::Tensor& zero_point = saved[2];
    const bool want_scale = ctx->needs_input_grad(1);
    const bool want_zero = ctx->needs_input_grad(2) && at::isFloatingType(zero_point.scalar_type());
    const auto& axis_value = ctx->saved_data["axis"];
    const std::optional<int64_t> axis = axis_value.isNone() ? std::nullopt : std::optional<int64_t>(axis_value.toInt());
    const SkipValueRecheck checked_by_forward;
    auto [dx, dscale, dzero] = backward_op(grads[0], x, scale, zero_point, ctx->saved_data["qmin"].toInt(),
                                           ctx->saved_data["qmax"].toInt(), axis, ctx->saved_data["group_size"].toInt(),
                                           ctx->saved_data["grad_factor"].toDouble(), want_scale || want_zero);
    return {ctx->needs_input_grad(0) ? dx : at::Tensor(),
            want_scale ? dscale : at::Tensor(),
            want_zero ? dzero.to(zero_point.scalar_type()) : at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor fake_quant_uniform_autograd(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                       int64_t qmin, int64_t qmax, std::optional<int64_t> axis, int64_t group_size,
                                       double grad_factor) {
  const bool learned = scale.requires_grad() || zero_point.requires_grad();
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || learned)) {
    // Nothing to record: skip building an autograd node (eval, calibration, frozen weights).
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_op(x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor);
  }
  const bool want_mask = x.requires_grad() && !learned;
  return FakeQuantUniform::apply(x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor, want_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(quantext, Autograd, m) { m.impl("fake_quant_uniform", &fake_quant_uniform_autograd); }

}  // namespace quantext
