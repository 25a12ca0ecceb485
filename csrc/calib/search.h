// Result of a one-dimensional clipping search over a histogram.
#pragma once

#include <vector>

namespace quantext {
namespace calib {

struct SearchResult {
  double clip = 0;            // the chosen clipping value
  std::vector<double> curve;  // the objective per candidate (layout documented by each search)
};

}  // namespace calib
}  // namespace quantext
