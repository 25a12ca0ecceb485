// MSE calibration: the clipping range that minimizes the expected squared
// quantization error of a histogram (read as a piecewise-uniform density).
#pragma once

#include <cstdint>
#include <vector>

#include "calib/search.h"

namespace quantext {
namespace calib {

// Histogram of |x| (bins over [0, bins * width]) quantized to the nearest of
// alpha * levels (normalized magnitudes, ascending: the uniform, PoT or APoT
// table). Candidates alpha = (i + 1) * width; curve[i] is the mean squared
// error at that alpha. Ties go to the smallest alpha.
SearchResult mse_symmetric(const double* counts, int64_t bins, double width, const std::vector<double>& levels);

struct AffineRange {
  double lo, hi, error;
};

// Histogram of x (bins over [lo, hi]) quantized by an affine grid of the
// integers [qmin, qmax] with scale (b - a) / (qmax - qmin) and zero point
// round(qmin - a / scale) for a candidate range [a, b] that contains 0. The
// candidates shrink from the bins holding data towards 0 one bin at a time,
// always dropping the end bin with less mass (ties: the low end); the best
// range along that path is returned with its mean squared error.
AffineRange mse_affine(const double* counts, int64_t bins, double lo, double hi, int64_t qmin, int64_t qmax);

}  // namespace calib
}  // namespace quantext
