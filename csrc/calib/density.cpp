#include "calib/density.h"

#include <algorithm>

namespace quantext {
namespace calib {

PiecewiseUniform::PiecewiseUniform(const double* counts, int64_t bins, double width)
    : counts_(counts), bins_(bins), width_(width), p0_(bins + 1, 0.0), p1_(bins + 1, 0.0), p2_(bins + 1, 0.0) {
  for (int64_t j = 0; j < bins; ++j) {
    const double c = counts[j], a = double(j);
    p0_[j + 1] = p0_[j] + c;
    p1_[j + 1] = p1_[j] + c * (a + 0.5) * width;
    p2_[j + 1] = p2_[j] + c * (a * a + a + 1.0 / 3.0) * width * width;
  }
}

Moments PiecewiseUniform::cumulative(double x) const {
  x = std::clamp(x, 0.0, top());
  const int64_t j = std::min<int64_t>(static_cast<int64_t>(x / width_), bins_ - 1);
  const double a = j * width_, d = counts_[j] / width_;
  return {p0_[j] + d * (x - a), p1_[j] + d * (x * x - a * a) / 2, p2_[j] + d * (x * x * x - a * a * a) / 3};
}

double PiecewiseUniform::squared_error(const Moments& a, const Moments& b, double c) {
  return std::max(0.0, (b.m2 - a.m2) - 2 * c * (b.m1 - a.m1) + c * c * (b.m0 - a.m0));
}

}  // namespace calib
}  // namespace quantext
