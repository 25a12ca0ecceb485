// The C++ API of the uniform op, as a LibTorch program uses it: forward
// against ATen's fake-quant ops, gradients through torch::autograd, errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "expect_error.h"
#include "quantext/quantext.h"

namespace {

torch::Tensor scalar_scale(float s) { return torch::full({1}, s); }
torch::Tensor scalar_zero(int32_t z) { return torch::full({1}, z, torch::kInt); }

TEST(UniformBounds, SignedUnsignedNarrow) {
  EXPECT_EQ(quantext::uniform_bounds(8, true), (std::pair<int64_t, int64_t>{-128, 127}));
  EXPECT_EQ(quantext::uniform_bounds(8, true, true), (std::pair<int64_t, int64_t>{-127, 127}));
  EXPECT_EQ(quantext::uniform_bounds(4, false), (std::pair<int64_t, int64_t>{0, 15}));
  EXPECT_THROW(quantext::uniform_bounds(1, true), c10::ValueError);
  EXPECT_THROW(quantext::uniform_bounds(17, false), c10::ValueError);
}

TEST(UniformForward, MatchesATenPerTensor) {
  torch::manual_seed(0);
  const auto x = torch::randn({37, 129}) * 3;
  const auto y = quantext::fake_quant_uniform(x, scalar_scale(0.02f), scalar_zero(5), -128, 127);
  EXPECT_TRUE(torch::equal(y, torch::fake_quantize_per_tensor_affine(x, 0.02, 5, -128, 127)));
}

TEST(UniformForward, MatchesATenPerChannelAndTies) {
  const auto scale = torch::tensor({0.5f, 0.25f, 1.0f});
  const auto zero = torch::tensor({0, 3, 255}, torch::kInt);
  // Exact ties (k + 0.5) * scale exercise round-half-to-even.
  auto x = (torch::arange(-40, 40).to(torch::kFloat) + 0.5).repeat({3, 1}) * scale.view({3, 1});
  const auto y = quantext::fake_quant_uniform(x, scale, zero, 0, 255, /*axis=*/0);
  EXPECT_TRUE(torch::equal(y, torch::fake_quantize_per_channel_affine(x, scale, zero, 0, 0, 255)));
}

TEST(UniformBackward, ClippedStraightThrough) {
  auto x = torch::linspace(-3, 3, 101, torch::requires_grad());
  const auto y = quantext::fake_quant_uniform(x, scalar_scale(0.1f), scalar_zero(0), -8, 7);
  y.sum().backward();
  const auto q = torch::round(x.detach() / 0.1f);
  const auto expected = ((q >= -8) & (q <= 7)).to(torch::kFloat);
  EXPECT_TRUE(torch::equal(x.grad(), expected));
}

TEST(UniformBackward, LearnedScaleMatchesATen) {
  torch::manual_seed(1);
  const auto data = torch::randn({1000});
  auto x1 = data.clone().requires_grad_(), s1 = torch::full({1}, 0.05f, torch::requires_grad());
  auto z1 = torch::full({1}, 2.0f, torch::requires_grad());
  quantext::fake_quant_uniform(x1, s1, z1, 0, 15, std::nullopt, 0, 0.3).pow(2).sum().backward();
  auto x2 = data.clone().requires_grad_(), s2 = torch::full({1}, 0.05f, torch::requires_grad());
  auto z2 = torch::full({1}, 2.0f, torch::requires_grad());
  torch::_fake_quantize_learnable_per_tensor_affine(x2, s2, z2, 0, 15, 0.3).pow(2).sum().backward();
  EXPECT_TRUE(torch::equal(x1.grad(), x2.grad()));
  EXPECT_TRUE(torch::allclose(s1.grad(), s2.grad(), 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(z1.grad(), z2.grad(), 1e-4, 1e-5));
}

TEST(UniformErrors, NameArgumentAndValue) {
  const auto x = torch::randn({4, 3});
  const auto expect_message = [](auto&& fn, const std::string& needle) {
    quantext_test::expect_error<c10::ValueError>(fn, needle);
  };
  expect_message([&] { quantext::fake_quant_uniform(x, scalar_scale(-1.f), scalar_zero(0), -8, 7); },
                 "scale must be positive and finite, got -1");
  expect_message([&] { quantext::fake_quant_uniform(x, scalar_scale(1.f), scalar_zero(9), -8, 7); },
                 "zero_point must lie in [qmin, qmax] = [-8, 7], got 9");
  expect_message([&] { quantext::fake_quant_uniform(x, scalar_scale(1.f), scalar_zero(0), 7, -8); },
                 "qmin must be <= qmax");
  expect_message([&] { quantext::fake_quant_uniform(x, torch::ones({4}), torch::zeros({4}, torch::kInt), 0, 7, 1); },
                 "must have shape [3]");
  expect_message(
      [&] {
        quantext::fake_quant_uniform(x, torch::ones({4, 2}), torch::zeros({4, 2}, torch::kInt), 0, 7, 1, 2);
      },
      "group_size=2 does not divide size 3");
  EXPECT_THROW(quantext::fake_quant_uniform(torch::ones({3}, torch::kInt), scalar_scale(1.f), scalar_zero(0), 0, 7),
               c10::TypeError);
}

}  // namespace
