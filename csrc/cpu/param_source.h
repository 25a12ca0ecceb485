// Where the loops of cpu/vec_loops.h take each element's parameters from,
// and where they add its parameter-gradient terms. The loops call next<P>()
// once per vector (or scalar) in element order, and in reductions add<P>()
// right after it with that vector's terms.
//
// SplatParams: one parameter set for the whole run (a run per channel, per
// group or a per-tensor chunk). CycledParams: the Interleaved layout
// (math/layout.h), parameters that repeat with a period of channels * inner
// elements, loaded lane-wise from one period laid out in full.
//
// Terms are summed in double, one accumulator per lane or per position, so a
// sum does not depend on how the run was cut into vectors: the same values in
// another memory layout give the same sums but for double rounding.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/runs.h"
#include "cpu/vec_policy.h"
#include "math/layout.h"
#include "math/scheme_math.h"

namespace quantext {
namespace cpu {

// Adds the lanes of the K terms `t` (vectors of policy P, or scalars) to
// acc[k][offset + lane] in double.
template <typename P, size_t K, typename V>
void add_lanes(const std::array<V, K>& t, std::array<double*, K> acc, int64_t offset) {
  if constexpr (std::is_arithmetic_v<V>) {
    for (size_t k = 0; k < K; ++k) acc[k][offset] += t[k];
  } else {
    // Lane by lane in double vectors: each accumulator takes the same additions in the same order.
    using T = typename V::value_type;
    using D = at::vec::Vectorized<double>;
    static_assert(V::size() % D::size() == 0, "a vector of terms fills whole double vectors");
    for (size_t k = 0; k < K; ++k) {
      T lanes[V::size()];
      double wide[V::size()];
      t[k].store(lanes);
      at::vec::convert(lanes, wide, V::size());
      for (int64_t j = 0; j < V::size(); j += D::size()) {
        (D::loadu(acc[k] + offset + j) + D::loadu(wide + j)).store(acc[k] + offset + j);
      }
    }
  }
}

// K parameter values of type T for a whole run; sums of S gradient terms.
template <typename T, size_t K, size_t S = 0>
class SplatParams {
 public:
  static constexpr int64_t kLanes = at::vec::Vectorized<T>::size();

  explicit SplatParams(const std::array<T, K>& values) : values_(values) {}

  template <typename P>
  std::array<typename P::V, K> next() const {
    std::array<typename P::V, K> out;
    for (size_t k = 0; k < K; ++k) out[k] = P::splat(values_[k]);
    return out;
  }

  template <typename P, typename V>
  void add(const std::array<V, S>& t) {
    std::array<double*, S> acc;
    for (size_t k = 0; k < S; ++k) acc[k] = lanes_[k].data();
    add_lanes<P>(t, acc, 0);
  }

  // Stores the run's sum of term k as partials[k * row + item].
  void store_sums(double* partials, int64_t row, int64_t item) const {
    for (size_t k = 0; k < S; ++k) {
      double s = 0;
      for (const double v : lanes_[k]) s += v;
      partials[k * row + item] = s;
    }
  }

 private:
  std::array<T, K> values_;
  std::array<std::array<double, kLanes>, S> lanes_{};
};

// One period of K parameters of an Interleaved layout laid out in full (with
// a vector's worth more, so that a vector loads across the period's end):
// position j holds the parameters of channel j / inner % channels.
template <typename T, size_t K>
class ParamPeriod {
 public:
  static constexpr int64_t kLanes = at::vec::Vectorized<T>::size();

  // param(k, c): parameter k of channel c.
  template <typename F>
  ParamPeriod(const RunLayout& layout, const F& param) : layout_(layout), period_(layout.period()) {
    for (size_t k = 0; k < K; ++k) {
      values_[k].resize(period_ + kLanes);
      for (int64_t j = 0; j < period_ + kLanes; ++j) values_[k][j] = param(k, j / layout.inner % layout.channels);
    }
  }

  const RunLayout& layout() const { return layout_; }
  int64_t period() const { return period_; }
  const T* values(size_t k) const { return values_[k].data(); }

 private:
  RunLayout layout_;
  int64_t period_;
  std::array<std::vector<T>, K> values_;
};

// A cursor over a ParamPeriod for one item (which starts a period), with
// sums of S gradient terms per position.
template <typename T, size_t K, size_t S = 0>
class CycledParams {
 public:
  explicit CycledParams(const ParamPeriod<T, K>& period) : period_(&period) {
    for (size_t k = 0; k < S; ++k) sums_[k].assign(period.period() + ParamPeriod<T, K>::kLanes, 0.0);
  }

  template <typename P>
  std::array<typename P::V, K> next() {
    std::array<typename P::V, K> out;
    for (size_t k = 0; k < K; ++k) out[k] = load<P>(period_->values(k) + position_);
    last_ = position_;
    position_ += lanes_of<P>();
    while (position_ >= period_->period()) position_ -= period_->period();
    return out;
  }

  template <typename P, typename V>
  void add(const std::array<V, S>& t) {
    std::array<double*, S> acc;
    for (size_t k = 0; k < S; ++k) acc[k] = sums_[k].data();
    add_lanes<P>(t, acc, last_);
  }

  // Stores the item's sum of term k for channel c as partials[k * row + item * channels + c].
  void store_sums(double* partials, int64_t row, int64_t item) {
    const RunLayout& layout = period_->layout();
    const int64_t n = period_->period();
    for (size_t k = 0; k < S; ++k) {
      auto& s = sums_[k];
      for (int64_t j = n; j < static_cast<int64_t>(s.size()); ++j) s[j % n] += s[j];
      double* out = partials + k * row + item * layout.channels;
      for (int64_t c = 0; c < layout.channels; ++c) out[c] = 0;
      for (int64_t j = 0; j < n; ++j) out[j / layout.inner] += s[j];
    }
  }

 private:
  const ParamPeriod<T, K>* period_;  // a pointer: sources are assignable (cpu/vec_loops.h's with_cursor)
  int64_t position_ = 0, last_ = 0;
  std::array<std::vector<double>, S> sums_;
};

// fn(item, begin, length, src) for every item, in parallel: src the item's
// parameter source with S gradient sums, params(i) -> std::array<T, K> the
// values of parameter i.
template <typename T, size_t K, size_t S, typename Params, typename Fn>
void for_each_source(const RunLayout& layout, const Params& params, const Fn& fn) {
  if (layout.kind == Granularity::Interleaved) {
    const ParamPeriod<T, K> period(layout, [&](size_t k, int64_t c) { return params(c)[k]; });
    for_each_item(layout, [&](int64_t item, int64_t begin, int64_t len) {
      CycledParams<T, K, S> src(period);
      fn(item, begin, len, src);
    });
  } else {
    for_each_item(layout, [&](int64_t item, int64_t begin, int64_t len) {
      SplatParams<T, K, S> src(params(layout.param_of_item(item)));
      fn(item, begin, len, src);
    });
  }
}

}  // namespace cpu
}  // namespace quantext
