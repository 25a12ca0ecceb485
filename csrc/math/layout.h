// How a quantizer's parameters map onto the elements of its input.
//
// Every kernel walks the input as a sequence of "items": contiguous runs of
// elements that share one parameter set. Per tensor, an item is a fixed-size
// chunk (param 0); per channel, a run of the `inner` elements physically
// inside the channel axis (param = item % channels); per group, G consecutive
// elements along the (innermost) group axis (param = item). Reductions for the
// parameter gradients produce one partial per item, summed per parameter.
//
// Per channel with the channel axis (nearly) innermost in memory, runs of one
// parameter would be shorter than a SIMD vector: there the layout is
// Interleaved. The parameters repeat with a period of channels * inner
// elements (inner = elements physically inside one channel index), an item is
// a whole number of periods, and each item produces one partial per channel.
#pragma once

#include <cstdint>

#include "math/scheme_math.h"

namespace quantext {

enum class Granularity : int32_t { Tensor = 0, Channel = 1, Group = 2, Interleaved = 3 };

struct RunLayout {
  Granularity kind;
  int64_t numel;
  int64_t run;        // elements per item (the last per-tensor chunk may be shorter)
  int64_t channels;   // channel count (per channel), else 1
  int64_t inner = 1;  // Interleaved: elements inside one channel index

  QTX_HOST_DEVICE int64_t num_items() const { return numel == 0 ? 0 : (numel + run - 1) / run; }
  // Partial sums of a parameter-gradient reduction: Interleaved items hold one per channel.
  QTX_HOST_DEVICE int64_t num_partials() const {
    return kind == Granularity::Interleaved ? num_items() * channels : num_items();
  }
  QTX_HOST_DEVICE int64_t period() const { return channels * inner; }
  // Not for Interleaved layouts, whose items hold every parameter.
  QTX_HOST_DEVICE int64_t param_of_item(int64_t item) const {
    return kind == Granularity::Tensor ? 0 : (kind == Granularity::Channel ? item % channels : item);
  }
  QTX_HOST_DEVICE int64_t param_of_element(int64_t i) const {
    if (kind == Granularity::Interleaved) return i / inner % channels;
    return kind == Granularity::Tensor ? 0 : param_of_item(i / run);
  }
  QTX_HOST_DEVICE int64_t item_begin(int64_t item) const { return item * run; }
  QTX_HOST_DEVICE int64_t item_length(int64_t item) const {
    const int64_t b = item * run;
    return numel - b < run ? numel - b : run;
  }
};

}  // namespace quantext
