// Entropy (KL-divergence) calibration on a histogram of |x| over [0, bins * width].
#pragma once

#include <cstdint>

#include "calib/search.h"

namespace quantext {
namespace calib {

enum class KlVariant {
  // TensorRT (Migacz, GTC 2017): candidates i = max(start_bin, levels) .. bins-1
  // bins; P = the first i bins with the tail folded into bin i-1; Q = the
  // first i bins before folding, merged into `levels` groups of i / levels
  // bins (the last group takes the remainder) and spread evenly over the bins
  // of each group where P is non-empty (MXNet's reading of the slides);
  // threshold = (i + 0.5) * width for the i with the least KL(P || Q).
  // Q is built before folding as the slides say: built from P it would equal
  // P at i = levels, a lossless candidate that would always win.
  TensorRT,
  // PPQ: the lowest int(0.002 * bins) bins zeroed and the next one set to 1;
  // candidates i = levels, 2 * levels, ... <= bins; Q built from the bins
  // before folding; KL with eps = 1e-30; threshold = i * width.
  PPQ,
};

// `levels` is the number of quantized magnitudes (2^(bits-1) for a signed
// grid). curve has bins + 1 entries: KL for i bins, +inf where i is not a
// candidate (or where tail mass meets an empty group of Q). Ties go to the
// smallest i; if every candidate diverges the clip is the whole range
// bins * width. The histogram must have positive mass and a candidate.
SearchResult entropy_threshold(const double* counts, int64_t bins, double width, int64_t levels, int64_t start_bin,
                               KlVariant variant);

// First candidate bin count of the TensorRT variant.
inline int64_t kl_first_candidate(int64_t levels, int64_t start_bin) { return start_bin > levels ? start_bin : levels; }

}  // namespace calib
}  // namespace quantext
