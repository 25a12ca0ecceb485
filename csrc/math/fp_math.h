// Minifloat (ExMy) fake quantization, shared by the CPU and CUDA kernels.
//
// A format with E exponent and M mantissa bits (bias 2^(E-1) - 1) holds, in
// each binade [2^e, 2^(e+1)) from e = emin = 1 - bias up, the multiples of
// 2^(e-M); below 2^emin the subnormals, multiples of 2^(emin-M). So the
// nearest value of |v| is round(|v| / step) * step with step = 2^(max(e,
// emin) - M), e = floor(log2 |v|): round half to even rounds the mantissa to
// even, as IEEE and the OCP formats do, and a carry into the next binade
// lands on its first value. Values beyond the largest finite one saturate.
#pragma once

#include <cstdint>
#include <cstring>

#include "math/scheme_math.h"

namespace quantext {
namespace math {

// A format in the compute type (host-derived: ops/fp.cpp).
template <typename V>
struct FpGrid {
  V max_value;   // largest finite magnitude
  V min_normal;  // 2^emin
  V ulp;         // 2^-M: a binade's step over its first value
};

template <typename V>
struct FpParams {
  V scale, inv_scale;
};

// The format's nearest value of v (NaN stays NaN, +-inf saturates).
template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE V fp_round(V v, const FpGrid<V>& g) {
  const V zero = P::splat(0);
  const V a = P::clamp(P::abs(v), zero, g.max_value);
  const V step = P::clamp(P::floor_pow2(a), g.min_normal, g.max_value) * g.ulp;
  const V m = P::round(a / step) * step;  // exact: both powers of two apart
  return P::select(P::lt(v, zero), zero - m, m);
}

template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE MaskedOutput<P> fp_forward_masked(V x, const FpParams<V>& p, const FpGrid<V>& g) {
  const V v = x * p.inv_scale;
  return {fp_round<P>(v, g) * p.scale, P::in_range(v, P::splat(0) - g.max_value, g.max_value)};
}

template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE V fp_forward(V x, const FpParams<V>& p, const FpGrid<V>& g) {
  return fp_round<P>(x * p.inv_scale, g) * p.scale;
}

// Clipped straight-through gradient for x and the per-element term of the
// scale's (y = s * Q(x / s): Q(v) - v inside the range, +-max outside).
template <typename V>
struct FpGrads {
  V dx, dscale;
};

template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE FpGrads<V> fp_backward(V dy, V x, const FpParams<V>& p, const FpGrid<V>& g) {
  const V zero = P::splat(0);
  const V v = x * p.inv_scale;
  const auto inside = P::in_range(v, zero - g.max_value, g.max_value);
  const V q = fp_round<P>(v, g);
  const V ds = P::select(inside, q - v, P::select(P::lt(v, zero), zero - g.max_value, g.max_value));
  return {P::select(inside, dy, zero), dy * P::select(P::not_nan(v), ds, zero)};
}

// ------------------------------------------------------------ block scales --
// The scale of a block of a block-scaled format from the block's finite |max|,
// in float32 (python/quantext/block_scales.py states the rules).

// MX (E8M0): 2^(floor(log2 amax) - emax) within [2^-126, 2^127]; 2^-126 for a
// zero (or subnormal) amax.
QTX_HOST_DEVICE float mx_block_scale(float amax, int emax) {
  uint32_t bits;
  memcpy(&bits, &amax, sizeof(bits));
  const int field = static_cast<int>((bits >> 23) & 0xffu);  // floor(log2 amax) + 127 for a normal amax
  int shared = field == 0 ? -126 : field - 127 - emax;
  shared = shared < -126 ? -126 : (shared > 127 ? 127 : shared);
  bits = static_cast<uint32_t>(shared + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof(scale));
  return scale;
}

// NVFP4: the E4M3 value (nearest even, saturating) of amax / (fp_max *
// tensor_scale), 2^-9 (E4M3's smallest) where that is 0, times tensor_scale.
QTX_HOST_DEVICE float nv_block_scale(float amax, float fp_max, float tensor_scale) {
  const FpGrid<float> e4m3{448.0f, 0.015625f, 0.125f};
  float s = fp_round<Scalar<float>>(amax / (fp_max * tensor_scale), e4m3);
  s = (s > 0.0f ? s : 0.001953125f) * tensor_scale;
  return s < 1.17549435e-38f ? 1.17549435e-38f : s;  // a normal float32, as the kernels take
}

}  // namespace math
}  // namespace quantext
