// Checks on the values of parameter tensors (scales, zero points, clipping
// values, level codes), shared by every op and backend.
//
// Every rule is a range, lo <= v <= hi, so it holds for all values exactly
// when it holds for the smallest and the largest (NaN breaks every rule). A
// CPU tensor is scanned in place; a device tensor costs one reduction, and
// the extremes of all checks of one op call come back to the host in one
// transfer: one host sync per call, none when the checks are off.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <initializer_list>
#include <string>

namespace quantext {

struct ValueCheck {
  at::Tensor values;                  // undefined: not read
  double lo, hi;                      // the range, compared in double
  bool round;                         // round half to even before comparing (floating zero points)
  std::function<std::string()> rule;  // what the values must be, formatted only for an error
};

ValueCheck positive_finite(const at::Tensor& t, const char* name);
// A uniform scale: positive, finite and normal in its own dtype, so that its
// reciprocal is finite (a float32 scale below 2^-126 would turn 0 * (1/s) into NaN).
ValueCheck normal_scale(const at::Tensor& scale);
ValueCheck zero_point_in_range(const at::Tensor& zero_point, int64_t qmin, int64_t qmax);
ValueCheck integers_in_range(const at::Tensor& t, int64_t lo, int64_t hi, std::function<std::string()> rule);

// Raises a ValueError naming the first broken rule and an offending value:
// the smallest value if it breaks the rule, else the largest, printed in the
// tensor's own kind (integer codes exactly).
void check_values(const char* op, std::initializer_list<ValueCheck> checks);

// Skips the device value checks on this thread while alive. An autograd
// backward passes the very tensors its forward checked, and autograd's version
// counters reject any in-place change to them in between.
class SkipValueRecheck {
 public:
  SkipValueRecheck();
  ~SkipValueRecheck();
  SkipValueRecheck(const SkipValueRecheck&) = delete;
  SkipValueRecheck& operator=(const SkipValueRecheck&) = delete;

 private:
  bool previous_;
};

}  // namespace quantext
