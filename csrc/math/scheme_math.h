// Scheme math shared by the CPU and CUDA kernels: one formula per scheme,
// written against a small "policy" of primitive operations so that the same
// template serves scalar host code, CUDA device code and ATen's Vectorized<T>.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define QTX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define QTX_HOST_DEVICE inline
#endif

namespace quantext {
namespace math {

// The exponent field of an IEEE float / double.
template <typename T>
QTX_HOST_DEVICE constexpr auto exponent_mask() {
  if constexpr (sizeof(T) == 4) {
    return uint32_t{0x7f800000u};
  } else {
    return uint64_t{0x7ff0000000000000ull};
  }
}

// Scalar policy. Comparisons are written so that NaN fails every range test:
// a NaN input stays NaN and gets a zero gradient.
template <typename T>
struct Scalar {
  using V = T;
  using Mask = bool;
  static constexpr int kMaxScanSteps = 0;  // level search: always binary
  static constexpr bool kBucketSearch = false;
  static QTX_HOST_DEVICE V splat(T v) { return v; }
  // Round half to even under the default rounding mode, as std::nearbyint.
  static QTX_HOST_DEVICE V round(V v) { return ::rint(v); }
  static QTX_HOST_DEVICE V clamp(V v, V lo, V hi) { return v < lo ? lo : (v > hi ? hi : v); }
  static QTX_HOST_DEVICE Mask lt(V a, V b) { return a < b; }
  static QTX_HOST_DEVICE Mask gt(V a, V b) { return a > b; }
  static QTX_HOST_DEVICE Mask in_range(V v, V lo, V hi) { return v >= lo && v <= hi; }
  static QTX_HOST_DEVICE Mask not_nan(V v) { return v == v; }
  static QTX_HOST_DEVICE Mask eq(V a, V b) { return a == b; }
  static QTX_HOST_DEVICE Mask either(Mask a, Mask b) { return a || b; }
  static QTX_HOST_DEVICE V select(Mask m, V a, V b) { return m ? a : b; }
  static QTX_HOST_DEVICE V abs(V v) { return v < V(0) ? -v : v; }
  // table[index] for an integral-valued index.
  static QTX_HOST_DEVICE V lookup(const T* table, V index) { return table[static_cast<int>(index)]; }
  // v with its mantissa bits cleared: 2^floor(log2 v) for normal v >= 0.
  static QTX_HOST_DEVICE V floor_pow2(V v) {
    const U bits = exponent_mask<T>();
    V mask;
    memcpy(&mask, &bits, sizeof(T));
    return and_bits(v, mask);
  }
  // The bits of v and of mask, anded.
  static QTX_HOST_DEVICE V and_bits(V v, V mask) {
    U a, b;
    memcpy(&a, &v, sizeof(T));
    memcpy(&b, &mask, sizeof(T));
    a &= b;
    memcpy(&v, &a, sizeof(T));
    return v;
  }

