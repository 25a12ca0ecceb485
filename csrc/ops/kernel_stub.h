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

}  // namespace quantext
