// Which bin a value falls in, shared by the CPU and CUDA histogram kernels so
// both count every value identically.
#pragma once

#include <cstdint>

#include "math/scheme_math.h"

namespace quantext {
namespace hist {

// One histogram row: `bins` equal bins over [lo, hi]. The position is formed
// in double as (v - lo) * (bins / (hi - lo)); with lo = 0 and hi a power of
// two this is exact, which is what makes re-binning by doubling exact.
struct BinMap {
  double lo, hi, scale;
  int64_t bins;
};

QTX_HOST_DEVICE BinMap make_bin_map(double lo, double hi, int64_t bins) {
  return {lo, hi, static_cast<double>(bins) / (hi - lo), bins};
}

// Bin of v: bins are [lo + i*w, lo + (i+1)*w), the last one also holds hi.
// Values outside [lo, hi], NaN and rows with an empty range give -1.
QTX_HOST_DEVICE int64_t bin_of(double v, const BinMap& m) {
  if (!(v >= m.lo && v <= m.hi && m.hi > m.lo)) return -1;
  const int64_t b = static_cast<int64_t>((v - m.lo) * m.scale);
  return b < m.bins ? b : m.bins - 1;
}

// Slot of v in a row of `sides * bins` counters. With kMagnitude the row is
// the histogram of |v| split by sign: slots [0, bins) count v < 0, slots
// [bins, 2 * bins) count v >= 0 (-0.0 included).
template <bool kMagnitude>
QTX_HOST_DEVICE int64_t slot_of(double v, const BinMap& m) {
  if constexpr (kMagnitude) {
    // Arithmetic rather than branches on the sign, which random data would mispredict.
    const int64_t non_negative = !(v < 0);
    const int64_t b = bin_of(::fabs(v), m);
    return b < 0 ? -1 : b + non_negative * m.bins;
  } else {
    return bin_of(v, m);
  }
}

}  // namespace hist
}  // namespace quantext
