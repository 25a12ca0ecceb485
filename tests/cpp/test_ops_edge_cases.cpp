// Edge cases of the ops (empty, one element, NaN/inf, zero-channel axes,
// degenerate histograms, the largest level grids) called through the dispatcher as a LibTorch program
// would. scripts/test.sh also runs this suite under ASan/UBSan, where a read
// past the end of these shapes would show.
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "expect_error.h"
#include "quantext/quantext.h"

namespace {

using quantext_test::expect_error;
using Pair = std::tuple<at::Tensor, at::Tensor>;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

template <typename Fn>
c10::TypedOperatorHandle<Fn> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

at::Tensor histogram(const at::Tensor& x, int64_t bins, const at::Tensor& lo, const at::Tensor& hi,
                     std::optional<int64_t> axis = std::nullopt) {
  static auto h =
      op<at::Tensor(const at::Tensor&, int64_t, const at::Tensor&, const at::Tensor&, std::optional<int64_t>)>(
          "quantext::histogram");
  return h.call(x, bins, lo, hi, axis);
}

at::Tensor magnitude_histogram(const at::Tensor& x, int64_t bins, const at::Tensor& amax,
                               std::optional<int64_t> axis = std::nullopt) {
  static auto h = op<at::Tensor(const at::Tensor&, int64_t, const at::Tensor&, std::optional<int64_t>)>(
      "quantext::magnitude_histogram");
  return h.call(x, bins, amax, axis);
}

at::Tensor calib_percentile(const at::Tensor& hist, const at::Tensor& lo, const at::Tensor& hi, double q) {
  static auto h =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>("quantext::calib_percentile");
  return h.call(hist, lo, hi, q);
}

Pair calib_entropy(const at::Tensor& hist, const at::Tensor& amax, int64_t levels, int64_t start_bin,
                   c10::string_view variant = "tensorrt") {
  static auto h =
      op<Pair(const at::Tensor&, const at::Tensor&, int64_t, int64_t, c10::string_view)>("quantext::calib_entropy");
  return h.call(hist, amax, levels, start_bin, variant);
}

Pair calib_mse(const at::Tensor& hist, const at::Tensor& amax, const at::Tensor& levels) {
  static auto h = op<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&)>("quantext::calib_mse");
  return h.call(hist, amax, levels);
}

Pair calib_mse_affine(const at::Tensor& hist, const at::Tensor& lo, const at::Tensor& hi, int64_t qmin, int64_t qmax) {
  static auto h =
      op<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t)>("quantext::calib_mse_affine");
  return h.call(hist, lo, hi, qmin, qmax);
}

double aciq_ratio(int64_t bits, c10::string_view prior) {
  static auto h = op<double(int64_t, c10::string_view)>("quantext::aciq_ratio");
  return h.call(bits, prior);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> uniform_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                const at::Tensor& scale, const at::Tensor& zero,
                                                                int64_t qmin, int64_t qmax, std::optional<int64_t> axis,
                                                                double grad_factor) {
  static auto h = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
      std::optional<int64_t>, int64_t, double, bool)>("quantext::fake_quant_uniform_backward");
  return h.call(grad, x, scale, zero, qmin, qmax, axis, 0, grad_factor, true);
}

std::tuple<at::Tensor, at::Tensor> levels_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& alpha,
                                                   c10::string_view scheme, int64_t bits, bool is_signed,
                                                   std::optional<int64_t> axis) {
  static auto h = op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view, int64_t, bool, int64_t,
      c10::string_view, std::optional<int64_t>, double, bool)>("quantext::fake_quant_levels_backward");
  return h.call(grad, x, alpha, scheme, bits, is_signed, 2, "nearest", axis, 1.0, true);
}

at::Tensor scalar(double v) { return torch::tensor(v, torch::kDouble); }

