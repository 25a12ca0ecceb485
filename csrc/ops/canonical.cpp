#include "ops/canonical.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace quantext {
namespace {

Canonical canonical_layout(const char* op, const at::Tensor& x, const at::Tensor& param, const char* param_name,
                           std::optional<int64_t> axis, int64_t group_size);

}  // namespace

Canonical canonicalize(const char* op, const at::Tensor& x, const at::Tensor& param, const char* param_name,
                       std::optional<int64_t> axis, int64_t group_size) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": input must be a floating point tensor, got dtype ",
                   x.scalar_type());
  return canonical_layout(op, x, param, param_name, axis, group_size);
}

void check_code_dtype(const char* op, const at::Tensor& codes) {
  const at::ScalarType t = codes.scalar_type();
  const bool ok = t == at::kByte || t == at::kChar || t == at::kShort || t == at::kInt || t == at::kLong;
  TORCH_CHECK_TYPE(ok, op, ": codes must be an integer tensor (uint8, int8, int16, int32 or int64), got dtype ", t);
}

Canonical canonicalize_codes(const char* op, const at::Tensor& codes, const at::Tensor& param, const char* param_name,
                             std::optional<int64_t> axis, int64_t group_size) {
  check_code_dtype(op, codes);
  return canonical_layout(op, codes, param, param_name, axis, group_size);
}

namespace {

Canonical canonical_layout(const char* op, const at::Tensor& x, const at::Tensor& param, const char* param_name,
                           std::optional<int64_t> axis, int64_t group_size) {
  TORCH_CHECK_VALUE(group_size >= 0, op, ": group_size must be >= 0, got ", group_size);
  Canonical c;
  const int64_t numel = x.numel();
  if (!axis.has_value()) {
    TORCH_CHECK_VALUE(group_size == 0, op, ": group_size=", group_size, " needs an axis");
    TORCH_CHECK_VALUE(param.numel() == 1, op, ": per-tensor ", param_name, " must have one element, got shape ",
                      param.sizes());
    c.x = x.is_non_overlapping_and_dense() ? x : x.contiguous();
    c.layout = {Granularity::Tensor, numel, kTensorChunk, 1};
    return c;
  }
  TORCH_CHECK_VALUE(x.dim() > 0, op, ": axis=", *axis, " given for a 0-dimensional input");
  TORCH_CHECK_VALUE(*axis >= -x.dim() && *axis < x.dim(), op, ": axis=", *axis, " is out of range for an input with ",
                    x.dim(), " dimensions");
  const int64_t ax = *axis < 0 ? *axis + x.dim() : *axis;
  const int64_t channels = x.size(ax);
  c.axis = ax;
  if (group_size == 0) {
    TORCH_CHECK_VALUE(param.dim() == 1 && param.size(0) == channels, op, ": per-channel ", param_name,
                      " must have shape [", channels, "] (size of axis ", ax, "), got ", param.sizes());
    c.x = x.is_non_overlapping_and_dense() ? x : x.contiguous();
    // In a dense layout the elements inside one channel index are the
    // `stride(axis)` elements physically nested within it.
    const int64_t inner = channels <= 1 ? std::max<int64_t>(numel, 1) : c.x.stride(ax);
    if (channels <= 1) {
      c.layout = {Granularity::Tensor, numel, kTensorChunk, 1};
    } else if (inner < kMinChannelRun && numel > 0 && x.is_cpu()) {  // an empty x may have stride 0
      // The CPU loops cycle through the parameters instead of one run per
      // channel index (the CUDA kernels do not take this layout yet).
      const int64_t period = channels * inner;
      c.layout = {Granularity::Interleaved, numel, std::max<int64_t>(1, kTensorChunk / period) * period, channels,
                  inner};
    } else {
      c.layout = {Granularity::Channel, numel, inner, channels};
    }
    return c;
  }
  TORCH_CHECK_VALUE(channels % group_size == 0, op, ": group_size=", group_size, " does not divide size ", channels,
                    " of axis ", ax);
  auto expected = x.sizes().vec();
  expected[ax] = channels / group_size;
  TORCH_CHECK_VALUE(param.sizes().vec() == expected, op, ": per-group ", param_name, " must have shape ",
                    at::IntArrayRef(expected), " (axis ", ax, " divided by group_size=", group_size, "), got ",
                    param.sizes());
  c.grouped = true;
  c.x = x.movedim(ax, -1).contiguous();
  c.layout = {Granularity::Group, numel, group_size, 1};
  return c;
}

}  // namespace

