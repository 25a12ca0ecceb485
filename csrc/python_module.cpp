// quantext._C: loading it registers every op with the dispatcher
// (torch.ops.quantext.*). The module itself carries non-tensor helpers.
#include <torch/extension.h>

#include "quantext/quantext.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "quantext native core: ops live under torch.ops.quantext";
  m.def("uniform_bounds", &quantext::uniform_bounds, py::arg("bits"), py::arg("signed"),
        py::arg("narrow_range") = false, "Integer range (qmin, qmax) of a b-bit uniform grid.");
  m.def("set_value_checks", &quantext::set_value_checks, py::arg("enabled"),
        "Enable/disable value checks of scales and zero points that live on a device (each costs a host sync).");
#ifdef QUANTEXT_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
