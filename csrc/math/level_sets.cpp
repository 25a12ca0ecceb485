#include "math/level_sets.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace quantext {
namespace {

// Each grid value is a sum of at most one power of two per term. PoT is the
// one-term case with exponents 0 .. 2^B - 2.
std::vector<std::vector<int64_t>> grid_terms(const LevelSpec& spec) {
  const int64_t b = spec.magnitude_bits();
  if (spec.scheme == LevelScheme::APoT) return apot_terms(b, spec.k);
  std::vector<int64_t> exponents((int64_t{1} << b) - 1);
  std::iota(exponents.begin(), exponents.end(), int64_t{0});
  return {exponents};
}

// One grid value: its un-normalized sum and the exponent per term (-1: none).
struct Combination {
  double sum;
  std::vector<int64_t> exponents;
};

// Every combination of one value per term, ascending by sum. Sums are exact:
// single powers (one term), or powers no smaller than 2^-50 (checked).
std::vector<Combination> combinations(const char* op, const LevelSpec& spec) {
  const auto terms = grid_terms(spec);
  int64_t smallest = 0;
  for (const auto& t : terms) smallest = std::max(smallest, t.back());
  TORCH_CHECK_VALUE(terms.size() == 1 || smallest <= 50, op, ": k=", spec.k, " with ", spec.magnitude_bits(),
                    " magnitude bits needs additive terms down to 2^-", smallest,
                    ", whose sums double precision cannot hold exactly; use k <= 5");
  std::vector<Combination> out;
  std::vector<size_t> digit(terms.size(), 0);  // 0: term absent, d: terms[i][d - 1]
  while (true) {
    Combination c{0.0, std::vector<int64_t>(terms.size(), -1)};
    for (size_t i = 0; i < terms.size(); ++i) {
      if (digit[i] == 0) continue;
      c.exponents[i] = terms[i][digit[i] - 1];
      c.sum += std::ldexp(1.0, -static_cast<int>(c.exponents[i]));
    }
    out.push_back(std::move(c));
    size_t i = 0;
    while (i < terms.size() && ++digit[i] > terms[i].size()) digit[i++] = 0;
    if (i == terms.size()) break;
  }
  std::sort(out.begin(), out.end(), [](const Combination& a, const Combination& b) { return a.sum < b.sum; });
  // Distinct exponents make distinct sums: 2^B levels, none repeated.
  const bool distinct = std::adjacent_find(out.begin(), out.end(),
                                           [](const auto& a, const auto& b) { return a.sum == b.sum; }) == out.end();
  TORCH_INTERNAL_ASSERT(distinct && out.size() == (size_t{1} << spec.magnitude_bits()));
  return out;
}

}  // namespace

LevelSpec parse_level_spec(const char* op, c10::string_view scheme, int64_t bits, bool is_signed, int64_t k,
                           c10::string_view rounding) {
  LevelSpec spec{LevelScheme::PoT, bits, is_signed, k, LevelRounding::Nearest};
  if (scheme == "apot") {
    spec.scheme = LevelScheme::APoT;
  } else {
    TORCH_CHECK_VALUE(scheme == "pot", op, ": scheme must be 'pot' or 'apot', got '", scheme, "'");
  }
  const int64_t min_bits = is_signed ? 2 : 1;
  TORCH_CHECK_VALUE(bits >= min_bits && bits <= 8, op, ": bits must be in [", min_bits, ", 8] for ",
                    is_signed ? "a signed" : "an unsigned", " grid, got ", bits);
  TORCH_CHECK_VALUE(k >= 1 && k <= 8, op, ": k must be in [1, 8], got ", k);
  if (rounding == "log") {
    TORCH_CHECK_VALUE(spec.scheme == LevelScheme::PoT, op, ": rounding='log' is only defined for scheme 'pot', got '",
                      scheme, "'");
    spec.rounding = LevelRounding::Log;
  } else {
    TORCH_CHECK_VALUE(rounding == "nearest", op, ": rounding must be 'nearest' or 'log', got '", rounding, "'");
  }
  return spec;
}

std::vector<std::vector<int64_t>> apot_terms(int64_t magnitude_bits, int64_t k) {
  const int64_t n = magnitude_bits / k, r = magnitude_bits % k;
  const int64_t rounds = (int64_t{1} << k) - 1, partial = (int64_t{1} << r) - 1;
  std::vector<std::vector<int64_t>> terms(n + (r > 0 ? 1 : 0));
  int64_t e = 0;
  for (int64_t j = 0; j < rounds; ++j) {
    if (j >= rounds - partial) terms[n].push_back(e++);
    for (int64_t i = 0; i < n; ++i) terms[i].push_back(e++);
  }
  return terms;
}

std::vector<double> magnitude_levels(const char* op, const LevelSpec& spec) {
  const auto combos = combinations(op, spec);
  std::vector<double> levels;
  for (const auto& c : combos) levels.push_back(c.sum / combos.back().sum);
  return levels;
}

std::vector<int64_t> apot_decode_rows(const char* op, const LevelSpec& spec) {
  std::vector<int64_t> rows;
  for (const auto& c : combinations(op, spec)) rows.insert(rows.end(), c.exponents.begin(), c.exponents.end());
  return rows;
}

}  // namespace quantext