at::Tensor canonical_params(const Canonical& c, const at::Tensor& param) {
  if (c.grouped) return param.movedim(*c.axis, -1).contiguous().view(-1);
  return param.contiguous().view(-1);
}

at::Tensor Canonical::grad_in(const char* op, const at::Tensor& grad, const at::Tensor& input) const {
  TORCH_CHECK_VALUE(grad.sizes() == input.sizes(), op, ": grad shape ", grad.sizes(), " does not match input shape ",
                    input.sizes());
  check_same_device(op, input, grad, "grad");
  // A complex gradient would lose its imaginary part in the cast below.
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), op, ": grad must be a floating point tensor, got dtype ",
                   grad.scalar_type());
  const at::Tensor g = grad.to(input.scalar_type());
  const at::Tensor moved = grouped ? g.movedim(*axis, -1) : g;
  if (moved.strides() == x.strides()) return moved;
  return at::empty_like(x).copy_(moved);
}

at::Tensor Canonical::restore(const at::Tensor& canonical_out, const at::Tensor& input) const {
  if (!grouped) {
    if (canonical_out.strides() == input.strides() || !input.is_non_overlapping_and_dense()) return canonical_out;
    return at::empty_like(input, canonical_out.options()).copy_(canonical_out);
  }
  const at::Tensor back = canonical_out.movedim(-1, *axis);
  at::Tensor out = at::empty_like(input, canonical_out.options());
  if (back.strides() == out.strides()) return back;
  return out.copy_(back);
}

std::vector<at::Tensor> Canonical::reduce_items(const at::Tensor& partials, double factor,
                                                const at::Tensor& param) const {
  const int64_t rows = partials.size(0);
  std::vector<at::Tensor> out;
  // An axis of size 0 has no parameters (and its layout is per tensor): nothing to reduce.
  if (param.numel() == 0) {
    for (int64_t r = 0; r < rows; ++r) out.push_back(at::zeros_like(param, at::MemoryFormat::Contiguous));
    return out;
  }
  const at::Tensor scaled = partials * factor;
  at::Tensor flat;
  switch (layout.kind) {
    case Granularity::Tensor:
      flat = scaled.sum(1);
      break;
    case Granularity::Channel:
    case Granularity::Interleaved:  // partials [items, channels]
      flat = scaled.view({rows, -1, layout.channels}).sum(1);
      break;
    case Granularity::Group:
      flat = scaled;
      break;
  }
  std::vector<int64_t> shape{rows};
  const at::Tensor moved = grouped ? param.movedim(*axis, -1) : param;
  shape.insert(shape.end(), moved.sizes().begin(), moved.sizes().end());
  const at::Tensor shaped = grouped ? flat.view(shape).movedim(-1, *axis + 1) : flat.view(shape);
  // A tensor of its own per row: the op's outputs must not alias each other.
  for (int64_t r = 0; r < rows; ++r) {
    out.push_back(
        shaped[r].to(param.scalar_type(), /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous));
  }
  return out;
}

void check_int_range(const char* op, int64_t qmin, int64_t qmax) {
  TORCH_CHECK_VALUE(qmin <= qmax, op, ": qmin must be <= qmax, got qmin=", qmin, ", qmax=", qmax);
  // 16 bits is the widest supported grid; codes must stay exact in float32.
  TORCH_CHECK_VALUE(qmin >= -65536 && qmax <= 65535, op, ": the integer range [", qmin, ", ", qmax,
                    "] is wider than 16 bits");
}

void check_grad_factor(const char* op, double grad_factor) {
  TORCH_CHECK_VALUE(std::isfinite(grad_factor), op, ": grad_factor must be finite, got ", grad_factor);
}

void check_param_dtype(const char* op, const at::Tensor& x, const at::Tensor& t, const char* name) {
  // Integer codes decode in the parameter's precision.
  const bool wide_ok = x.scalar_type() == at::kDouble || at::isIntegralType(x.scalar_type(), /*includeBool=*/false);
  const bool ok = t.scalar_type() == at::kFloat || (t.scalar_type() == at::kDouble && wide_ok);
  TORCH_CHECK_TYPE(ok, op, ": ", name, " must be float32 (or float64 with a float64 input or integer codes), got ",
                   t.scalar_type(), " with input ", x.scalar_type());
}

void check_same_device(const char* op, const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but the input is on ",
                    x.device());
}

}  // namespace quantext
