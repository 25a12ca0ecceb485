// ACIQ (Banner, Nahshan, Soudry 2019): analytic clipping for a Gaussian or
// Laplace prior.
#pragma once

#include <cstdint>

namespace quantext {
namespace calib {

enum class Prior { Gaussian, Laplace };

// alpha / sigma (Gaussian) or alpha / b (Laplace, b = E|x - mu|) minimizing
// the expected squared error of clipping to [-alpha, alpha] plus the
// quantization noise alpha^2 / (3 * 4^bits) of 2^bits uniform levels, found by
// bisection on the derivative (the objective is convex in alpha). bits in [1, 16].
double aciq_ratio(int64_t bits, Prior prior);

}  // namespace calib
}  // namespace quantext
