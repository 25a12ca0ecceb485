#include "calib/aciq.h"

#include <cmath>

namespace quantext {
namespace calib {
namespace {

constexpr double kPi = 3.14159265358979323846;

// d/dalpha of one tail's clipping error, E[(x - alpha)^2; x > alpha], for a unit prior.
double tail_slope(double alpha, Prior prior) {
  if (prior == Prior::Laplace) return -std::exp(-alpha);  // density e^-|x| / 2
  const double pdf = std::exp(-0.5 * alpha * alpha) / std::sqrt(2 * kPi);
  const double upper = 0.5 * std::erfc(alpha / std::sqrt(2.0));
  return -2 * (pdf - alpha * upper);
}

}  // namespace

double aciq_ratio(int64_t bits, Prior prior) {
  const double noise_slope = 2.0 / (3.0 * std::ldexp(1.0, 2 * static_cast<int>(bits)));  // d/dalpha alpha^2/(3*4^M)
  const auto slope = [&](double alpha) { return 2 * tail_slope(alpha, prior) + noise_slope * alpha; };
  double a = 0, b = 64;  // slope(0) < 0 < slope(64) for every supported bit width
  for (int it = 0; it < 200; ++it) {
    const double m = 0.5 * (a + b);
    (slope(m) > 0 ? b : a) = m;
  }
  return 0.5 * (a + b);
}

}  // namespace calib
}  // namespace quantext
