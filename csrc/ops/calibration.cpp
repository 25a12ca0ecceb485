// Range-method ops: schemas and implementations over histogram tensors.
// A histogram is [bins] (one row) or [C, bins] (one row per channel) of counts
// of any real dtype; ranges are tensors of shape [] / [C]. The searches run on
// the host in float64 (a histogram is small); results come back as float64
// tensors on the histogram's device.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "calib/aciq.h"
#include "calib/entropy.h"
#include "calib/mse.h"
#include "calib/percentile.h"
#include "ops/canonical.h"

namespace quantext {
namespace {

struct Rows {
  at::Tensor counts;  // [rows, bins] float64, CPU, contiguous
  int64_t rows, bins;
  bool per_channel;
  at::Device device;

  const double* row(int64_t r) const { return counts.const_data_ptr<double>() + r * bins; }
  std::vector<int64_t> shape() const { return per_channel ? std::vector<int64_t>{rows} : std::vector<int64_t>{}; }
  at::Tensor out(const std::vector<double>& v) const { return at::tensor(v, at::kDouble).reshape(shape()).to(device); }
  // `len` entries per row, passed explicitly so that zero rows keep the shape [0, len].
  at::Tensor out_curves(const std::vector<std::vector<double>>& curves, int64_t len) const {
    at::Tensor t = at::empty({rows, len}, at::kDouble);
    for (int64_t r = 0; r < rows; ++r)
      std::copy(curves[r].begin(), curves[r].end(), t.mutable_data_ptr<double>() + r * len);
    return (per_channel ? t : t.reshape({len})).to(device);
  }
};

Rows prepare_rows(const char* op, const at::Tensor& hist) {
  TORCH_CHECK_TYPE(at::isFloatingType(hist.scalar_type()) || at::isIntegralType(hist.scalar_type(), false), op,
                   ": hist must hold real counts, got dtype ", hist.scalar_type());
  TORCH_CHECK_VALUE(hist.dim() == 1 || hist.dim() == 2, op, ": hist must have shape [bins] or [C, bins], got ",
                    hist.sizes());
  TORCH_CHECK_VALUE(hist.size(-1) >= 1, op, ": hist has no bins");
  Rows r{hist.to(at::kCPU, at::kDouble).contiguous().reshape({-1, hist.size(-1)}), 0, hist.size(-1), hist.dim() == 2,
         hist.device()};
  r.rows = r.counts.size(0);
  const at::Tensor bad = (r.counts < 0).logical_or_(r.counts.isfinite().logical_not_());
  TORCH_CHECK_VALUE(!bad.any().item<bool>(), op, ": hist counts must be finite and non-negative");
  const at::Tensor totals = r.counts.sum(1);
  for (int64_t i = 0; i < r.rows; ++i) {
    TORCH_CHECK_VALUE(totals[i].item<double>() > 0, op, ": hist row ", i, " is empty (no counts)");
  }
  return r;
}

// A per-row range end as host doubles, checked for shape.
std::vector<double> row_values(const char* op, const Rows& r, const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a floating tensor, got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.numel() == r.rows && (r.per_channel ? t.dim() == 1 : t.dim() <= 1), op, ": ", name,
                    " must have shape ", (r.per_channel ? "[C] with C = hist.size(0) = " : "[] (one row), C = "),
                    r.rows, ", got ", t.sizes());
  const at::Tensor v = t.to(at::kCPU, at::kDouble).contiguous().reshape({-1});
  return {v.const_data_ptr<double>(), v.const_data_ptr<double>() + r.rows};
}

// [lo, hi] per row, finite with lo < hi.
std::pair<std::vector<double>, std::vector<double>> row_ranges(const char* op, const Rows& r, const at::Tensor& lo,
                                                               const at::Tensor& hi) {
  auto l = row_values(op, r, lo, "lo"), h = row_values(op, r, hi, "hi");
  for (int64_t i = 0; i < r.rows; ++i) {
    TORCH_CHECK_VALUE(std::isfinite(l[i]) && std::isfinite(h[i]) && l[i] < h[i], op,
                      ": lo < hi (both finite) is required, got lo=", l[i], ", hi=", h[i], " in row ", i);
  }
  return {l, h};
}

std::vector<double> row_amax(const char* op, const Rows& r, const at::Tensor& amax) {
  auto a = row_values(op, r, amax, "amax");
  for (int64_t i = 0; i < r.rows; ++i) {
    TORCH_CHECK_VALUE(std::isfinite(a[i]) && a[i] > 0, op, ": amax must be positive and finite, got ", a[i], " in row ",
                      i);
  }
  return a;
}

template <typename Fn>
void for_rows(const Rows& r, const Fn& fn) {
  at::parallel_for(0, r.rows, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) fn(i);
  });
}

at::Tensor calib_percentile(const at::Tensor& hist, const at::Tensor& lo, const at::Tensor& hi, double q) {
  const char* op = "quantext.calib_percentile";
  TORCH_CHECK_VALUE(q >= 0 && q <= 1, op, ": q must be in [0, 1], got ", q);
  const Rows r = prepare_rows(op, hist);
  const auto [l, h] = row_ranges(op, r, lo, hi);
  std::vector<double> out(r.rows);
  for_rows(r, [&](int64_t i) { out[i] = calib::hist_quantile(r.row(i), r.bins, l[i], h[i], q); });
  return r.out(out);
}

