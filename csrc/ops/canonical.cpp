#include "ops/canonical.h"

#include <atomic>
#include <cmath>
#include <vector>

namespace quantext {
namespace {

std::atomic<bool> g_value_checks{true};
thread_local bool t_skip_device_checks = false;

Canonical canonical_layout(const char* op, const at::Tensor& x, const at::Tensor& param, const char* param_name,
                           std::optional<int64_t> axis, int64_t group_size);

}  // namespace

bool value_checks_enabled() { return g_value_checks.load(std::memory_order_relaxed); }
void set_value_checks(bool enabled) { g_value_checks.store(enabled, std::memory_order_relaxed); }

bool reads_values(const at::Tensor& t) {
  // Values of a CPU tensor are always checked; device tensors cost a sync.
  return t.device().is_cpu() || (value_checks_enabled() && !t_skip_device_checks);
}

SkipValueRecheck::SkipValueRecheck() : previous_(t_skip_device_checks) { t_skip_device_checks = true; }
SkipValueRecheck::~SkipValueRecheck() { t_skip_device_checks = previous_; }

Canonical canonicalize(const char* op, const at::Tensor& x, const at::Tensor& param, const char* param_name,
                       std::optional<int64_t> axis, int64_t group_size) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": input must be a floating point tensor, got dtype ",
                   x.scalar_type());
  return canonical_layout(op, x, param, param_name, axis, group_size);
}

Canonical canonicalize_codes(const char* op, const at::Tensor& codes, const at::Tensor& param, const char* param_name,
                             std::optional<int64_t> axis, int64_t group_size) {
  TORCH_CHECK_TYPE(at::isIntegralType(codes.scalar_type(), /*includeBool=*/false), op,
                   ": codes must be an integer tensor, got dtype ", codes.scalar_type());
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
    c.layout = {channels <= 1 ? Granularity::Tensor : Granularity::Channel, numel, channels <= 1 ? kTensorChunk : inner,
                channels};
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

at::Tensor Canonical::reduce_items(const at::Tensor& partials, const at::Tensor& param) const {
  // An axis of size 0 has no parameters (and its layout is per tensor): nothing to reduce.
  if (param.numel() == 0) return at::zeros_like(param, at::MemoryFormat::Contiguous);
  at::Tensor flat;
  switch (layout.kind) {
    case Granularity::Tensor:
      flat = partials.sum();
      break;
    case Granularity::Channel:
      flat = partials.view({-1, layout.channels}).sum(0);
      break;
    case Granularity::Group:
      flat = partials;
      break;
  }
  const at::Tensor shaped =
      grouped ? flat.view(param.movedim(*axis, -1).sizes()).movedim(-1, *axis) : flat.view(param.sizes());
  return shaped.to(param.scalar_type()).contiguous();
}

ValueCheck positive_finite(const at::Tensor& t, const char* name) {
  return value_check(
      t, [name] { return std::string(name) + " must be positive and finite"; },
      [](const at::Tensor& v) { return (v <= 0).logical_or_(v.isfinite().logical_not_()); });
}

ValueCheck zero_point_in_range(const at::Tensor& zero_point, int64_t qmin, int64_t qmax) {
  return value_check(
      zero_point, [=] { return c10::str("zero_point must lie in [qmin, qmax] = [", qmin, ", ", qmax, "]"); },
      [&](const at::Tensor& v) {
        const at::Tensor z = at::isFloatingType(v.scalar_type()) ? v.round() : v;
        return (z < qmin).logical_or_(z > qmax).logical_or_(z.isnan());
      });
}

void check_values(const char* op, std::initializer_list<ValueCheck> checks) {
  std::vector<const ValueCheck*> read;
  std::vector<at::Tensor> any;
  for (const ValueCheck& c : checks) {
    if (!c.bad.defined()) continue;
    read.push_back(&c);
    any.push_back(c.bad.any().reshape({1}));
  }
  if (read.empty()) return;
  const at::Tensor flags = at::cat(any).cpu();  // the one sync
  const bool* flag = flags.const_data_ptr<bool>();
  for (size_t i = 0; i < read.size(); ++i) {
    if (!flag[i]) continue;
    // A Scalar prints in the tensor's own kind: integer codes stay exact.
    const c10::Scalar value = read[i]->values.reshape(-1).index({read[i]->bad.reshape(-1)})[0].item();
    TORCH_CHECK_VALUE(false, op, ": ", read[i]->rule(), ", got ", value);
  }
}

void check_int_range(const char* op, int64_t qmin, int64_t qmax) {
  TORCH_CHECK_VALUE(qmin <= qmax, op, ": qmin must be <= qmax, got qmin=", qmin, ", qmax=", qmax);
  // 16 bits is the widest supported grid; codes must stay exact in float32.
  TORCH_CHECK_VALUE(qmin >= -65536 && qmax <= 65535, op, ": the integer range [", qmin, ", ", qmax,
                    "] is wider than 16 bits");
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
