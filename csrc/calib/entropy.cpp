// KL calibration. The TensorRT variant is evaluated in closed form. P (the
// first i bins, tail T folded into bin i-1) is normalized by the total N; Q
// (the same i bins before folding, mass M = N - T, merged into groups and
// spread over the bins where P is non-empty) by M. With S_g the unfolded
// mass and n_g the non-empty bins of group g (the last group's P mass being
// S_last + T):
//   KL(P||Q) = (sum_j P_j ln P_j - sum_g P(g) ln(S_g / n_g)) / N + ln(M / N).
// For every i in [levels * k, levels * (k + 1)) the groups are k bins wide and
// only the last group depends on i, so prefix sums and O(levels) logs per
// group width replace the O(i) work per candidate of the published loops.
#include "calib/entropy.h"

#include <cmath>
#include <limits>

namespace quantext {
namespace calib {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

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
    const double tail = total - mass[i];
    const double p_last = h[i - 1] + tail;
    const double s_last = mass[i] - mass[last];
    const double n_last = nonempty[i - 1] - nonempty[last] + (p_last > 0 ? 1 : 0);
    double kl = kInf;  // tail mass where Q has none (the last group is empty before folding)
    if (s_last > 0 || tail == 0) {
      const double last_term = s_last > 0 ? (s_last + tail) * std::log(s_last / n_last) : 0.0;
      kl = (plogp[i - 1] + xlogx(p_last) - fixed - last_term) / total + std::log(mass[i] / total);
    }
    r.curve[i] = kl;
    if (kl < best) {
      best = kl;
      best_i = i;
    }
  }
  // Every candidate infinite (tail mass beyond empty bins): keep the whole range.
  r.clip = best_i < 0 ? bins * width : (best_i + 0.5) * width;
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