 private:
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
};

template <>
QTX_HOST_DEVICE float Scalar<float>::round(float v) {
  return ::rintf(v);
}

// ---------------------------------------------------------------- uniform --
// Parameters of one uniform quantizer, already in the compute type: the
// reciprocal is formed once, in the scale's own precision, as ATen does.
template <typename V>
struct UniformParams {
  V scale, inv_scale, zero_point, qmin, qmax;
};

// Unclamped integer code q = round(x / s) + z.
template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE V uniform_code(V x, const UniformParams<V>& p) {
  return P::round(x * p.inv_scale) + p.zero_point;
}

template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE V uniform_dequant(V q, const UniformParams<V>& p) {
  return (P::clamp(q, p.qmin, p.qmax) - p.zero_point) * p.scale;
}

template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE V uniform_forward(V x, const UniformParams<V>& p) {
  return uniform_dequant<P>(uniform_code<P>(x, p), p);
}

// The output and whether x lies inside the grid (its clip-mask bit).
template <typename P, typename V = typename P::V>
struct MaskedOutput {
  V y;
  typename P::Mask inside;
};

template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE MaskedOutput<P> uniform_forward_masked(V x, const UniformParams<V>& p) {
  const V q = uniform_code<P>(x, p);
  return {uniform_dequant<P>(q, p), P::in_range(q, p.qmin, p.qmax)};
}

// Clipped straight-through gradient for x, and the per-element LSQ / LSQ+
// contributions for scale and zero point (before the gradient factor).
template <typename V>
struct UniformGrads {
  V dx, dscale, dzero;
};

template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE UniformGrads<V> uniform_backward(V dy, V x, const UniformParams<V>& p) {
  const V zero = P::splat(0);
  const V q = uniform_code<P>(x, p);
  const auto inside = P::in_range(q, p.qmin, p.qmax);
  const auto below = P::lt(q, p.qmin);
  const auto above = P::gt(q, p.qmax);
  const V y = uniform_dequant<P>(q, p);
  const V ds_clipped = P::select(below, p.qmin - p.zero_point, P::select(above, p.qmax - p.zero_point, zero));
  const V ds = P::select(inside, (y - x) * p.inv_scale, ds_clipped);
  const V dz = P::select(P::either(below, above), zero - p.scale, zero);
  return {P::select(inside, dy, zero), dy * ds, dy * dz};
}

}  // namespace math
}  // namespace quantext

namespace quantext {
namespace math {

// Parameters of element group `i`, from the scale and (scale-typed) zero point
// arrays. The reciprocal is taken in the scale's precision (float32 for a
// float32 scale, as ATen's fake_quantize ops do).
template <typename acc_t, typename scale_t>
QTX_HOST_DEVICE UniformParams<acc_t> load_uniform(const scale_t* scale, const scale_t* zero_point, int64_t i,
                                                  acc_t qmin, acc_t qmax) {
  const scale_t s = scale[i];
  return {static_cast<acc_t>(s), static_cast<acc_t>(scale_t(1) / s),
          static_cast<acc_t>(Scalar<scale_t>::round(zero_point[i])), qmin, qmax};
}

}  // namespace math
}  // namespace quantext

