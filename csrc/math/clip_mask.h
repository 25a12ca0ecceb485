// The clip mask of a fake-quant forward, bit-packed for its backward: bit
// (i % 32) of 32-bit word i / 32 is set when element i, in the canonical
// element order of the op's input, lies inside the grid. A backward that
// needs only the clipped straight-through estimator (dx = dy where set) then
// reads 1 bit per element instead of the 4 bytes of a float32 x.
#pragma once

#include <cstdint>

#include "math/scheme_math.h"

namespace quantext {
namespace math {

constexpr int kMaskWordBits = 32;

QTX_HOST_DEVICE constexpr int64_t mask_words(int64_t numel) { return (numel + kMaskWordBits - 1) / kMaskWordBits; }

QTX_HOST_DEVICE bool mask_bit(const uint32_t* words, int64_t i) {
  return (words[i / kMaskWordBits] >> (i % kMaskWordBits)) & 1u;
}

}  // namespace math
}  // namespace quantext
