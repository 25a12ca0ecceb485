// Level-scheme (PoT / APoT) ops: argument preparation, the compute-type
// level tables (one cache for every backend) and the kernels each backend
// registers.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>

#include "math/level_sets.h"
#include "math/scheme_math.h"
#include "ops/canonical.h"
#include "ops/dispatch.h"
#include "ops/kernel_stub.h"

namespace quantext {

struct LevelArgs {
  Canonical c;
  at::Tensor alpha;  // flattened in parameter order, float32 or float64
  LevelSpec spec;
  const char* op;  // for errors
};

// Checks the scheme arguments, alpha (dtype, device, shape, values) and lays
// out x, or with `codes` an integer code tensor (whose values it checks too).
LevelArgs prepare_levels(const char* op, const at::Tensor& x, const at::Tensor& alpha, c10::string_view scheme,
                         int64_t bits, bool is_signed, int64_t k, c10::string_view rounding,
                         std::optional<int64_t> axis, bool codes = false);

// Kernels of the level ops. Non-empty inputs, canonical layout; the backward
// returns the per-item alpha-gradient partials [1, items] with alpha_grad.
using LevelForwardKernel = void (*)(const LevelArgs& a, at::Tensor& y);
using LevelBackwardKernel = at::Tensor (*)(const LevelArgs& a, const at::Tensor& dy, at::Tensor& dx, bool alpha_grad);
// The same with the clip mask (math/clip_mask.h; zeroed words) written too.
using LevelMaskedKernel = void (*)(const LevelArgs& a, at::Tensor& y, at::Tensor& mask);
extern KernelStub<LevelForwardKernel> level_forward_kernel;
extern KernelStub<LevelMaskedKernel> level_masked_kernel;
extern KernelStub<LevelBackwardKernel> level_backward_kernel;

// The key of a grid: what its level table depends on.
using GridKey = std::tuple<LevelScheme, int64_t, bool, int64_t, LevelRounding>;
inline GridKey grid_key(const LevelSpec& s) { return {s.scheme, s.bits, s.is_signed, s.k, s.rounding}; }

// The Table of a grid, made by `make()` (a std::unique_ptr<const Table>) on
// first use and kept for the process: there are a few hundred grids at most,
// and building a table costs more than quantizing a small tensor with it.
template <typename Table, typename Make>
const Table& cached_per_grid(const LevelSpec& spec, const Make& make) {
  static std::mutex mutex;
  static std::map<GridKey, std::unique_ptr<const Table>> tables;
  const std::lock_guard<std::mutex> lock(mutex);
  auto& table = tables[grid_key(spec)];
  if (!table) table = make();
  return *table;
}

// The grid in compute type T (float or double), for every backend: its levels
// as T, and thresholds such that for every value a of type T `threshold < a`
// holds exactly when a lies above the switching point: the midpoint of the two
// T levels (nearest; so the result is the nearest representable level, a tie
// going to the smaller), or for log rounding the geometric midpoint
// l[i+1] / sqrt(2).
template <typename T>
const math::LevelTable<T>& level_table(const LevelArgs& a);

// fn(x_tag, param_tag, table, search) for the dtypes of a level op: the grid
// in x's compute type with the scalar formulas' search for it, picked once
// per call (kIndex: one that gives level indices, for the code ops).
template <bool kIndex, typename Fn>
void dispatch_level_grid(const LevelArgs& a, const Fn& fn) {
  dispatch_types(a.c.x, a.alpha, [&](auto x_tag, auto p_tag) {
    const auto& table = level_table<acc_type<decltype(x_tag)>>(a);
    math::with_level_search<math::Scalar<acc_type<decltype(x_tag)>>, kIndex>(
        table, [&](auto search) { fn(x_tag, p_tag, table, search); });
  });
}

}  // namespace quantext
