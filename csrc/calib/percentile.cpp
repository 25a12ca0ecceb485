#include "calib/percentile.h"

namespace quantext {
namespace calib {

double hist_quantile(const double* counts, int64_t bins, double lo, double hi, double q) {
  const double width = (hi - lo) / bins;
  double total = 0;
  int64_t last = 0;
  for (int64_t j = 0; j < bins; ++j) {
    total += counts[j];
    if (counts[j] > 0) last = j;
  }
  const double target = q * total;
  double below = 0;
  for (int64_t j = 0; j < bins; ++j) {
    if (counts[j] > 0 && below + counts[j] >= target) return lo + (j + (target - below) / counts[j]) * width;
    below += counts[j];
  }
  return lo + (last + 1) * width;  // q = 1 lost to rounding in the running sum
}

}  // namespace calib
}  // namespace quantext