std::tuple<at::Tensor, at::Tensor> calib_entropy(const at::Tensor& hist, const at::Tensor& amax, int64_t num_levels,
                                                 int64_t start_bin, c10::string_view variant) {
  const char* op = "quantext.calib_entropy";
  TORCH_CHECK_VALUE(variant == "tensorrt" || variant == "ppq", op, ": variant must be 'tensorrt' or 'ppq', got '",
                    std::string(variant), "'");
  const auto kind = variant == "tensorrt" ? calib::KlVariant::TensorRT : calib::KlVariant::PPQ;
  TORCH_CHECK_VALUE(num_levels >= 1, op, ": num_levels must be >= 1, got ", num_levels);
  const Rows r = prepare_rows(op, hist);
  if (kind == calib::KlVariant::TensorRT) {
    TORCH_CHECK_VALUE(start_bin >= 1 && calib::kl_first_candidate(num_levels, start_bin) < r.bins, op,
                      ": no candidate thresholds: max(start_bin=", start_bin, ", num_levels=", num_levels,
                      ") must be below the number of bins ", r.bins);
  } else {
    TORCH_CHECK_VALUE(num_levels <= r.bins, op, ": variant 'ppq' needs num_levels=", num_levels,
                      " <= the number of bins ", r.bins);
  }
  const auto a = row_amax(op, r, amax);
  std::vector<double> clip(r.rows);
  std::vector<std::vector<double>> curves(r.rows);
  for_rows(r, [&](int64_t i) {
    auto s = calib::entropy_threshold(r.row(i), r.bins, a[i] / r.bins, num_levels, start_bin, kind);
    clip[i] = s.clip;
    curves[i] = std::move(s.curve);
  });
  return {r.out(clip), r.out_curves(curves, r.bins + 1)};
}

std::vector<double> checked_levels(const char* op, const at::Tensor& levels) {
  TORCH_CHECK_TYPE(at::isFloatingType(levels.scalar_type()), op, ": levels must be a floating tensor, got ",
                   levels.scalar_type());
  TORCH_CHECK_VALUE(levels.dim() == 1 && levels.numel() >= 2, op,
                    ": levels must be a 1-D table of at least 2 magnitudes, got shape ", levels.sizes());
  const at::Tensor v = levels.to(at::kCPU, at::kDouble).contiguous();
  std::vector<double> out(v.const_data_ptr<double>(), v.const_data_ptr<double>() + v.numel());
  for (size_t j = 0; j < out.size(); ++j) {
    TORCH_CHECK_VALUE(std::isfinite(out[j]) && out[j] >= 0 && (j == 0 || out[j] > out[j - 1]), op,
                      ": levels must be finite, non-negative and strictly increasing; got levels[", j, "]=", out[j]);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> calib_mse(const at::Tensor& hist, const at::Tensor& amax, const at::Tensor& levels) {
  const char* op = "quantext.calib_mse";
  const auto table = checked_levels(op, levels);
  const Rows r = prepare_rows(op, hist);
  const auto a = row_amax(op, r, amax);
  std::vector<double> clip(r.rows);
  std::vector<std::vector<double>> curves(r.rows);
  for_rows(r, [&](int64_t i) {
    auto s = calib::mse_symmetric(r.row(i), r.bins, a[i] / r.bins, table);
    clip[i] = s.clip;
    curves[i] = std::move(s.curve);
  });
  return {r.out(clip), r.out_curves(curves, r.bins)};
}

std::tuple<at::Tensor, at::Tensor> calib_mse_affine(const at::Tensor& hist, const at::Tensor& lo, const at::Tensor& hi,
                                                    int64_t qmin, int64_t qmax) {
  const char* op = "quantext.calib_mse_affine";
  check_int_range(op, qmin, qmax);  // first: the span below cannot overflow after it
  TORCH_CHECK_VALUE(qmin < qmax && qmax - qmin <= 65535, op,
                    ": need qmin < qmax spanning at most 16 bits, got qmin=", qmin, ", qmax=", qmax);
  const Rows r = prepare_rows(op, hist);
  const auto [l, h] = row_ranges(op, r, lo, hi);
  std::vector<double> out_lo(r.rows), out_hi(r.rows);
  for_rows(r, [&](int64_t i) {
    const auto best = calib::mse_affine(r.row(i), r.bins, l[i], h[i], qmin, qmax);
    out_lo[i] = best.lo;
    out_hi[i] = best.hi;
  });
  return {r.out(out_lo), r.out(out_hi)};
}

double aciq_ratio(int64_t bits, c10::string_view prior) {
  const char* op = "quantext.aciq_ratio";
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 16, op, ": bits must be in [1, 16], got ", bits);
  TORCH_CHECK_VALUE(prior == "gaussian" || prior == "laplace", op, ": prior must be 'gaussian' or 'laplace', got '",
                    std::string(prior), "'");
  return calib::aciq_ratio(bits, prior == "gaussian" ? calib::Prior::Gaussian : calib::Prior::Laplace);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(quantext, m) {
  m.def("calib_percentile(Tensor hist, Tensor lo, Tensor hi, float q) -> Tensor");
  m.def(
      "calib_entropy(Tensor hist, Tensor amax, int num_levels=128, int start_bin=128, str variant=\"tensorrt\") -> "
      "(Tensor, Tensor)");
  m.def("calib_mse(Tensor hist, Tensor amax, Tensor levels) -> (Tensor, Tensor)");
  m.def("calib_mse_affine(Tensor hist, Tensor lo, Tensor hi, int qmin, int qmax) -> (Tensor, Tensor)");
  m.def("aciq_ratio(int bits, str prior) -> float", &aciq_ratio);
}

// Host searches over a small tensor: one implementation for every device.
TORCH_LIBRARY_IMPL(quantext, CompositeExplicitAutograd, m) {
  m.impl("calib_percentile", &calib_percentile);
  m.impl("calib_entropy", &calib_entropy);
  m.impl("calib_mse", &calib_mse);
  m.impl("calib_mse_affine", &calib_mse_affine);
}

}  // namespace quantext