// Counts of bins equal bins over [lo, hi] (the last bin holds hi), written
// out slowly: NaN and values outside are not counted.
std::vector<int64_t> reference_counts(const at::Tensor& x, int64_t bins, double lo, double hi) {
  std::vector<int64_t> out(bins, 0);
  const at::Tensor v = x.to(torch::kDouble).contiguous().reshape({-1});
  for (int64_t i = 0; i < v.numel(); ++i) {
    const double d = v.const_data_ptr<double>()[i];
    if (!(d >= lo && d <= hi)) continue;
    const auto b = static_cast<int64_t>(std::floor((d - lo) * (static_cast<double>(bins) / (hi - lo))));
    ++out[std::min(b, bins - 1)];
  }
  return out;
}

std::vector<int64_t> as_vector(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return {c.const_data_ptr<int64_t>(), c.const_data_ptr<int64_t>() + c.numel()};
}

// ---------------------------------------------------------------- histogram --
TEST(HistogramEdgeCases, EmptyInputsGiveZeroCountsOfTheRightShape) {
  EXPECT_TRUE(torch::equal(histogram(torch::empty({0}), 16, scalar(-1), scalar(1)), torch::zeros({16}, torch::kLong)));
  EXPECT_TRUE(torch::equal(histogram(torch::empty({0, 5}), 4, torch::zeros({5}), torch::ones({5}), 1),
                           torch::zeros({5, 4}, torch::kLong)));
  EXPECT_EQ(histogram(torch::empty({0, 5}), 4, torch::zeros({0}), torch::ones({0}), 0).sizes(),
            (std::vector<int64_t>{0, 4}));
  EXPECT_TRUE(torch::equal(magnitude_histogram(torch::empty({3, 0}), 8, torch::ones({3}), 0),
                           torch::zeros({3, 2, 8}, torch::kLong)));
}

TEST(HistogramEdgeCases, OneElementAndRangeEnds) {
  for (int64_t bins : {1, 2, 3, 1000}) {
    for (double v : {-2.0, -0.5, 0.0, 1.999, 2.0}) {
      const auto x = torch::full({1}, v, torch::kDouble);
      const auto counts = histogram(x, bins, scalar(-2), scalar(2));
      EXPECT_EQ(as_vector(counts), reference_counts(x, bins, -2, 2)) << "v=" << v << " bins=" << bins;
      EXPECT_EQ(counts.sum().item<int64_t>(), 1);
    }
  }
}

TEST(HistogramEdgeCases, NonFiniteValuesAreNotCounted) {
  const std::vector<double> values{kNaN, kInf, -kInf, 1.0, -1.0, 0.0, -0.0, 2.0, 3.0, -2.5};
  for (auto dtype : {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16}) {
    const auto x = torch::tensor(values, torch::kDouble).to(dtype);
    EXPECT_EQ(as_vector(histogram(x, 4, scalar(-2), scalar(2))), reference_counts(x, 4, -2, 2));
    // |x| split by sign: -0.0 counts as non-negative; |-2.5| and 3 lie beyond amax.
    const auto mag = magnitude_histogram(x, 2, scalar(2));
    EXPECT_EQ(as_vector(mag), (std::vector<int64_t>{0, 1, 2, 2}));
  }
}

TEST(HistogramEdgeCases, OddSizesLayoutsAndChannelsMatchTheReference) {
  torch::manual_seed(3);
  for (int64_t n : {1, 7, 9, 17, 65537}) {
    const auto x = torch::randn({n}) * 1.5;
    EXPECT_EQ(as_vector(histogram(x, 33, scalar(-2), scalar(2))), reference_counts(x, 33, -2, 2)) << "n=" << n;
  }
  const auto base = torch::randn({9, 5});
  const auto t = base.t();  // [5, 9], transposed strides
  const auto per_channel = histogram(t, 7, torch::full({5}, -1.0), torch::full({5}, 1.0), 0);
  for (int64_t c = 0; c < 5; ++c) {
    EXPECT_EQ(as_vector(per_channel[c]), reference_counts(t[c], 7, -1, 1)) << "channel " << c;
  }
}

