// A histogram read as a piecewise-uniform density (each bin's count spread
// evenly over the bin), with prefix sums so that the integrals the range
// methods need cost O(1) each.
#pragma once

#include <cstdint>
#include <vector>

namespace quantext {
namespace calib {

// Integrals of v^0, v^1, v^2 times the density over [0, x].
struct Moments {
  double m0 = 0, m1 = 0, m2 = 0;
};

class PiecewiseUniform {
 public:
  // `bins` bins of `width` covering [0, bins * width] (callers shift their coordinates).
  PiecewiseUniform(const double* counts, int64_t bins, double width);

  double top() const { return bins_ * width_; }
  double total() const { return p0_.back(); }
  // Moments over [0, x], x clamped into [0, top()].
  Moments cumulative(double x) const;
  // Integral of (v - c)^2 times the density over [a, b], from the cumulative
  // moments at a and b (never negative: rounding is clipped).
  static double squared_error(const Moments& a, const Moments& b, double c);

 private:
  const double* counts_;
  int64_t bins_;
  double width_;
  std::vector<double> p0_, p1_, p2_;  // moments of the bins [0, j)
};

// Squared error of rounding the density to the nearest of `count` ascending
// reconstruction points level(0..count-1) (cells split at their midpoints;
// the first and last cells reach to the ends of the density, which is where
// clipping happens).
template <typename Level>
double nearest_level_error(const PiecewiseUniform& d, int64_t count, const Level& level) {
  double err = 0;
  Moments prev;
  for (int64_t j = 0; j < count; ++j) {
    const double y = level(j);
    const double t = j + 1 < count ? 0.5 * (y + level(j + 1)) : d.top();
    const Moments next = d.cumulative(t);
    err += PiecewiseUniform::squared_error(prev, next, y);
    if (t >= d.top()) break;
    prev = next;
  }
  return err;
}

}  // namespace calib
}  // namespace quantext
