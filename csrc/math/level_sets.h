// Level tables of the non-uniform schemes (powers of two, additive powers of
// two): which magnitudes exist. Host code in double precision; the kernels get
// a math::LevelTable with thresholds in their compute type (ops/level_ops.h).
#pragma once

#include <c10/util/string_view.h>

#include <cstdint>
#include <vector>

namespace quantext {

enum class LevelScheme { PoT, APoT };
enum class LevelRounding { Nearest, Log };

struct LevelSpec {
  LevelScheme scheme;
  int64_t bits;  // total bits, including the sign bit of a signed grid
  bool is_signed;
  int64_t k;  // APoT base bits per additive term
  LevelRounding rounding;

  // B: bits - 1 for a signed grid (sign + magnitude), bits otherwise.
  int64_t magnitude_bits() const { return is_signed ? bits - 1 : bits; }
};

// Validates op arguments: scheme "pot"/"apot", bits in [1, 8] ([2, 8] signed),
// k in [1, 8], rounding "nearest"/"log" ("log" is PoT only). Errors are
// ValueErrors naming `op`, the argument and its value.
LevelSpec parse_level_spec(const char* op, c10::string_view scheme, int64_t bits, bool is_signed, int64_t k,
                           c10::string_view rounding);

// APoT additive terms: for each term, the exponents e of its non-zero values
// 2^-e (each term may also contribute 0). B = n*k + r magnitude bits give n
// full terms of 2^k - 1 values and, when r > 0, one partial term of 2^r - 1
// values. Exponents 0, 1, 2, ... are dealt out in 2^k - 1 rounds, one per
// full term per round; the partial term takes the first exponent of each of
// the last 2^r - 1 rounds. With r = 0 this is P_i = {2^-(i + j*n)}; with
// k = 2 it reproduces the reference code's B = 3 and B = 5 sets, and B = 1
// gives {0, 1}. All exponents differ, so the 2^B sums are distinct.
std::vector<std::vector<int64_t>> apot_terms(int64_t magnitude_bits, int64_t k);

// The 2^B ascending magnitude levels, normalized so that the largest is 1:
// the exact values rounded once to double.
std::vector<double> magnitude_levels(const char* op, const LevelSpec& spec);

// APoT decode table: row c (a magnitude code, as in magnitude_levels) holds,
// per term, the exponent e of the power 2^-e it contributes, or -1.
std::vector<int64_t> apot_decode_rows(const char* op, const LevelSpec& spec);

}  // namespace quantext