namespace quantext {
namespace math {

// ------------------------------------------------------- uniform codes --
// Integer code clamp(round(x / s) + z, qmin, qmax). NaN has no code: it maps
// to the zero point (which decodes to 0). Decoding is uniform_dequant.
template <typename P, typename V = typename P::V>
QTX_HOST_DEVICE V uniform_quantize(V x, const UniformParams<V>& p) {
  const V q = P::clamp(uniform_code<P>(x, p), p.qmin, p.qmax);
  return P::select(P::in_range(q, p.qmin, p.qmax), q, p.zero_point);
}

// ------------------------------------------ level schemes (PoT, APoT) --
// A non-uniform grid as the kernels see it: 2^steps ascending magnitude
// levels in [0, 1] (levels[0] = 0, the last = 1) and the 2^steps - 1
// thresholds between neighbours, in the compute type. A magnitude `a` maps to
// index #{i : thresholds[i] < a}: on a threshold it takes the smaller level.
// 2^steps entries make that count a branch-free binary search of `steps`
// probes. Values are clipped to [lo, 1]: lo = -1 (signed) or 0 (unsigned).
//
// PoT grids whose non-zero levels are consecutive normal powers of two have
// one threshold per binade at the same relative place, thresholds[i] =
// levels[i] * pot_factor (i >= 1): there the level follows from the exponent
// of `a` with a few bit operations, whatever the number of levels. In the
// binade [p, 2p) of `a` that threshold is p * pot_factor and the levels on
// its two sides are p * pot_up and p * pot_down (2p and p here; other values
// in a ScaledTable). pot_factor is 0 for every other grid.
//
// `buckets` optionally points to a bucket index of the thresholds that SIMD
// policies with kBucketSearch use to find a level (cpu/level_buckets.h);
// other policies ignore it.
template <typename T>
struct LevelBuckets;

template <typename T>
struct LevelTable {
  static constexpr int kMaxSteps = 8;
  T thresholds[(1 << kMaxSteps) - 1];
  T levels[1 << kMaxSteps];
  int steps;
  T lo;
  T pot_factor, pot_up, pot_down;
  const LevelBuckets<T>* buckets;
};

// A grid with one clipping value alpha folded into its thresholds, for
// kernels where one alpha serves many elements: the search compares |x|
// itself and the forward needs no division. table.thresholds[i] is the
// largest x >= 0 whose quotient x / alpha, rounded in T, is at most the
// grid's thresholds[i], so `threshold < |x|` holds exactly when it held for
// the quotient; the closed form is rescaled alike; the levels are the grid's.
// [inside_lo, inside_hi] are the x whose quotient lies in the clip range
// [lo, 1] (cpu/scaled_table.h builds it).
// A magnitude is x with its bits anded with magnitude_mask: |x| for a
// signed grid (the sign bit cleared), x itself for an unsigned one, where
// negative x then lie below every threshold.
template <typename T>
struct ScaledTable {
  LevelTable<T> table;
  T inside_lo, inside_hi;
  T magnitude_mask;  // a bit pattern
};

// How a kernel finds the level of a magnitude. with_level_search picks it
// once per call, so the element loop has no branches on the grid and a scan
// of a known size is unrolled with its thresholds in registers.
enum class SearchKind {
  Binary,      // branch-free binary search: any grid, any policy
  Scan,        // linear scan over the thresholds (SIMD policies, small grids)
  ClosedForm,  // PoT grids with a pot_factor: level only
  Buckets,     // the table's bucket index (policies with kBucketSearch): level only
};

// kSteps: the grid's steps for an unrolled scan, 0 to read them from the table.
template <SearchKind kKind, int kSteps = 0>
struct LevelSearch {
  static constexpr SearchKind kind = kKind;
  static constexpr int steps = kSteps;
};

// Scans up to this many steps (15 thresholds) are unrolled.
constexpr int kMaxUnrolledScanSteps = 4;

// Index (as an integral value of type V) of the level nearest to a in [0, 1].
// NaN fails every comparison and gets index 0.
template <typename P, typename T, typename V = typename P::V>
QTX_HOST_DEVICE V level_index(V a, const LevelTable<T>& t) {
  V index = P::splat(T(0));
  for (int s = t.steps - 1; s >= 0; --s) {
    const T half = T(1 << s);
    const V probe = P::lookup(t.thresholds, index + P::splat(half - T(1)));
    index = P::select(P::lt(probe, a), index + P::splat(half), index);
  }
  return index;
}

// The same index, and its level, by a linear scan over the thresholds: two
// or three SIMD operations per threshold and no memory lookups, which beats
// the binary search's gathers for small grids on the CPU. NaN gets index 0.
template <typename P, int kSteps, typename T, typename V = typename P::V>
QTX_HOST_DEVICE void level_scan(V a, const LevelTable<T>& t, V& index, V& magnitude) {
  index = magnitude = P::splat(T(0));
  const int n = (1 << (kSteps > 0 ? kSteps : t.steps)) - 1;
  for (int i = 0; i < n; ++i) {
    const auto above = P::lt(P::splat(t.thresholds[i]), a);
    index = P::select(above, P::splat(T(i + 1)), index);
    magnitude = P::select(above, P::splat(t.levels[i + 1]), magnitude);
  }
}

// PoT grids with a pot_factor: in the binade [p, 2p) of a the level is
// p * pot_down, or p * pot_up above the threshold p * pot_factor; clamping to
// levels[1] covers the binades below the smallest level (and subnormal or
// zero a, whose p is 0); at or below thresholds[0] it is 0. NaN gets level 0.
template <typename P, typename T, typename V = typename P::V>
QTX_HOST_DEVICE V pot_level(V a, const LevelTable<T>& t) {
  const V p = P::floor_pow2(a);
  const V up = P::select(P::lt(p * P::splat(t.pot_factor), a), p * P::splat(t.pot_up), p * P::splat(t.pot_down));
  const V nearest = P::clamp(up, P::splat(t.levels[1]), P::splat(T(1)));
  return P::select(P::lt(P::splat(t.thresholds[0]), a), nearest, P::splat(T(0)));
}

// The level of magnitude a (in [0, 1], or |x| for a ScaledTable) and, with
// kIndex, its index (else 0), found by search S.
template <typename V>
struct LevelFound {
  V index, magnitude;
};

template <typename P, typename S, bool kIndex, typename T, typename V = typename P::V>
QTX_HOST_DEVICE LevelFound<V> find_level(V a, const LevelTable<T>& t) {
  static_assert(!kIndex || S::kind == SearchKind::Binary || S::kind == SearchKind::Scan,
                "the closed form and the bucket index give levels, not indices");
  V index = P::splat(T(0)), magnitude;
  if constexpr (S::kind == SearchKind::ClosedForm) {
    magnitude = pot_level<P>(a, t);
  } else if constexpr (S::kind == SearchKind::Buckets && P::kBucketSearch) {
    magnitude = P::bucket_level(a, *t.buckets);
  } else if constexpr (S::kind == SearchKind::Scan) {
    level_scan<P, S::steps>(a, t, index, magnitude);
  } else {
    index = level_index<P>(a, t);
    magnitude = P::lookup(t.levels, index);
  }
  return {index, magnitude};
}

// The level of a negative value is the negated magnitude; -0 and values that
// round to level 0 get +0.
template <typename P, typename T, typename V = typename P::V>
QTX_HOST_DEVICE V signed_level(V magnitude, V value) {
  const V zero = P::splat(T(0));
  return P::select(P::lt(value, zero), zero - magnitude, magnitude);
}

// v clipped to [lo, 1], its signed level and, with kIndex, its magnitude
// index (else 0), found by search S.
template <typename V>
struct LevelPoint {
  V clipped, index, level;
};

template <typename P, typename S, bool kIndex, typename T, typename V = typename P::V>
QTX_HOST_DEVICE LevelPoint<V> level_point(V v, const LevelTable<T>& t) {
  const V c = P::clamp(v, P::splat(t.lo), P::splat(T(1)));
  const auto found = find_level<P, S, kIndex>(P::abs(c), t);
  return {c, found.index, signed_level<P, T>(found.magnitude, c)};
}

// The signed level of x under a ScaledTable. The searches need no clip: x
// beyond the clip range lies above every threshold (the closed form clamps).
template <typename P, typename S, typename T, typename V = typename P::V>
QTX_HOST_DEVICE V scaled_level(V x, const ScaledTable<T>& s) {
  const V a = P::and_bits(x, P::splat(s.magnitude_mask));
  return signed_level<P, T>(find_level<P, S, false>(a, s.table).magnitude, x);
}

// Calls f(LevelSearch<...>{}) with the fastest search that policy P has for
// grid t: with kIndex one that gives indices. Host code, once per call.
template <typename P, bool kIndex, typename T, typename F>
decltype(auto) with_level_search(const LevelTable<T>& t, const F& f) {
  if constexpr (!kIndex) {
    if (t.pot_factor > T(0)) return f(LevelSearch<SearchKind::ClosedForm>{});
    if constexpr (P::kBucketSearch) {
      if (t.buckets != nullptr) return f(LevelSearch<SearchKind::Buckets>{});
    }
  }
  if constexpr (P::kMaxScanSteps > 0) {
    static_assert(kMaxUnrolledScanSteps == 4, "one case per unrolled size");
    switch (t.steps) {
      case 1:
        return f(LevelSearch<SearchKind::Scan, 1>{});
      case 2:
        return f(LevelSearch<SearchKind::Scan, 2>{});
      case 3:
        return f(LevelSearch<SearchKind::Scan, 3>{});
      case 4:
        return f(LevelSearch<SearchKind::Scan, 4>{});
      default:
        if (t.steps <= P::kMaxScanSteps) return f(LevelSearch<SearchKind::Scan>{});
    }
  }
  return f(LevelSearch<SearchKind::Binary>{});
}

// alpha * Q(clip(x / alpha)), and whether x lies inside the clip range (its
// clip-mask bit). NaN (the only value the clip leaves outside [lo, 1]) passes
// through; +-inf land on the end levels.
template <typename P, typename S, typename T, typename V = typename P::V>
QTX_HOST_DEVICE MaskedOutput<P> levels_forward_masked(V x, V alpha, const LevelTable<T>& t) {
  const V v = x / alpha;
  const auto p = level_point<P, S, false>(v, t);
  return {P::select(P::not_nan(p.clipped), p.level * alpha, p.clipped), P::eq(p.clipped, v)};
}

template <typename P, typename S, typename T, typename V = typename P::V>
QTX_HOST_DEVICE V levels_forward(V x, V alpha, const LevelTable<T>& t) {
  return levels_forward_masked<P, S>(x, alpha, t).y;
}

// The same with alpha folded into s: no division, the clip test on x itself.
template <typename P, typename S, typename T, typename V = typename P::V>
QTX_HOST_DEVICE V levels_forward(V x, V alpha, const ScaledTable<T>& s) {
  return P::select(P::not_nan(x), scaled_level<P, S>(x, s) * alpha, x);
}

template <typename P, typename S, typename T, typename V = typename P::V>
QTX_HOST_DEVICE MaskedOutput<P> levels_forward_masked(V x, V alpha, const ScaledTable<T>& s) {
  return {levels_forward<P, S>(x, alpha, s), P::in_range(x, P::splat(s.inside_lo), P::splat(s.inside_hi))};
}

// Clipped straight-through gradient for x and the per-element gradient for
// alpha (APoT's reparameterized clipping): Q(v) - v inside [lo, 1], the clip
// bound (+1 above, lo below) outside, 0 for NaN. Outside, the level is that
// bound (the top level is 1; the bottom one -1, or 0 when unsigned), and NaN
// has level 0: the term is the level less v where v is inside.
template <typename V>
struct LevelGrads {
  V dx, dalpha;
};

template <typename P, typename S, typename T, typename V = typename P::V>
QTX_HOST_DEVICE LevelGrads<V> levels_backward(V dy, V x, V alpha, const LevelTable<T>& t) {
  const V zero = P::splat(T(0));
  const V v = x / alpha;
  const auto p = level_point<P, S, false>(v, t);
  const auto inside = P::eq(p.clipped, v);  // the clip leaves v unchanged; NaN fails
  return {P::select(inside, dy, zero), dy * (p.level - P::select(inside, v, zero))};
}

// The same with alpha folded into s: the clip test compares x itself.
template <typename P, typename S, typename T, typename V = typename P::V>
QTX_HOST_DEVICE LevelGrads<V> levels_backward(V dy, V x, V alpha, const ScaledTable<T>& s) {
  const V zero = P::splat(T(0));
  const auto inside = P::in_range(x, P::splat(s.inside_lo), P::splat(s.inside_hi));
  return {P::select(inside, dy, zero), dy * (scaled_level<P, S>(x, s) - P::select(inside, x / alpha, zero))};
}

// Integer code: the magnitude index, negated for negative x (NaN -> 0).
template <typename P, typename S, typename T, typename V = typename P::V>
QTX_HOST_DEVICE V levels_quantize(V x, V alpha, const LevelTable<T>& t) {
  const auto p = level_point<P, S, true>(x / alpha, t);
  return P::select(P::lt(p.clipped, P::splat(T(0))), P::splat(T(0)) - p.index, p.index);
}

// The inverse of levels_quantize, bit-identical to levels_forward. The code
// must lie in [-(2^steps - 1), 2^steps - 1].
template <typename P, typename T, typename V = typename P::V>
QTX_HOST_DEVICE V levels_dequantize(V code, V alpha, const LevelTable<T>& t) {
  const V zero = P::splat(T(0));
  const V magnitude = P::lookup(t.levels, P::abs(code));
  return P::select(P::lt(code, zero), zero - magnitude, magnitude) * alpha;
}

}  // namespace math
}  // namespace quantext
