// KL calibration. The TensorRT variant is evaluated in closed form: with P and
// Q both normalized by the total count N (folding the tail keeps P's mass at
// N, and each group of Q keeps its mass),
//   N * KL(P||Q) = sum_j P_j ln P_j - sum_g S_g ln(S_g / n_g)
// where S_g is the mass and n_g the number of non-empty bins of group g. For
// every i in [levels * k, levels * (k + 1)) the groups are k bins wide and only
// the last group depends on i, so one pass of prefix sums and O(levels) logs
// per group width replace the O(i) work per candidate of the published loops.
#include "calib/entropy.h"

#include <cmath>
#include <limits>

namespace quantext {
namespace calib {
namespace {

double xlogx(double x) { return x > 0 ? x * std::log(x) : 0.0; }
// S ln(S / n) of a group with mass S over n non-empty bins (0 when empty).
double group_term(double mass, double nonempty) { return mass > 0 ? mass * std::log(mass / nonempty) : 0.0; }

SearchResult tensorrt(const double* h, int64_t bins, double width, int64_t levels, int64_t start_bin) {
  std::vector<double> mass(bins + 1, 0.0), nonempty(bins + 1, 0.0), plogp(bins + 1, 0.0);
  for (int64_t j = 0; j < bins; ++j) {
    mass[j + 1] = mass[j] + h[j];
    nonempty[j + 1] = nonempty[j] + (h[j] > 0 ? 1 : 0);
    plogp[j + 1] = plogp[j] + xlogx(h[j]);
  }
  const double total = mass[bins];
  SearchResult r{0, std::vector<double>(bins + 1, std::numeric_limits<double>::infinity())};
  double best = std::numeric_limits<double>::infinity();
  int64_t best_i = -1, width_k = -1;
  double fixed = 0;  // sum over the first levels - 1 groups, which depend only on k
  for (int64_t i = kl_first_candidate(levels, start_bin); i < bins; ++i) {
    const int64_t k = i / levels;
    if (k != width_k) {
      width_k = k;
      fixed = 0;
      for (int64_t g = 0; g + 1 < levels; ++g) {
        fixed += group_term(mass[(g + 1) * k] - mass[g * k], nonempty[(g + 1) * k] - nonempty[g * k]);
      }
    }
    const int64_t last = (levels - 1) * k;
    const double p_last = h[i - 1] + (total - mass[i]);
    const double n_last = nonempty[i - 1] - nonempty[last] + (p_last > 0 ? 1 : 0);
    const double kl = (plogp[i - 1] + xlogx(p_last) - fixed - group_term(total - mass[last], n_last)) / total;
    r.curve[i] = kl;
    if (kl < best) {
      best = kl;
      best_i = i;
    }
  }
  r.clip = (best_i + 0.5) * width;
  return r;
}

SearchResult ppq(const double* counts, int64_t bins, double width, int64_t levels) {
  std::vector<double> h(counts, counts + bins);
  const int64_t zeroed = static_cast<int64_t>(bins * 0.002);
  std::fill(h.begin(), h.begin() + zeroed, 0.0);
  if (zeroed < bins) h[zeroed] = 1;
  double total = 0;
  for (double c : h) total += c;
  constexpr double kEps = 1e-30;
  SearchResult r{0, std::vector<double>(bins + 1, std::numeric_limits<double>::infinity())};
  double best = std::numeric_limits<double>::infinity();
  int64_t best_i = -1;
  std::vector<double> q;
  for (int64_t i = levels; i <= bins; i += levels) {
    const int64_t ratio = i / levels;
    q.assign(i, 0.0);
    double q_total = 0;
    for (int64_t g = 0; g < levels; ++g) {
      double s = 0, n = 0;
      for (int64_t j = g * ratio; j < (g + 1) * ratio; ++j) {
        s += h[j];
        n += h[j] > 0 ? 1 : 0;
      }
      for (int64_t j = g * ratio; j < (g + 1) * ratio; ++j) q[j] = h[j] > 0 ? s / std::max(n, 1.0) : 0.0;
      q_total += s;
    }
    double tail = 0;
    for (int64_t j = i; j < bins; ++j) tail += h[j];
    double kl = 0;
    for (int64_t j = 0; j < i; ++j) {
      const double p = (h[j] + (j == i - 1 ? tail : 0.0)) / total;
      const double qj = q_total > 0 ? q[j] / q_total : 0.0;
      kl += p * std::log((p + kEps) / (qj + kEps));
    }
    r.curve[i] = kl;
    if (kl < best) {
      best = kl;
      best_i = i;
    }
  }
  r.clip = best_i * width;
  return r;
}

}  // namespace

SearchResult entropy_threshold(const double* counts, int64_t bins, double width, int64_t levels, int64_t start_bin,
                               KlVariant variant) {
  return variant == KlVariant::TensorRT ? tensorrt(counts, bins, width, levels, start_bin)
                                        : ppq(counts, bins, width, levels);
}

}  // namespace calib
}  // namespace quantext
