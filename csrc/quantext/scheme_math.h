// Scheme math shared by the CPU and CUDA kernels: one formula per scheme,
// written against a small "policy" of primitive operations so that the same
// template serves scalar host code, CUDA device code and ATen's Vectorized<T>.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define QTX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define QTX_HOST_DEVICE inline
#endif

namespace quantext {
namespace math {

// Scalar policy. Comparisons are written so that NaN fails every range test:
// a NaN input stays NaN and gets a zero gradient.
template <typename T>
struct Scalar {
  using V = T;
  using Mask = bool;
  static QTX_HOST_DEVICE V splat(T v) { return v; }
  // Round half to even under the default rounding mode, as std::nearbyint.
  static QTX_HOST_DEVICE V round(V v) { return ::rint(v); }
  static QTX_HOST_DEVICE V clamp(V v, V lo, V hi) { return v < lo ? lo : (v > hi ? hi : v); }
  static QTX_HOST_DEVICE Mask lt(V a, V b) { return a < b; }
  static QTX_HOST_DEVICE Mask gt(V a, V b) { return a > b; }
  static QTX_HOST_DEVICE Mask in_range(V v, V lo, V hi) { return v >= lo && v <= hi; }
  static QTX_HOST_DEVICE Mask either(Mask a, Mask b) { return a || b; }
  static QTX_HOST_DEVICE V select(Mask m, V a, V b) { return m ? a : b; }
};

template <>
QTX_HOST_DEVICE float Scalar<float>::round(float v) {
  return ::rintf(v);
}

// ---------------------------------------------------------------- uniform --
// Parameters of one uniform quantizer, already in the compute type: the
// reciprocal is formed once, in the scale's own precision, as ATen does.
template <typename V>
struct UniformParams {
  V scale, inv_scale, zero_point, qmin, qmax;
};

// Unclamped integer code q = round(x / s) + z.
template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE V uniform_code(V x, const UniformParams<V>& p) {
  return P::round(x * p.inv_scale) + p.zero_point;
}

template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE V uniform_dequant(V q, const UniformParams<V>& p) {
  return (P::clamp(q, p.qmin, p.qmax) - p.zero_point) * p.scale;
}

template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE V uniform_forward(V x, const UniformParams<V>& p) {
  return uniform_dequant<P>(uniform_code<P>(x, p), p);
}

// Clipped straight-through gradient for x, and the per-element LSQ / LSQ+
// contributions for scale and zero point (before the gradient factor).
template <typename V>
struct UniformGrads {
  V dx, dscale, dzero;
};

template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE UniformGrads<V> uniform_backward(V dy, V x, const UniformParams<V>& p) {
  const V zero = P::splat(0);
  const V q = uniform_code<P>(x, p);
  const auto inside = P::in_range(q, p.qmin, p.qmax);
  const auto below = P::lt(q, p.qmin);
  const auto above = P::gt(q, p.qmax);
  const V y = uniform_dequant<P>(q, p);
  const V ds_clipped = P::select(below, p.qmin - p.zero_point, P::select(above, p.qmax - p.zero_point, zero));
  const V ds = P::select(inside, (y - x) * p.inv_scale, ds_clipped);
  const V dz = P::select(P::either(below, above), zero - p.scale, zero);
  return {P::select(inside, dy, zero), dy * ds, dy * dz};
}

}  // namespace math
}  // namespace quantext

namespace quantext {
namespace math {

// Parameters of element group `i`, from the scale and (scale-typed) zero point
// arrays. The reciprocal is taken in the scale's precision (float32 for a
// float32 scale, as ATen's fake_quantize ops do).
template <typename acc_t, typename scale_t>
QTX_HOST_DEVICE UniformParams<acc_t> load_uniform(const scale_t* scale, const scale_t* zero_point, int64_t i,
                                                  acc_t qmin, acc_t qmax) {
  const scale_t s = scale[i];
  return {static_cast<acc_t>(s), static_cast<acc_t>(scale_t(1) / s),
          static_cast<acc_t>(Scalar<scale_t>::round(zero_point[i])), qmin, qmax};
}

}  // namespace math
}  // namespace quantext
