// Loops over one run of elements with a scheme formula, SIMD-wide (ATen
// Vectorized) with a scalar tail. float16/bfloat16 runs are converted to float
// in blocks that stay in L1 and go through the float loop. Formulas are
// template lambdas called with the math policy, f.template operator()<P>(...),
// and the parameters of the vector from the run's parameter source
// (cpu/param_source.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/functional.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cpu/param_source.h"
#include "cpu/vec_policy.h"
#include "math/clip_mask.h"

namespace quantext {
namespace cpu {

constexpr int64_t kConvertBlock = 512;

// A tensor's data, read once before a kernel's items: per item (a group of 32
// elements) the checked accessors of at::Tensor cost twice the item's own work
// (measured on the uniform op per group).
class RawData {
 public:
  static RawData in(const at::Tensor& t) { return RawData(const_cast<void*>(t.const_data_ptr())); }
  static RawData out(at::Tensor& t) { return RawData(t.mutable_data_ptr()); }
  template <typename T>
  T* at(int64_t i) const {
    return static_cast<T*>(p_) + i;
  }

 private:
  explicit RawData(void* p) : p_(p) {}
  void* p_;
};

// body(cursor) with the parameter source moved into a local and back: a loop
// through the caller's reference would reload the source's position and
// pointers from memory after every store (they might alias the output), a
// local is kept in registers. (Measured: 3x on innermost-axis runs.)
template <typename Src, typename Body>
C10_ALWAYS_INLINE void with_cursor(Src& src, const Body& body) {
  Src cursor(std::move(src));
  body(cursor);
  src = std::move(cursor);
}

// y[i] = f(x[i], params). The outputs alias nothing else, which lets the
// compiler keep the formula's constants (level tables) in registers across the
// stores. An output of another type (integer codes) is converted from acc_t
// in blocks, like a float16 input.
template <typename acc_t, typename in_t, typename out_t, typename Src, typename F>
void map_run(const in_t* __restrict__ x, out_t* __restrict__ y, int64_t n, Src& src, const F& f) {
  if constexpr (!std::is_same_v<in_t, acc_t> || !std::is_same_v<out_t, acc_t>) {
    acc_t xb[kConvertBlock], yb[kConvertBlock];
    for (int64_t i = 0; i < n; i += kConvertBlock) {
      const int64_t m = std::min(kConvertBlock, n - i);
      const acc_t* xi = xb;
      if constexpr (std::is_same_v<in_t, acc_t>) {
        xi = x + i;
      } else {
        at::vec::convert(x + i, xb, m);
      }
      map_run<acc_t>(xi, yb, m, src, f);
      at::vec::convert(yb, y + i, m);
    }
  } else {
    with_cursor(src, [&](Src& cursor) {
      for_lanes<acc_t>(n, [&]<typename P>(int64_t i) {
        store<P>(f.template operator()<P>(load<P>(x + i), cursor.template next<P>()), y + i);
      });
    });
  }
}

// Writes the clip-mask bits (math/clip_mask.h) of the run of elements
// [first, first + n), in order. Words the run covers whole are stored; the
// partial words at its ends are OR-ed in atomically, since the neighbouring
// run may be another thread's: the mask must start zeroed.
class MaskWriter {
 public:
  MaskWriter(uint32_t* words, int64_t first, int64_t n) : words_(words), next_(first), first_(first), end_(first + n) {}
  MaskWriter(const MaskWriter&) = delete;
  MaskWriter& operator=(const MaskWriter&) = delete;
  ~MaskWriter() {
    if (next_ % math::kMaskWordBits != 0) store((next_ - 1) / math::kMaskWordBits, static_cast<uint32_t>(pending_));
  }

  // The bits of the next `count` (at most 32) elements, element j in bit j.
  void put(uint32_t bits, int count) {
    const int shift = static_cast<int>(next_ % math::kMaskWordBits);
    const int64_t word = next_ / math::kMaskWordBits;
    pending_ |= uint64_t{bits} << shift;
    next_ += count;
    if (shift + count >= math::kMaskWordBits) {
      store(word, static_cast<uint32_t>(pending_));
      pending_ >>= math::kMaskWordBits;
    }
  }

