// One host half per op, per-backend loops behind it (the shape of ATen's
// DispatchStub). The host half in ops/ checks the arguments, lays out the
// input, allocates the outputs and restores their layout once for every
// device; cpu/ and cuda/ register only the loop that fills the outputs.
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace quantext {

template <typename Fn>
class KernelStub {
 public:
  explicit constexpr KernelStub(const char* op) : op_(op) {}

  // The kernel for `device`; an op called on a device without one is an error
  // (the dispatcher only routes CPU and CUDA tensors here).
  Fn operator()(c10::DeviceType device) const {
    const Fn fn = device == c10::DeviceType::CPU ? cpu_ : device == c10::DeviceType::CUDA ? cuda_ : nullptr;
    TORCH_CHECK_NOT_IMPLEMENTED(fn != nullptr, op_, ": no kernel for device type ", device);
    return fn;
  }

  bool set(c10::DeviceType device, Fn fn) {
    (device == c10::DeviceType::CPU ? cpu_ : cuda_) = fn;
    return true;
  }

 private:
  const char* op_;
  Fn cpu_ = nullptr;
  Fn cuda_ = nullptr;
};

// Registers `fn` as the kernel of `stub` for DEVICE (CPU or CUDA) when the
// library loads. The stubs are constant-initialized, so the order in which
// the translation units initialize does not matter.
#define QUANTEXT_REGISTER_KERNEL(stub, DEVICE, fn) \
  static const bool stub##_##DEVICE##_registered = (stub).set(c10::DeviceType::DEVICE, (fn))

// A backend registers the kernels of a fake-quant op family (uniform,
// level), named forward, forward_masked and backward in its namespace.
#define QUANTEXT_REGISTER_FAKE_QUANT_KERNELS(family, DEVICE)                 \
  QUANTEXT_REGISTER_KERNEL(family##_forward_kernel, DEVICE, &forward);       \
  QUANTEXT_REGISTER_KERNEL(family##_masked_kernel, DEVICE, &forward_masked); \
  QUANTEXT_REGISTER_KERNEL(family##_backward_kernel, DEVICE, &backward)

// Registers the host halves of an op family (`register_fn(torch::Library&)`)
// for every backend built in.
#ifdef QUANTEXT_WITH_CUDA
#define QUANTEXT_HOST_IMPL(register_fn)                    \
  TORCH_LIBRARY_IMPL(quantext, CPU, m) { register_fn(m); } \
  TORCH_LIBRARY_IMPL(quantext, CUDA, m) { register_fn(m); }
#else
#define QUANTEXT_HOST_IMPL(register_fn) \
  TORCH_LIBRARY_IMPL(quantext, CPU, m) { register_fn(m); }
#endif

// Registers the host halves of a fake-quant op family (uniform, levels):
// fake_quant_<family>_host, _masked_host and _backward_host.
#define QUANTEXT_FAKE_QUANT_HOST_IMPL(family)                                        \
  static void register_##family(torch::Library& m) {                                 \
    m.impl("fake_quant_" #family, &fake_quant_##family##_host);                      \
    m.impl("fake_quant_" #family "_masked", &fake_quant_##family##_masked_host);     \
    m.impl("fake_quant_" #family "_backward", &fake_quant_##family##_backward_host); \
  }                                                                                  \
  QUANTEXT_HOST_IMPL(register_##family)

}  // namespace quantext
