// Parallel traversal of a RunLayout on the CPU. Items are split into chunks
// that do not depend on the thread count, and per-item partial sums are summed
// in a fixed order, so results are bit-identical from run to run.
#pragma once

#include <ATen/Parallel.h>

#include "math/layout.h"

namespace quantext {
namespace cpu {

// Calls fn(item, begin, length) for every item, in parallel.
template <typename Fn>
void for_each_item(const RunLayout& layout, const Fn& fn) {
  const int64_t items = layout.num_items();
  // Aim for ~32k elements of work per task.
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(layout.run, 1));
  at::parallel_for(0, items, grain, [&](int64_t lo, int64_t hi) {
    for (int64_t item = lo; item < hi; ++item) fn(item, layout.item_begin(item), layout.item_length(item));
  });
}

}  // namespace cpu
}  // namespace quantext