TEST(HistogramEdgeCases, BadArgumentsNameTheArgument) {
  const auto x = torch::randn({10});
  expect_error<c10::ValueError>([&] { histogram(x, 0, scalar(0), scalar(1)); }, "bins must be in [1, ");
  expect_error<c10::ValueError>([&] { histogram(x, 4, scalar(1), scalar(1)); },
                                "hi - lo must be positive and finite, got 0");
  expect_error<c10::ValueError>([&] { histogram(x, 4, scalar(0), scalar(kNaN)); },
                                "hi - lo must be positive and finite, got nan");
  expect_error<c10::ValueError>([&] { magnitude_histogram(x, 4, scalar(kInf)); },
                                "amax must be positive and finite, got inf");
  expect_error<c10::ValueError>(
      [&] {
        histogram(x.view({2, 5}), 4, torch::zeros({2}), torch::ones({3}), 0);
      },
      "per-channel hi must have shape [2]");
  expect_error<c10::TypeError>([&] { histogram(torch::ones({3}, torch::kInt), 4, scalar(0), scalar(1)); },
                               "input must be a floating point tensor, got dtype Int");
}

// -------------------------------------------------------------- range methods --
TEST(CalibrationEdgeCases, OneBinAndSingleCounts) {
  const auto one_bin = torch::ones({1});
  EXPECT_DOUBLE_EQ(calib_percentile(one_bin, scalar(0), scalar(1), 0.5).item<double>(), 0.5);
  for (double q : {0.0, 1.0}) {
    const double v = calib_percentile(one_bin, scalar(-1), scalar(1), q).item<double>();
    EXPECT_TRUE(v >= -1 && v <= 1) << "q=" << q << " gives " << v;
  }
  const auto levels = torch::tensor({0.0, 0.5, 1.0}, torch::kDouble);
  for (int64_t where : {0, 100, 255}) {
    auto hist = torch::zeros({256}, torch::kDouble);
    hist[where] = 3;
    const auto [mse_clip, mse_curve] = calib_mse(hist, scalar(4), levels);
    EXPECT_GT(mse_clip.item<double>(), 0);
    EXPECT_LE(mse_clip.item<double>(), 4);
    EXPECT_EQ(mse_curve.sizes(), (std::vector<int64_t>{256}));
    for (auto variant : {"tensorrt", "ppq"}) {
      const auto [clip, curve] = calib_entropy(hist, scalar(4), 128, 128, variant);
      EXPECT_TRUE(std::isfinite(clip.item<double>()) && clip.item<double>() > 0) << variant << " " << where;
      EXPECT_EQ(curve.sizes(), (std::vector<int64_t>{257}));
    }
    const auto [lo, hi] = calib_mse_affine(hist, scalar(-4), scalar(4), 0, 255);
    EXPECT_TRUE(lo.item<double>() <= 0 && hi.item<double>() >= 0 && hi.item<double>() > lo.item<double>());
  }
}

TEST(CalibrationEdgeCases, ZeroRowsKeepTheirShapes) {
  const auto hist = torch::zeros({0, 256});
  const auto none = torch::zeros({0});
  const auto [clip, curve] = calib_entropy(hist, none, 128, 128);
  EXPECT_EQ(clip.sizes(), (std::vector<int64_t>{0}));
  EXPECT_EQ(curve.sizes(), (std::vector<int64_t>{0, 257}));
  const auto [mse_clip, mse_curve] = calib_mse(hist, none, torch::tensor({0.0, 1.0}));
  EXPECT_EQ(mse_curve.sizes(), (std::vector<int64_t>{0, 256}));
  EXPECT_EQ(calib_percentile(hist, none, none + 1, 0.5).sizes(), (std::vector<int64_t>{0}));
}

