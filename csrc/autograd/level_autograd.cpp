// Autograd for the level-scheme fake-quant op, in C++ like the uniform one:
// only the inputs are saved and the backward recomputes the levels from x.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "ops/value_checks.h"
#include "quantext/quantext.h"

namespace quantext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> backward_op(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& alpha,
                                               c10::string_view scheme, int64_t bits, bool is_signed, int64_t k,
                                               c10::string_view rounding, std::optional<int64_t> axis,
                                               double grad_factor, bool alpha_grad) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::fake_quant_levels_backward", "")
                       .typed<decltype(backward_op)>();
  return op.call(grad, x, alpha, scheme, bits, is_signed, k, rounding, axis, grad_factor, alpha_grad);
}

class FakeQuantLevels : public torch::autograd::Function<FakeQuantLevels> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme,
                            int64_t bits, bool is_signed, int64_t k, c10::string_view rounding,
                            std::optional<int64_t> axis, double grad_factor) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, alpha});
    ctx->saved_data["scheme"] = std::string(scheme);
    ctx->saved_data["bits"] = bits;
    ctx->saved_data["signed"] = is_signed;
    ctx->saved_data["k"] = k;
    ctx->saved_data["rounding"] = std::string(rounding);
    ctx->saved_data["axis"] = axis.has_value() ? c10::IValue(*axis) : c10::IValue();
    ctx->saved_data["grad_factor"] = grad_factor;
    return fake_quant_levels(x, alpha, scheme, bits, is_signed, k, rounding, axis, grad_factor);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    const auto& axis_value = d.at("axis");
    const std::optional<int64_t> axis = axis_value.isNone() ? std::nullopt : std::optional<int64_t>(axis_value.toInt());
    const bool want_alpha = ctx->needs_input_grad(1);
    const SkipValueRecheck checked_by_forward;
    auto [dx, dalpha] = backward_op(grads[0], saved[0], saved[1], d.at("scheme").toStringRef(), d.at("bits").toInt(),
                                    d.at("signed").toBool(), d.at("k").toInt(), d.at("rounding").toStringRef(), axis,
                                    d.at("grad_factor").toDouble(), want_alpha);
    variable_list out(9);
    if (ctx->needs_input_grad(0)) out[0] = dx;
    if (want_alpha) out[1] = dalpha;
    return out;
  }
};

at::Tensor fake_quant_levels_autograd(const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme,
                                      int64_t bits, bool is_signed, int64_t k, c10::string_view rounding,
                                      std::optional<int64_t> axis, double grad_factor) {
  return FakeQuantLevels::apply(x, alpha, scheme, bits, is_signed, k, rounding, axis, grad_factor);
}

}  // namespace

TORCH_LIBRARY_IMPL(quantext, Autograd, m) { m.impl("fake_quant_levels", &fake_quant_levels_autograd); }

}  // namespace quantext
