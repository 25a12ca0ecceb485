// Autograd for the minifloat fake-quant op, in C++ like the uniform one: with
// a fixed scale the forward saves its bit-packed clip mask
// (autograd/clip_mask_grad.h); a learned scale needs x, from which the
// backward recomputes the rounding.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "autograd/clip_mask_grad.h"
#include "ops/value_checks.h"

namespace quantext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor forward_op(const at::Tensor& x, const at::Tensor& scale, int64_t exp_bits, int64_t man_bits,
                      c10::string_view special, std::optional<int64_t> axis, int64_t group_size, double grad_factor) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("quantext::fake_quant_fp", "").typed<decltype(forward_op)>();
  return op.call(x, scale, exp_bits, man_bits, special, axis, group_size, grad_factor);
}

std::tuple<at::Tensor, at::Tensor> masked_op(const at::Tensor& x, const at::Tensor& scale, int64_t exp_bits,
                                             int64_t man_bits, c10::string_view special, std::optional<int64_t> axis,
                                             int64_t group_size) {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("quantext::fake_quant_fp_masked", "").typed<decltype(masked_op)>();
  return op.call(x, scale, exp_bits, man_bits, special, axis, group_size);
}

std::tuple<at::Tensor, at::Tensor> backward_op(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
                                               int64_t exp_bits, int64_t man_bits, c10::string_view special,
                                               std::optional<int64_t> axis, int64_t group_size, double grad_factor,
                                               bool param_grads) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("quantext::fake_quant_fp_backward", "")
                       .typed<decltype(backward_op)>();
  return op.call(grad, x, scale, exp_bits, man_bits, special, axis, group_size, grad_factor, param_grads);
}

class FakeQuantFp : public torch::autograd::Function<FakeQuantFp> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale, int64_t exp_bits,
                            int64_t man_bits, c10::string_view special, std::optional<int64_t> axis, int64_t group_size,
                            double grad_factor, bool want_mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y, mask;
    if (want_mask) {
      std::tie(y, mask) = masked_op(x, scale, exp_bits, man_bits, special, axis, group_size);
    } else {
      y = forward_op(x, scale, exp_bits, man_bits, special, axis, group_size, grad_factor);
    }
    // An empty mask of a non-empty input: its layout keeps no mask (ops/clip_mask.h).
    const bool masked = want_mask && (mask.sym_numel() > 0 || x.sym_numel() == 0);
    ctx->saved_data["masked"] = masked;
    if (masked) {
      save_clip_mask(ctx, x, mask);
      return y;
    }
    ctx->save_for_backward({x, scale});
    ctx->saved_data["exp_bits"] = exp_bits;
    ctx->saved_data["man_bits"] = man_bits;
    ctx->saved_data["special"] = std::string(special);
    ctx->saved_data["axis"] = axis.has_value() ? c10::IValue(*axis) : c10::IValue();
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["grad_factor"] = grad_factor;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(9);
    if (ctx->saved_data["masked"].toBool()) {
      out[0] = clip_mask_grad(ctx, grads[0]);
      return out;
    }
    const auto saved = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    const auto& axis_value = d.at("axis");
    const std::optional<int64_t> axis = axis_value.isNone() ? std::nullopt : std::optional<int64_t>(axis_value.toInt());
    const bool want_scale = ctx->needs_input_grad(1);
    const SkipValueRecheck checked_by_forward;
    auto [dx, dscale] = backward_op(grads[0], saved[0], saved[1], d.at("exp_bits").toInt(), d.at("man_bits").toInt(),
                                    d.at("special").toStringRef(), axis, d.at("group_size").toInt(),
                                    d.at("grad_factor").toDouble(), want_scale);
    if (ctx->needs_input_grad(0)) out[0] = dx;
    if (want_scale) out[1] = dscale;
    return out;
  }
};

at::Tensor fake_quant_fp_autograd(const at::Tensor& x, const at::Tensor& scale, int64_t exp_bits, int64_t man_bits,
                                  c10::string_view special, std::optional<int64_t> axis, int64_t group_size,
                                  double grad_factor) {
  if (!at::GradMode::is_enabled() || !(x.requires_grad() || scale.requires_grad())) {
    // Nothing to record: skip building an autograd node (eval, calibration, frozen weights).
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_op(x, scale, exp_bits, man_bits, special, axis, group_size, grad_factor);
  }
  const bool want_mask = x.requires_grad() && !scale.requires_grad();
  return FakeQuantFp::apply(x, scale, exp_bits, man_bits, special, axis, group_size, grad_factor, want_mask);
}

using BlocksOp = at::Tensor(const at::Tensor&, int64_t, int64_t, c10::string_view, int64_t, c10::string_view,
                            const std::optional<at::Tensor>&);
using BlocksMaskedOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, int64_t, c10::string_view,
                                                          int64_t, c10::string_view, const std::optional<at::Tensor>&);

// Block-scaled formats: the scales are a function of x but, as in the MX and
// NVFP4 recipes, not differentiated through: the clipped straight-through
// estimator from the forward's mask (in the row-major order the kernels read).
class FakeQuantFpBlocks : public torch::autograd::Function<FakeQuantFpBlocks> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t exp_bits, int64_t man_bits,
                            c10::string_view special, int64_t block_size, c10::string_view scale_format,
                            const std::optional<at::Tensor>& tensor_scale) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("quantext::fake_quant_fp_blocks_masked", "")
                         .typed<BlocksMaskedOp>();
    auto [y, mask] = op.call(x, exp_bits, man_bits, special, block_size, scale_format, tensor_scale);
    save_clip_mask(ctx, mask, row_major_strides(x));
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(7);
    out[0] = clip_mask_grad(ctx, grads[0]);
    return out;
  }
};

at::Tensor fake_quant_fp_blocks_autograd(const at::Tensor& x, int64_t exp_bits, int64_t man_bits,
                                         c10::string_view special, int64_t block_size, c10::string_view scale_format,
                                         const std::optional<at::Tensor>& tensor_scale) {
  if (!at::GradMode::is_enabled() || !x.requires_grad()) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("quantext::fake_quant_fp_blocks", "").typed<BlocksOp>();
    return op.call(x, exp_bits, man_bits, special, block_size, scale_format, tensor_scale);
  }
  return FakeQuantFpBlocks::apply(x, exp_bits, man_bits, special, block_size, scale_format, tensor_scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(quantext, Autograd, m) {
  m.impl("fake_quant_fp", &fake_quant_fp_autograd);
  m.impl("fake_quant_fp_blocks", &fake_quant_fp_blocks_autograd);
}

}  // namespace quantext
