#include "calib/mse.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "calib/density.h"

namespace quantext {
namespace calib {

SearchResult mse_symmetric(const double* counts, int64_t bins, double width, const std::vector<double>& levels) {
  const PiecewiseUniform d(counts, bins, width);
  const int64_t n = static_cast<int64_t>(levels.size());
  SearchResult r{0, std::vector<double>(bins)};
  double best = std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < bins; ++i) {
    const double alpha = (i + 1) * width;
    const double err = nearest_level_error(d, n, [&](int64_t j) { return alpha * levels[j]; }) / d.total();
    r.curve[i] = err;
    if (err < best) {
      best = err;
      r.clip = alpha;
    }
  }
  return r;
}

AffineRange mse_affine(const double* counts, int64_t bins, double lo, double hi, int64_t qmin, int64_t qmax) {
  const double width = (hi - lo) / bins;
  const PiecewiseUniform d(counts, bins, width);
  // Error of the grid for the range [a, b] (absolute coordinates), in the density's coordinates v = x - lo.
  const auto error = [&](double a, double b) {
    const double scale = (b - a) / double(qmax - qmin);
    const double zero = std::clamp(std::nearbyint(qmin - a / scale), double(qmin), double(qmax));
    return nearest_level_error(d, qmax - qmin + 1, [&](int64_t j) { return (qmin + j - zero) * scale - lo; }) /
           d.total();
  };
  int64_t first = 0, last = bins - 1;
  while (counts[first] == 0 && first < last) ++first;
  while (counts[last] == 0 && last > first) --last;
  // Edge e is at lo + e * width; the candidate range always contains 0.
  const auto edge = [&](int64_t e) { return lo + e * width; };
  int64_t l = first, r = last + 1;
  AffineRange best{0, 0, std::numeric_limits<double>::infinity()};
  while (true) {
    const double a = std::min(edge(l), 0.0), b = std::max(edge(r), 0.0);
    const double err = error(a, b);
    if (err < best.error) best = {a, b, err};
    const bool can_raise_low = l + 1 < r && edge(l + 1) <= 0;
    const bool can_lower_high = r - 1 > l && edge(r - 1) >= 0;
    if (can_raise_low && (!can_lower_high || counts[l] <= counts[r - 1])) {
      ++l;
    } else if (can_lower_high) {
      --r;
    } else {
      break;
    }
  }
  return best;
}

}  // namespace calib
}  // namespace quantext