TEST(CalibrationEdgeCases, BadHistogramsAndArguments) {
  const auto hist = torch::ones({256});
  auto with_nan = hist.clone();
  with_nan[7] = kNaN;
  expect_error<c10::ValueError>(
      [&] {
        calib_mse(with_nan, scalar(1), torch::tensor({0.0, 1.0}));
      },
      "hist counts must be finite and non-negative");
  expect_error<c10::ValueError>([&] { calib_percentile(torch::zeros({8}), scalar(0), scalar(1), 0.5); },
                                "hist row 0 is empty");
  expect_error<c10::ValueError>([&] { calib_percentile(torch::zeros({0}), scalar(0), scalar(1), 0.5); },
                                "hist has no bins");
  expect_error<c10::ValueError>(
      [&] {
        calib_percentile(torch::ones({2, 2, 2}), scalar(0), scalar(1), 0.5);
      },
      "hist must have shape [bins] or [C, bins]");
  expect_error<c10::ValueError>([&] { calib_percentile(hist, scalar(0), scalar(1), kNaN); },
                                "q must be in [0, 1], got nan");
  expect_error<c10::ValueError>([&] { calib_percentile(hist, scalar(kNaN), scalar(1), 0.5); },
                                "lo < hi (both finite) is required, got lo=nan");
  expect_error<c10::ValueError>([&] { calib_entropy(hist, scalar(kNaN), 128, 128); },
                                "amax must be positive and finite, got nan");
  expect_error<c10::ValueError>([&] { calib_mse(hist, scalar(1), torch::tensor({0.0, kNaN})); }, "got levels[1]=nan");
  expect_error<c10::ValueError>([&] { calib_mse_affine(hist, scalar(-1), scalar(1), 3, 3); },
                                "need qmin < qmax spanning at most 16 bits, got qmin=3, qmax=3");
  expect_error<c10::TypeError>(
      [&] {
        calib_mse(torch::ones({4}, torch::kBool), scalar(1), torch::tensor({0.0, 1.0}));
      },
      "hist must hold real counts");
}

TEST(CalibrationEdgeCases, AciqRatioBounds) {
  for (auto prior : {"gaussian", "laplace"}) {
    double previous = 0;
    for (int64_t bits : {1, 2, 8, 16}) {
      const double r = aciq_ratio(bits, prior);
      EXPECT_TRUE(std::isfinite(r) && r > previous) << prior << " bits=" << bits << " ratio=" << r;
      previous = r;
    }
  }
  expect_error<c10::ValueError>([] { aciq_ratio(0, "laplace"); }, "bits must be in [1, 16], got 0");
  expect_error<c10::ValueError>([] { aciq_ratio(17, "laplace"); }, "bits must be in [1, 16], got 17");
  expect_error<c10::ValueError>([] { aciq_ratio(4, "cauchy"); }, "prior must be 'gaussian' or 'laplace', got 'cauchy'");
}

// ------------------------------------------------------------------ uniform --
TEST(UniformEdgeCases, EmptyInputsAndZeroChannelAxes) {
  const auto scale3 = torch::full({3}, 0.5f), zero3 = torch::zeros({3}, torch::kInt);
  const auto x = torch::empty({0, 3});
  EXPECT_EQ(quantext::fake_quant_uniform(x, scale3, zero3, -8, 7, 1).sizes(), x.sizes());
  auto [dx, dscale, dzero] = uniform_backward(torch::empty({0, 3}), x, scale3, zero3, -8, 7, 1, 1.0);
  EXPECT_EQ(dx.sizes(), x.sizes());
  EXPECT_TRUE(torch::equal(dscale, torch::zeros({3})));
  // An axis of size 0 has no parameters: empty parameter gradients.
  const auto none = torch::empty({0}), no_zero = torch::empty({0}, torch::kInt);
  const auto x0 = torch::empty({4, 0});
  std::tie(dx, dscale, dzero) = uniform_backward(torch::empty({4, 0}), x0, none, no_zero, -8, 7, 1, 1.0);
  EXPECT_EQ(dscale.sizes(), (std::vector<int64_t>{0}));
  EXPECT_EQ(dzero.sizes(), (std::vector<int64_t>{0}));
}

