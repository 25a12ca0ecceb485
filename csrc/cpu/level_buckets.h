// A bucket index over a level grid's thresholds for the CPU's SIMD level
// lookup: one or two gathers per vector whatever the number of levels, where
// the linear scan costs one compare and blend per threshold. It gives the
// level, not its index (the integer-code kernels search).
//
// The bits of a non-negative float grow with its value, so their top bits
// (exponent and the first m mantissa bits) cut [0, 1] into buckets of equal
// width within each binade. With m chosen so that no bucket holds two
// different thresholds, the count of thresholds below `a` is the count below
// a's bucket, plus the bucket's own thresholds when `a` lies above them: one
// comparison. Bucket 0 takes everything below the smallest positive
// threshold's bucket (where only thresholds equal to 0 can lie).
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <c10/util/bit_cast.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "math/scheme_math.h"

namespace quantext {
namespace math {

// Each bucket is also cut into up to 8 fine buckets, which the lookup
// indexes: a fine bucket's bucket is its index >> fine_bits. Most fine buckets
// hold no threshold, so one level serves all their values: `fine` holds it,
// or -1 where the fine bucket holds its bucket's threshold. A vector whose
// lanes all fall into such pure fine buckets needs one gather instead of two.
template <typename T>
struct LevelBuckets {
  int fine_shift;            // fine bucket = clamp((float bits >> fine_shift) - fine_offset, 0, fine.size() - 1)
  int32_t fine_offset;       // the fine key of bucket 0's first fine bucket
  int fine_bits;             // fine buckets per bucket: 2^fine_bits
  std::vector<T> fine;       // per fine bucket: its level, or -1
  std::vector<T> threshold;  // per bucket: its threshold, or 2 (above every a in [0, 1])
  std::vector<T> level;      // per bucket b: [2b] the level at or below its threshold, [2b + 1] above
};

}  // namespace math

namespace cpu {

// Up to 16 levels the scan is faster than the two gathers (AVX2, AMD EPYC,
// 1e6 float32 forward: 0.73 vs 1.16 ms); 8-bit signed APoT needs 5567
// buckets (110 KiB of tables), unsigned 8-bit grids more, which fall back to
// the binary search.
constexpr int kMinBucketSteps = 5;
// Fine buckets per bucket: 2^kFineBits (8-bit signed APoT: 44536 floats, 174 KiB).
constexpr int kFineBits = 3;
constexpr int32_t kMaxBuckets = 8192;

// The buckets of a float32 grid, or false when the grid is small, has a
// closed form, or needs more than kMaxBuckets buckets.
inline bool build_level_buckets(const math::LevelTable<float>& t, math::LevelBuckets<float>& out) {
  const int n = (1 << t.steps) - 1;  // thresholds
  if (t.steps < kMinBucketSteps || t.pot_factor > 0) return false;
  int first = 0;
  while (first < n && !(t.thresholds[first] > 0)) ++first;  // thresholds[first..] are positive
  const auto bits = [](float v) { return static_cast<int32_t>(c10::bit_cast<uint32_t>(v)); };
  for (int m = 0; m <= 23; ++m) {
    const int shift = 23 - m;
    const int32_t lo_key = first < n ? bits(t.thresholds[first]) >> shift : bits(1.0f) >> shift;
    const int32_t count = (bits(1.0f) >> shift) - lo_key + 2;
    if (count > kMaxBuckets) return false;
    bool separated = true;
    for (int i = first + 1; i < n && separated; ++i) {
      separated = (bits(t.thresholds[i]) >> shift) != (bits(t.thresholds[i - 1]) >> shift) ||
                  t.thresholds[i] == t.thresholds[i - 1];
    }
    if (!separated) continue;
    const int32_t key_offset = lo_key - 1;  // bucket = clamp((bits >> shift) - key_offset, 0, count - 1)
    out.threshold.assign(count, 2.0f);
    out.level.assign(2 * count, 0.0f);
    int below = 0;  // thresholds in the buckets before b
    for (int32_t b = 0; b < count; ++b) {
      int above = below;
      while (above < n &&
             (b == 0 ? !(t.thresholds[above] > 0) : (bits(t.thresholds[above]) >> shift) - key_offset == b)) {
        ++above;
      }
      if (above > below) out.threshold[b] = t.thresholds[below];
      out.level[2 * b] = t.levels[below];
      out.level[2 * b + 1] = t.levels[above];
      below = above;
    }
    // Fine bucket f spans the floats with fine key f + fine_offset (f = 0 also
    // everything below, down to 0): pure when its bucket's threshold lies at
    // or above its largest float, or below its smallest.
    out.fine_bits = std::min(kFineBits, shift);
    out.fine_shift = shift - out.fine_bits;
    out.fine_offset = key_offset * (1 << out.fine_bits);
    out.fine.assign(static_cast<size_t>(count) << out.fine_bits, -1.0f);
    for (int32_t f = 0; f < static_cast<int32_t>(out.fine.size()); ++f) {
      const int32_t b = f >> out.fine_bits;
      const uint32_t key = static_cast<uint32_t>(f + out.fine_offset);
      const float lo = f == 0 ? 0.0f : c10::bit_cast<float>(key << out.fine_shift);
      const float hi = c10::bit_cast<float>(((key + 1) << out.fine_shift) - 1);
      if (out.threshold[b] >= hi) out.fine[f] = out.level[2 * b];
      if (out.threshold[b] < lo) out.fine[f] = out.level[2 * b + 1];
    }
    return true;
  }
  return false;
}

// A LevelTable with its buckets where they pay off; pinned in place because
// the table points into it.
template <typename T>
struct CpuLevelTable {
  math::LevelTable<T> table;
  math::LevelBuckets<T> buckets;

  explicit CpuLevelTable(const math::LevelTable<T>& t) : table(t) {
    if constexpr (std::is_same_v<T, float>) {
      if (build_level_buckets(table, buckets)) table.buckets = &buckets;
    }
  }
  CpuLevelTable(const CpuLevelTable&) = delete;
  CpuLevelTable& operator=(const CpuLevelTable&) = delete;
};

}  // namespace cpu
}  // namespace quantext
