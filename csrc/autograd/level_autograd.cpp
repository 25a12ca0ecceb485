// Autograd for the level-scheme fake-quant op, in C++ like the uniform one.
// With a fixed alpha the forward saves its bit-packed clip mask
// (autograd/clip_mask_grad.h); a learned alpha needs x, from which the
// backward recomputes the levels.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "autograd/clip_mask_grad.h"
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

std::tuple<at::Tensor, at::Tensor> masked_op(const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme,
                                             int64_t bits, bool is_signed, int64_t k, c10::string_view rounding,
                                             std::optional<int64_t> axis) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::fake_quant_levels_masked", "")
                       .typed<decltype(masked_op)>();
  return op.call(x, alpha, scheme, bits, is_signed, k, rounding, axis);
}

class FakeQuantLevels : public torch::autograd::Function<FakeQuantLevels> {
 public:
  // want_mask: the backward needs dx only (x requires grad under grad mode, alpha
  // does not), so the clip mask can stand in for x.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme,
                            int64_t bits, bool is_signed, int64_t k, c10::string_view rounding,
                            std::optional<int64_t> axis, double grad_factor, bool want_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y, mask;
    if (want_mask) {
      std::tie(y, mask) = masked_op(x, alpha, scheme, bits, is_signed, k, rounding, axis);
    } else {
      y = fake_quant_levels(x, alpha, scheme, bits, is_signed, k, rounding, axis, grad_factor);
    }
    // An empty mask of a non-empty input: its layout keeps no mask (ops/clip_mask.h).
    const bool masked = want_mask && (mask.sym_numel() > 0 || x.sym_numel() == 0);
    ctx->saved_data["masked"] = masked;
    if (masked) {
      save_clip_mask(ctx, x, mask);
      return y;
    }
    ctx->save_for_backward({x, alpha});
    ctx->saved_data["scheme"] = std::string(scheme);
    ctx->saved_data["bits"] = bits;
    ctx->saved_data["signed"] = is_signed;
    ctx->saved_data["k"] = k;
    ctx->saved_data["rounding"] = std::string(rounding);
    ctx->saved_data["axis"] = axis.has_value() ? c10::IValue(*axis) : c10::IValue();
    ctx->saved_data["grad_factor"] = grad_factor;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(10);
    if (ctx->saved_data["masked"].toBool()) {
      out[0] = clip_mask_grad(ctx, grads[0]);
      return out;
    }
    const auto saved = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    const auto& axis_value = d.at("axis");
    const std::optional<int64_t> axis = axis_value.isNone() ? std::nullopt : std::optional<int64_t>(axis_value.toInt());
    const bool want_alpha = ctx->needs_input_grad(1);
    const SkipValueRecheck checked_by_forward;
    auto [dx, dalpha] = backward_op(grads[0], saved[0], saved[1], d.at("scheme").toStringRef(), d.at("bits").toInt(),
                                    d.at("signed").toBool(), d.at("k").toInt(), d.at("rounding").toStringRef(), axis,
                                    d.at("grad_factor").toDouble(), want_alpha);
    if (ctx->needs_input_grad(0)) out[0] = dx;
    if (want_alpha) out[1] = dalpha;
    return out;
  }
};

at::Tensor fake_quant_levels_autograd(const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme,
                                      int64_t bits, bool is_signed, int64_t k, c10::string_view rounding,
                                      std::optional<int64_t> axis, double grad_factor) {
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || alpha.requires_grad())) {
    // Nothing to record: skip building an autograd node (eval, calibration, frozen weights).
    at::AutoDispatchBelowADInplaceOrView guard;
    return fake_quant_levels(x, alpha, scheme, bits, is_signed, k, rounding, axis, grad_factor);
  }
  const bool want_mask = x.requires_grad() && !alpha.requires_grad();
  return FakeQuantLevels::apply(x, alpha, scheme, bits, is_signed, k, rounding, axis, grad_factor, want_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(quantext, Autograd, m) { m.impl("fake_quant_levels", &fake_quant_levels_autograd); }

}  // namespace quantext
