// CPU kernel of the clip-mask backward: a word of the mask (32 elements) at a
// time, in parallel over fixed chunks of words.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "math/clip_mask.h"
#include "ops/clip_mask.h"

namespace quantext {
namespace cpu {
namespace {

template <typename scalar_t>
void select_word(uint32_t bits, const scalar_t* __restrict__ dy, scalar_t* __restrict__ dx, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dx[j] = (bits >> j) & 1u ? dy[j] : scalar_t(0);
}

void backward(const at::Tensor& dy, const at::Tensor& mask, at::Tensor& dx) {
  const auto* words = reinterpret_cast<const uint32_t*>(mask.const_data_ptr<int32_t>());
  const int64_t numel = dy.numel();
  constexpr int64_t kWord = math::kMaskWordBits;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "quantext_clip_mask_backward", [&] {
    const scalar_t* in = dy.const_data_ptr<scalar_t>();
    scalar_t* out = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, mask.numel(), 1024, [&](int64_t lo, int64_t hi) {
      for (int64_t w = lo; w < hi; ++w) {
        const int64_t base = w * kWord;
        // A whole word has a constant trip count, which the compiler vectorizes.
        if (base + kWord <= numel) {
          select_word(words[w], in + base, out + base, kWord);
        } else {
          select_word(words[w], in + base, out + base, numel - base);
        }
      }
    });
  });
}

}  // namespace

QUANTEXT_REGISTER_KERNEL(clip_mask_backward_kernel, CPU, &backward);

}  // namespace cpu
}  // namespace quantext
