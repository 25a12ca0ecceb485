// Autograd for the uniform fake-quant op, in C++ so LibTorch training loops
// get the same gradients as Python. Nothing but the inputs is saved: the
// backward recomputes the clipping mask from x (no mask tensor at all).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

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

class FakeQuantUniform : public torch::autograd::Function<FakeQuantUniform> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t qmin, int64_t qmax, std::optional<int64_t> axis,
                            int64_t group_size, double grad_factor) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, scale, zero_point});
    ctx->saved_data["qmin"] = qmin;
    ctx->saved_data["qmax"] = qmax;
    ctx->saved_data["axis"] = axis.has_value() ? c10::IValue(*axis) : c10::IValue();
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["grad_factor"] = grad_factor;
    return forward_op(x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
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
            at::Tensor()};
  }
};

at::Tensor fake_quant_uniform_autograd(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                       int64_t qmin, int64_t qmax, std::optional<int64_t> axis, int64_t group_size,
                                       double grad_factor) {
  return FakeQuantUniform::apply(x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor);
}

}  // namespace

TORCH_LIBRARY_IMPL(quantext, Autograd, m) { m.impl("fake_quant_uniform", &fake_quant_uniform_autograd); }

}  // namespace quantext
