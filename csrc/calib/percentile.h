// Percentile of a histogram.
#pragma once

#include <cstdint>

namespace quantext {
namespace calib {

// The value below which a fraction q in [0, 1] of the mass of `counts` (bins
// over [lo, hi]) lies, interpolated linearly inside its bin. The mass must be
// positive.
double hist_quantile(const double* counts, int64_t bins, double lo, double hi, double q);

}  // namespace calib
}  // namespace quantext