TEST(UniformEdgeCases, OneElementNaNAndInfinities) {
  const auto scale = torch::full({1}, 0.25f), zero = torch::full({1}, 2.0f);
  const auto x = torch::tensor({static_cast<float>(kNaN), static_cast<float>(kInf), -static_cast<float>(kInf), 0.3f});
  const auto y = quantext::fake_quant_uniform(x, scale, zero, 0, 15);
  EXPECT_TRUE(std::isnan(y[0].item<float>()));
  EXPECT_EQ(y[1].item<float>(), (15 - 2) * 0.25f);
  EXPECT_EQ(y[2].item<float>(), (0 - 2) * 0.25f);
  const auto [dx, dscale, dzero] = uniform_backward(torch::ones({4}), x, scale, zero, 0, 15, std::nullopt, 0.5);
  EXPECT_TRUE(torch::equal(dx, torch::tensor({0.0f, 0.0f, 0.0f, 1.0f})));
  // NaN contributes nothing; +inf clips high (qmax - z), -inf low (qmin - z); 0.3 sits at code 1 + 2.
  const double inside = (1 * 0.25 - 0.3) / 0.25;
  EXPECT_NEAR(dscale.item<float>(), 0.5 * ((15 - 2) + (0 - 2) + inside), 1e-5);
  EXPECT_NEAR(dzero.item<float>(), 0.5 * (-0.25 * 2), 1e-7);
  for (int64_t n : {1, 7, 9, 17}) {  // sizes around the vector width, all NaN
    const auto nan = torch::full({n}, kNaN);
    EXPECT_TRUE(quantext::fake_quant_uniform(nan, scale, zero, 0, 15).isnan().all().item<bool>()) << n;
  }
}

TEST(UniformEdgeCases, ExtremeScalesMatchATen) {
  torch::manual_seed(5);
  for (double s : {1e-30, 1e-10, 1e10, 1e30}) {
    const auto x = torch::randn({37}) * (200 * s);
    const auto y = quantext::fake_quant_uniform(x, torch::full({1}, static_cast<float>(s)),
                                                torch::zeros({1}, torch::kInt), -128, 127);
    EXPECT_TRUE(torch::equal(y, torch::fake_quantize_per_tensor_affine(x, static_cast<float>(s), 0, -128, 127)))
        << "scale " << s;
    EXPECT_TRUE(y.isfinite().all().item<bool>());
  }
}

// ------------------------------------------------------------------- levels --
TEST(LevelsEdgeCases, EmptyInputsAndZeroChannelAxes) {
  const auto alpha3 = torch::ones({3});
  const auto x = torch::empty({0, 3});
  EXPECT_EQ(quantext::fake_quant_levels(x, alpha3, "apot", 4, true, 2, "nearest", 1).sizes(), x.sizes());
  auto [dx, dalpha] = levels_backward(torch::empty({0, 3}), x, alpha3, "apot", 4, true, 1);
  EXPECT_EQ(dx.sizes(), x.sizes());
  EXPECT_TRUE(torch::equal(dalpha, torch::zeros({3})));
  // An axis of size 0: no alpha, an empty gradient.
  std::tie(dx, dalpha) =
      levels_backward(torch::empty({4, 0}), torch::empty({4, 0}), torch::empty({0}), "pot", 4, true, 1);
  EXPECT_EQ(dalpha.sizes(), (std::vector<int64_t>{0}));
  const auto codes = quantext::quantize_levels(x, alpha3, "pot", 4, true, 2, "nearest", 1);
  EXPECT_EQ(codes.sizes(), x.sizes());
  EXPECT_EQ(codes.scalar_type(), torch::kChar);
  EXPECT_EQ(quantext::dequantize_levels(codes, alpha3, "pot", 4, true, 2, 1).sizes(), x.sizes());
}

