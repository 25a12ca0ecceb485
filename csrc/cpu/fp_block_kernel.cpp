// CPU kernel of the block-scaled minifloat op: each block's range and scale,
// then its elements through the SIMD loop of the fp op, block after block in
// parallel chunks (one clip-mask writer per chunk).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>

#include "cpu/finite_range.h"
#include "cpu/param_source.h"
#include "cpu/vec_loops.h"
#include "math/fp_math.h"
#include "ops/dispatch.h"
#include "ops/fp.h"

namespace quantext {
namespace cpu {
namespace {

// Blocks whose scales are found before their elements are quantized: the
// blocks' reductions are independent and overlap in the pipeline, where one
// block's reduction, scale and quantization in a row wait on each other
// (measured: 1.5x at 32-element blocks). They stay in L1 for the second read.
constexpr int64_t kBatch = 256;

void fp_blocks(const FpBlockArgs& a, at::Tensor& y, at::Tensor* mask) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.x.scalar_type(), "quantext_fp_blocks", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* x = a.x.const_data_ptr<scalar_t>();
    scalar_t* out = y.mutable_data_ptr<scalar_t>();
    auto* words = mask ? reinterpret_cast<uint32_t*>(mask->mutable_data_ptr<int32_t>()) : nullptr;
    const math::FpGrid<acc_t> g{acc_t(a.format.max_value), acc_t(a.format.min_normal), acc_t(a.format.ulp)};
    const float fp_max = static_cast<float>(a.format.max_value);
    const float tensor_scale = a.tensor_scale.defined() ? a.tensor_scale.const_data_ptr<float>()[0] : 1.0f;
    const int64_t block = a.block, blocks = a.x.numel() / block;
    const auto grid = [&]<typename P>() -> math::FpGrid<typename P::V> {
      return {P::splat(g.max_value), P::splat(g.min_normal), P::splat(g.ulp)};
    };
    const auto formula = [&]<typename P>(typename P::V v, const std::array<typename P::V, 2>& l) {
      return math::fp_forward_masked<P>(v, {l[0], l[1]}, grid.template operator()<P>());
    };
    // (scale, 1/scale) of a batch's blocks, the reciprocal in float32 as the fp op's
    const auto scales = [&](int64_t first, int64_t count, std::array<acc_t, 2>* params) {
      for (int64_t j = 0; j < count; ++j) {
        const float amax = static_cast<float>(run_absmax<acc_t>(x + (first + j) * block, block));
        const float s = a.tensor_scale.defined() ? math::nv_block_scale(amax, fp_max, tensor_scale)
                                                 : math::mx_block_scale(amax, a.emax);
        params[j] = {acc_t(s), acc_t(1.0f / s)};
      }
    };
    const auto quantize = [&](int64_t begin, int64_t len, auto& src, std::optional<MaskWriter>& bits) {
      if (bits) {
        map_run_masked<acc_t>(x + begin, out + begin, len, *bits, src, formula);
      } else {
        map_run<acc_t>(x + begin, out + begin, len, src, [&]<typename P>(typename P::V v, const auto& l) {
          return formula.template operator()<P>(v, l).y;
        });
      }
    };
    at::parallel_for(0, blocks, std::max<int64_t>(1, 32768 / block), [&](int64_t lo, int64_t hi) {
      std::optional<MaskWriter> bits;
      if (words) bits.emplace(words, lo * block, (hi - lo) * block);
      std::array<acc_t, 2> params[kBatch];
      for (int64_t first = lo; first < hi; first += kBatch) {
        const int64_t count = std::min(kBatch, hi - first);
        scales(first, count, params);
        for (int64_t j = 0; j < count; ++j) {
          SplatParams<acc_t, 2> src(params[j]);
          quantize((first + j) * block, block, src, bits);
        }
      }
    });
  });
}

}  // namespace

QUANTEXT_REGISTER_KERNEL(fp_block_kernel, CPU, &fp_blocks);

}  // namespace cpu
}  // namespace quantext
