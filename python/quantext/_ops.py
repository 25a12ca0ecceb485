"""Loads the native library (which registers ``torch.ops.quantext.*``) and
registers the fake implementations that let ``torch.compile``/``torch.export``
trace the ops without running them."""

from __future__ import annotations

import torch

from . import _C  # noqa: F401  (registers the ops)

ops = torch.ops.quantext


# The fakes also serve the Meta dispatch key, which a meta tensor mixed with
# real ones selects: they repeat the device checks of the real kernels so that
# such a call is an error instead of an uninitialized result.
def check_same_device(op: str, x: torch.Tensor, **params: torch.Tensor) -> None:
    """The kernels' rule (csrc/ops/canonical.cpp): every tensor on the input's device."""
    for name, t in params.items():
        if t.device != x.device:
            raise ValueError(f"quantext.{op}: {name} is on {t.device} but the input is on {x.device}")


def _check_readable(op: str, hist: torch.Tensor, **params: torch.Tensor) -> None:
    """The range ops read their arguments on the host from any device, but not from meta."""
    for name, t in params.items():
        if t.device.type == "meta" and hist.device.type != "meta":
            raise ValueError(f"quantext.{op}: {name} is on meta but hist is on {hist.device}")


@torch.library.register_fake("quantext::fake_quant_uniform")
def _fake_quant_uniform_fake(x, scale, zero_point, qmin, qmax, axis=None, group_size=0, grad_factor=1.0):
    check_same_device("fake_quant_uniform", x, scale=scale, zero_point=zero_point)
    return torch.empty_like(x)


@torch.library.register_fake("quantext::fake_quant_uniform_backward")
def _fake_quant_uniform_backward_fake(grad, x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor,
                                      param_grads):
    check_same_device("fake_quant_uniform_backward", x, scale=scale, zero_point=zero_point, grad=grad)
    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale)


@torch.library.register_fake("quantext::histogram")
def _histogram_fake(x, bins, lo, hi, axis=None):
    check_same_device("histogram", x, lo=lo, hi=hi)
    return x.new_empty((bins,) if axis is None else (x.shape[axis], bins), dtype=torch.long)


@torch.library.register_fake("quantext::magnitude_histogram")
def _magnitude_histogram_fake(x, bins, amax, axis=None):
    check_same_device("magnitude_histogram", x, amax=amax)
    return x.new_empty((2, bins) if axis is None else (x.shape[axis], 2, bins), dtype=torch.long)


def _per_row(hist, *trailing):
    return hist.new_empty(hist.shape[:-1] + trailing, dtype=torch.float64)


@torch.library.register_fake("quantext::calib_percentile")
def _calib_percentile_fake(hist, lo, hi, q):
    _check_readable("calib_percentile", hist, lo=lo, hi=hi)
    return _per_row(hist)


@torch.library.register_fake("quantext::calib_entropy")
def _calib_entropy_fake(hist, amax, num_levels=128, start_bin=128, variant="tensorrt"):
    _check_readable("calib_entropy", hist, amax=amax)
    return _per_row(hist), _per_row(hist, hist.shape[-1] + 1)


@torch.library.register_fake("quantext::calib_mse")
def _calib_mse_fake(hist, amax, levels):
    _check_readable("calib_mse", hist, amax=amax, levels=levels)
    return _per_row(hist), _per_row(hist, hist.shape[-1])


@torch.library.register_fake("quantext::calib_mse_affine")
def _calib_mse_affine_fake(hist, lo, hi, qmin, qmax):
    _check_readable("calib_mse_affine", hist, lo=lo, hi=hi)
    return _per_row(hist), _per_row(hist)
