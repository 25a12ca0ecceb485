// quantext C++ API for LibTorch programs. Every function goes through the
// dispatcher (torch.ops.quantext.*), so it runs on CPU or CUDA tensors and
// records autograd like the Python API.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <utility>

namespace quantext {

// Integer range [qmin, qmax] of a b-bit grid (b in [2, 16]); narrow range drops
// the most negative (signed) or the zero (unsigned) code.
std::pair<int64_t, int64_t> uniform_bounds(int64_t bits, bool is_signed, bool narrow_range = false);

// y = (clamp(round(x / scale) + z, qmin, qmax) - z) * scale with the clipped
// straight-through gradient for x and the LSQ/LSQ+ gradients (times
// grad_factor) for a floating scale/zero_point that requires grad.
// No axis: per tensor. axis: per channel (scale has shape [x.size(axis)]).
// axis and group_size > 0: per group of group_size consecutive elements along
// axis (scale has x's shape with size(axis) / group_size on axis).
at::Tensor fake_quant_uniform(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
                              int64_t qmax, std::optional<int64_t> axis = std::nullopt, int64_t group_size = 0,
                              double grad_factor = 1.0);

// Value checks on scales/zero points of device tensors cost a host sync per
// call; training loops that validate elsewhere may turn them off.
void set_value_checks(bool enabled);
bool value_checks_enabled();

}  // namespace quantext
