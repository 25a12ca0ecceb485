// Dynamic quantization parameters: the scale and zero point of a range
// computed from the tensor being quantized, shared by the CPU and CUDA
// kernels. The rule is the one static calibration applies to a "max" range
// (quantext.nn.quantizer.qparams_from_range), in the scale's precision.
#pragma once

#include "math/scheme_math.h"

namespace quantext {
namespace math {

template <typename T>
struct DynamicQParams {
  T scale, zero_point;  // the zero point integral-valued
};

// [lo, hi] is the range of the finite values (or [0, 0]); it is widened to
// hold 0 so that zero is exact. Symmetric: scale = max(|lo|, |hi|) / qmax,
// zero point 0. Asymmetric: scale = (hi - lo) / (qmax - qmin), zero point
// qmin - round(lo / scale) in [qmin, qmax]. Scales below min_scale (all-zero
// rows) are raised to it.
template <typename T>
QTX_HOST_DEVICE DynamicQParams<T> dynamic_qparams(T lo, T hi, T qmin, T qmax, bool symmetric, T min_scale) {
  lo = lo < T(0) ? lo : T(0);
  hi = hi > T(0) ? hi : T(0);
  if (symmetric) {
    const T s = (-lo > hi ? -lo : hi) / qmax;
    return {s < min_scale ? min_scale : s, T(0)};
  }
  T s = (hi - lo) / (qmax - qmin);
  s = s < min_scale ? min_scale : s;
  return {s, Scalar<T>::clamp(qmin - Scalar<T>::round(lo / s), qmin, qmax)};
}

}  // namespace math
}  // namespace quantext