 private:
  void store(int64_t word, uint32_t v) {
    const int64_t lo = word * math::kMaskWordBits;
    if (lo >= first_ && lo + math::kMaskWordBits <= end_) {
      words_[word] = v;
    } else {
      std::atomic_ref<uint32_t>(words_[word]).fetch_or(v, std::memory_order_relaxed);
    }
  }

  uint32_t* words_;
  int64_t next_, first_, end_;
  uint64_t pending_ = 0;
};

// y[i] = f(x[i], params).y, and the mask bit of element i from its .inside.
template <typename acc_t, typename scalar_t, typename Src, typename F>
void map_run_masked(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, MaskWriter& mask, Src& src,
                    const F& f) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    acc_t xb[kConvertBlock], yb[kConvertBlock];
    for (int64_t i = 0; i < n; i += kConvertBlock) {
      const int64_t m = std::min(kConvertBlock, n - i);
      at::vec::convert(x + i, xb, m);
      map_run_masked<acc_t>(xb, yb, m, mask, src, f);
      at::vec::convert(yb, y + i, m);
    }
  } else {
    with_cursor(src, [&](Src& cursor) {
      for_lanes<acc_t>(n, [&]<typename P>(int64_t i) {
        const auto r = f.template operator()<P>(load<P>(x + i), cursor.template next<P>());
        store<P>(r.y, y + i);
        mask.put(lane_bits<P>(r.inside), lanes_of<P>());
      });
    });
  }
}

// dx[i] = g(dy[i], x[i], params).first and, with kSum, its .second (an
// std::array: the parameters' gradient terms) added to the source's sums.
template <bool kSum, typename acc_t, typename scalar_t, typename Src, typename G>
void grad_run(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x, scalar_t* __restrict__ dx, int64_t n,
              Src& src, const G& g) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    acc_t dyb[kConvertBlock], xb[kConvertBlock], dxb[kConvertBlock];
    for (int64_t i = 0; i < n; i += kConvertBlock) {
      const int64_t m = std::min(kConvertBlock, n - i);
      at::vec::convert(dy + i, dyb, m);
      at::vec::convert(x + i, xb, m);
      grad_run<kSum, acc_t>(dyb, xb, dxb, m, src, g);
      at::vec::convert(dxb, dx + i, m);
    }
  } else {
    with_cursor(src, [&](Src& cursor) {
      for_lanes<acc_t>(n, [&]<typename P>(int64_t i) {
        const auto [d, terms] = g.template operator()<P>(load<P>(dy + i), load<P>(x + i), cursor.template next<P>());
        store<P>(d, dx + i);
        if constexpr (kSum) cursor.template add<P>(terms);
      });
    });
  }
}

// The tensors of a backward kernel (cpu/param_source.h: partials [items, sums]).
struct GradData {
  GradData(const at::Tensor& dy_, const at::Tensor& x_, at::Tensor& dx_, at::Tensor& partials)
      : dy(RawData::in(dy_)),
        x(RawData::in(x_)),
        dx(RawData::out(dx_)),
        sums(partials.numel() ? partials.mutable_data_ptr<double>() : nullptr),
        sums_per_item(partials.dim() > 1 ? partials.size(1) : 0) {}
  RawData dy, x, dx;
  double* sums;
  int64_t sums_per_item;
};

// grad_run over the item [begin, begin + len) of the canonical dy, x and dx;
// with kSum its sums go to the item's partials (cpu/param_source.h).
template <bool kSum, typename acc_t, typename scalar_t, typename Src, typename G>
void grad_item(const GradData& d, int64_t item, int64_t begin, int64_t len, Src& src, const G& g) {
  grad_run<kSum, acc_t>(d.dy.at<const scalar_t>(begin), d.x.at<const scalar_t>(begin), d.dx.at<scalar_t>(begin), len,
                        src, g);
  if constexpr (kSum) src.store_sums(d.sums, d.sums_per_item, item);
}

}  // namespace cpu
}  // namespace quantext
