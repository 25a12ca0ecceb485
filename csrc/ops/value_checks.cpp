#include "ops/value_checks.h"

#include <c10/core/Scalar.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "quantext/quantext.h"

namespace quantext {
namespace {

// CPU tensors up to this size (parameters) are scanned here, larger ones
// (codes) by ATen's vectorized, parallel reduction.
constexpr int64_t kScanInPlace = 4096;

std::atomic<bool> g_value_checks{true};
thread_local bool t_skip_device_checks = false;

// Values of a CPU tensor are always checked; device tensors cost a sync.
bool reads_values(const at::Tensor& t) {
  return t.device().is_cpu() || (value_checks_enabled() && !t_skip_device_checks);
}

ValueCheck range_check(const at::Tensor& t, double lo, double hi, bool round, std::function<std::string()> rule) {
  if (!reads_values(t) || t.numel() == 0) return {{}, lo, hi, round, {}};
  return {t, lo, hi, round, std::move(rule)};
}

template <typename T>
std::pair<T, T> extremes(const T* v, int64_t n) {
  if constexpr (!std::is_integral_v<T>) {
    for (int64_t i = 0; i < n; ++i) {
      // Any NaN, reported unsigned (ATen's reductions may give -nan).
      if (v[i] != v[i]) return {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::quiet_NaN()};
    }
  }
  T lo = v[0], hi = v[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = v[i] < lo ? v[i] : lo;
    hi = v[i] > hi ? v[i] : hi;
  }
  return {lo, hi};
}

// The smallest and largest of n values of type `type` at `data` (host memory).
std::pair<c10::Scalar, c10::Scalar> host_extremes(at::ScalarType type, const void* data, int64_t n) {
  std::pair<c10::Scalar, c10::Scalar> out;
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, type, "quantext_value_check", [&] {
    const auto [lo, hi] = extremes(static_cast<const scalar_t*>(data), n);
    out = {c10::Scalar(lo), c10::Scalar(hi)};
  });
  return out;
}

bool breaks(const ValueCheck& c, const c10::Scalar& value) {
  const double v = c.round ? std::nearbyint(value.toDouble()) : value.toDouble();
  return !(v >= c.lo && v <= c.hi);
}

}  // namespace

bool value_checks_enabled() { return g_value_checks.load(std::memory_order_relaxed); }
void set_value_checks(bool enabled) { g_value_checks.store(enabled, std::memory_order_relaxed); }

SkipValueRecheck::SkipValueRecheck() : previous_(t_skip_device_checks) { t_skip_device_checks = true; }
SkipValueRecheck::~SkipValueRecheck() { t_skip_device_checks = previous_; }

ValueCheck positive_finite(const at::Tensor& t, const char* name) {
  return range_check(t, std::numeric_limits<double>::denorm_min(), std::numeric_limits<double>::max(), false,
                     [name] { return std::string(name) + " must be positive and finite"; });
}

ValueCheck normal_scale(const at::Tensor& scale) {
  const bool single = scale.scalar_type() == at::kFloat;
  const double lo = single ? std::numeric_limits<float>::min() : std::numeric_limits<double>::min();
  return range_check(scale, lo, std::numeric_limits<double>::max(), false, [single, lo] {
    return c10::str("scale must be normal (at least ", lo, ", the smallest normal ", single ? "float32" : "float64",
                    ", so that 1/scale is finite)");
  });
}

ValueCheck zero_point_in_range(const at::Tensor& zero_point, int64_t qmin, int64_t qmax) {
  return range_check(zero_point, static_cast<double>(qmin), static_cast<double>(qmax),
                     at::isFloatingType(zero_point.scalar_type()),
                     [=] { return c10::str("zero_point must lie in [qmin, qmax] = [", qmin, ", ", qmax, "]"); });
}

ValueCheck integers_in_range(const at::Tensor& t, int64_t lo, int64_t hi, std::function<std::string()> rule) {
  // Integers convert to double monotonically, and the bounds exactly.
  TORCH_INTERNAL_ASSERT(std::abs(lo) <= (int64_t{1} << 53) && std::abs(hi) <= (int64_t{1} << 53));
  return range_check(t, static_cast<double>(lo), static_cast<double>(hi), false, std::move(rule));
}

void check_values(const char* op, std::initializer_list<ValueCheck> checks) {
  std::vector<std::pair<c10::Scalar, c10::Scalar>> ends(checks.size());
  std::vector<size_t> reduced;     // the checks whose extremes come from a reduction
  std::vector<at::Tensor> pieces;  // their one value or their extremes, as bytes
  for (size_t i = 0; i < checks.size(); ++i) {
    const at::Tensor& v = checks.begin()[i].values;
    if (!v.defined()) continue;
    if (v.device().is_cpu() && v.numel() <= kScanInPlace) {
      const at::Tensor dense = v.contiguous();
      ends[i] = host_extremes(dense.scalar_type(), dense.const_data_ptr(), dense.numel());
      continue;
    }
    at::Tensor few;
    if (v.numel() == 1) {
      few = v.reshape(-1).as_strided({1}, {1});  // a byte view needs a unit stride
    } else {
      const auto [lo, hi] = at::aminmax(v);
      few = at::stack({lo, hi});
    }
    pieces.push_back(few.view(at::kByte));
    reduced.push_back(i);
  }
  if (!reduced.empty()) {
    const at::Tensor host = (pieces.size() == 1 ? pieces[0] : at::cat(pieces)).cpu();  // on a device: the one sync
    const auto* bytes = host.const_data_ptr<uint8_t>();
    for (size_t r = 0; r < reduced.size(); ++r) {
      const at::ScalarType type = checks.begin()[reduced[r]].values.scalar_type();
      ends[reduced[r]] = host_extremes(type, bytes, pieces[r].numel() / static_cast<int64_t>(c10::elementSize(type)));
      bytes += pieces[r].numel();
    }
  }
  for (size_t i = 0; i < checks.size(); ++i) {
    const ValueCheck& c = checks.begin()[i];
    if (!c.values.defined()) continue;
    const auto& [lo, hi] = ends[i];
    const bool low = breaks(c, lo);
    TORCH_CHECK_VALUE(!low && !breaks(c, hi), op, ": ", c.rule(), ", got ", low ? lo : hi);
  }
}

}  // namespace quantext
