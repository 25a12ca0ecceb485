// The C++ API of the level schemes and integer codes, as a LibTorch program
// uses it: level tables, fake quantization with gradients through
// torch::autograd, codes that decode to the fake-quantized values, errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quantext/quantext.h"

namespace {

TEST(Levels, KnownApotSet) {
  const auto t = quantext::levels("apot", 3, /*is_signed=*/false);
  const auto expected = torch::tensor({0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0}, torch::kDouble);
  EXPECT_TRUE(torch::equal(t, expected));
  const auto s = quantext::levels("pot", 3, /*is_signed=*/true);
  EXPECT_TRUE(torch::equal(s, torch::tensor({-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0}, torch::kDouble)));
}

TEST(Levels, DecodeTableRebuildsLevels) {
  const auto table = quantext::apot_decode_table(5, /*is_signed=*/true);  // B = 4, two terms
  ASSERT_EQ(table.sizes(), (std::vector<int64_t>{16, 2}));
  const auto powers = torch::where(table >= 0, torch::pow(2.0, -table.to(torch::kDouble)), torch::zeros({1}));
  const auto sums = powers.sum(1);
  const auto levels = quantext::levels("apot", 4, /*is_signed=*/false);
  EXPECT_TRUE(torch::allclose(sums / sums[-1], levels, 0, 1e-15));
}

TEST(FakeQuantLevels, GradientsAndCodes) {
  torch::manual_seed(0);
  const auto data = torch::randn({4, 257}) * 2;
  auto x = data.clone().requires_grad_();
  auto alpha = torch::tensor({0.5f, 1.0f, 1.5f, 2.0f}).requires_grad_();
  const auto y = quantext::fake_quant_levels(x, alpha, "apot", 4, true, 2, "nearest", 0);
  y.sum().backward();
  const auto v = data / alpha.detach().view({4, 1});
  const auto inside = (v >= -1) & (v <= 1);
  EXPECT_TRUE(torch::equal(x.grad(), inside.to(torch::kFloat)));
  const auto q = y.detach() / alpha.detach().view({4, 1});
  const auto expected = torch::where(inside, q - v, torch::sign(v)).sum(1);
  EXPECT_TRUE(torch::allclose(alpha.grad(), expected, 1e-4, 1e-4));

  const auto codes = quantext::quantize_levels(data, alpha.detach(), "apot", 4, true, 2, "nearest", 0);
  EXPECT_EQ(codes.scalar_type(), torch::kChar);
  const auto back = quantext::dequantize_levels(codes, alpha.detach(), "apot", 4, true, 2, 0);
  EXPECT_TRUE(torch::equal(back, y.detach()));
}

TEST(Codes, UniformRoundTrip) {
  const auto x = torch::randn({3, 100}) * 3;
  const auto scale = torch::tensor({0.1f, 0.02f, 0.3f});
  const auto zero = torch::tensor({0, 100, 255}, torch::kInt);
  const auto codes = quantext::quantize_uniform(x, scale, zero, 0, 255, 0);
  EXPECT_EQ(codes.scalar_type(), torch::kByte);
  EXPECT_TRUE(torch::equal(quantext::dequantize_uniform(codes, scale, zero, 0),
                           torch::fake_quantize_per_channel_affine(x, scale, zero, 0, 0, 255)));
}

TEST(LevelErrors, NameArgumentAndValue) {
  const auto x = torch::randn({4, 3});
  EXPECT_THROW(quantext::fake_quant_levels(x, torch::tensor(0.0f), "pot", 4, true), c10::ValueError);
  EXPECT_THROW(quantext::fake_quant_levels(x, torch::tensor(1.0f), "pot", 9, true), c10::ValueError);
  EXPECT_THROW(quantext::fake_quant_levels(x, torch::tensor(1.0f), "apot", 4, true, 2, "log"), c10::ValueError);
  EXPECT_THROW(quantext::levels("uniform", 4, true), c10::ValueError);
  EXPECT_THROW(quantext::dequantize_levels(torch::tensor({9}, torch::kChar), torch::tensor(1.0f), "pot", 4, true),
               c10::ValueError);
}

}  // namespace