TEST(LevelsEdgeCases, NaNInfinitiesAndSignedZero) {
  // 4-bit signed PoT: magnitudes {0, 2^-6, ..., 2^-1, 1}; 0.3 rounds to 1/4 (index 5).
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const auto x = torch::tensor({nan, inf, -inf, -0.0f, 0.3f});
  const auto alpha = torch::tensor(1.0f);
  const auto y = quantext::fake_quant_levels(x, alpha, "pot", 4, true);
  EXPECT_TRUE(std::isnan(y[0].item<float>()));
  EXPECT_TRUE(torch::equal(y.slice(0, 1), torch::tensor({1.0f, -1.0f, 0.0f, 0.25f})));
  EXPECT_FALSE(std::signbit(y[3].item<float>()));  // -0.0 gives +0
  const auto [dx, dalpha] = levels_backward(torch::ones({5}), x, alpha, "pot", 4, true, std::nullopt);
  EXPECT_TRUE(torch::equal(dx, torch::tensor({0.0f, 0.0f, 0.0f, 1.0f, 1.0f})));
  // NaN: nothing; +inf: the upper bound 1; -inf: the lower bound -1; -0: 0; 0.3: 1/4 - 0.3.
  EXPECT_NEAR(dalpha.item<float>(), 1 - 1 + (0.25 - 0.3), 1e-6);
  const auto codes = quantext::quantize_levels(x, alpha, "pot", 4, true);
  EXPECT_TRUE(torch::equal(codes, torch::tensor({0, 7, -7, 0, 5}, torch::kChar)));
  const auto unsigned_codes = quantext::quantize_levels(x, alpha, "pot", 4, false);
  EXPECT_TRUE(torch::equal(unsigned_codes, torch::tensor({0, 15, 0, 0, 13}, torch::kByte)));
  for (int64_t n : {1, 7, 9, 17}) {  // sizes around the vector width, all NaN
    const auto all_nan = torch::full({n}, nan);
    EXPECT_TRUE(quantext::fake_quant_levels(all_nan, alpha, "apot", 5, true).isnan().all().item<bool>()) << n;
    EXPECT_EQ(quantext::quantize_levels(all_nan, alpha, "apot", 5, true).abs().sum().item<int64_t>(), 0) << n;
  }
}

TEST(LevelsEdgeCases, LargestGridsAndExtremeAlphas) {
  torch::manual_seed(7);
  // Every magnitude level times alpha, and random values: 8-bit PoT reaches 2^-254, below float32's range.
  const auto exponents = torch::arange(0, 260, torch::kDouble);
  for (double a : {1e-30, 1.0, 1e30}) {
    const auto alpha = torch::tensor(static_cast<float>(a));
    const auto x = torch::cat({torch::pow(2.0, -exponents).to(torch::kFloat) * alpha, torch::randn({1000}) * alpha});
    for (const auto& [scheme, bits, k] : std::vector<std::tuple<const char*, int64_t, int64_t>>{
             {"pot", 8, 2}, {"apot", 8, 1}, {"apot", 8, 2}, {"apot", 8, 4}, {"apot", 1, 2}}) {
      const bool is_signed = bits > 1;
      const auto y = quantext::fake_quant_levels(x, alpha, scheme, bits, is_signed, k);
      EXPECT_TRUE(y.isfinite().all().item<bool>()) << scheme << bits << " alpha " << a;
      const auto codes = quantext::quantize_levels(x, alpha, scheme, bits, is_signed, k);
      EXPECT_TRUE(torch::equal(quantext::dequantize_levels(codes, alpha, scheme, bits, is_signed, k), y))
          << scheme << " bits=" << bits << " k=" << k << " alpha " << a;
    }
  }
  for (auto dtype : {torch::kHalf, torch::kBFloat16, torch::kDouble}) {
    const auto x = (torch::randn({37}) * 3).to(dtype);
    const auto y = quantext::fake_quant_levels(x, torch::tensor(2.0f), "apot", 6, true);
    EXPECT_EQ(y.scalar_type(), dtype);
    EXPECT_TRUE(y.isfinite().all().item<bool>());
  }
}

}  // namespace
