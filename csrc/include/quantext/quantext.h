// quantext C++ API for LibTorch programs. Every function goes through the
// dispatcher (torch.ops.quantext.*), so it runs on CPU or CUDA tensors and
// records autograd like the Python API.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

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

// Normalized level table of a non-uniform grid ("pot" or "apot"): float64,
// ascending, top level 1; signed tables are symmetric (-levels, 0, +levels).
// bits counts the sign bit of a signed grid (B = bits - 1 magnitude bits).
at::Tensor levels(c10::string_view scheme, int64_t bits, bool is_signed, int64_t k = 2);

// APoT decode table, int64 [2^B, terms]: row c (magnitude code c, the index of
// the level in the ascending magnitude table) holds per additive term the
// exponent e of its power 2^-e, or -1. Level c = sum_t 2^-e[c, t] / top with
// top the sum of the last row (so the largest level is 1).
at::Tensor apot_decode_table(int64_t bits, bool is_signed, int64_t k = 2);

// alpha * Q(clip(x / alpha)) with Q the nearest level (ties to the smaller
// magnitude; rounding "log" for PoT rounds log2) of the scheme's grid, the
// clipped straight-through gradient for x, and for an alpha that requires
// grad sum(dy * (Q(v) - v)) inside the clip range, sum(dy * clip bound)
// outside (times grad_factor). alpha: one element (axis unset) or one per
// index of axis.
at::Tensor fake_quant_levels(const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme, int64_t bits,
                             bool is_signed, int64_t k = 2, c10::string_view rounding = "nearest",
                             std::optional<int64_t> axis = std::nullopt, double grad_factor = 1.0);

// Integer codes. Uniform: clamp(round(x / s) + z, qmin, qmax) as int8 (range
// within [-128, 127]), uint8 (within [0, 255]), int16 or int32. Levels: the
// magnitude index, negative for negative x, as int8 (signed) or uint8.
// NaN has no code: it gets the zero point (uniform) or 0. Dequantizing gives
// float32 (float64 for a float64 scale/alpha), equal bit for bit to the fake
// quantization of the same input.
at::Tensor quantize_uniform(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t qmin,
                            int64_t qmax, std::optional<int64_t> axis = std::nullopt, int64_t group_size = 0);
at::Tensor dequantize_uniform(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero_point,
                              std::optional<int64_t> axis = std::nullopt, int64_t group_size = 0);
at::Tensor quantize_levels(const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme, int64_t bits,
                           bool is_signed, int64_t k = 2, c10::string_view rounding = "nearest",
                           std::optional<int64_t> axis = std::nullopt);
at::Tensor dequantize_levels(const at::Tensor& codes, const at::Tensor& alpha, c10::string_view scheme, int64_t bits,
                             bool is_signed, int64_t k = 2, std::optional<int64_t> axis = std::nullopt);

// Value checks on scales/zero points of device tensors cost a host sync per
// call; training loops that validate elsewhere may turn them off.
void set_value_checks(bool enabled);
bool value_checks_enabled();

}  // namespace quantext
