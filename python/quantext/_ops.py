"""Loads the native library (which registers ``torch.ops.quantext.*``) and
registers the fake implementations that let ``torch.compile``/``torch.export``
trace the ops without running them."""

from __future__ import annotations

import torch

from . import _C  # noqa: F401  (registers the ops)

ops = torch.ops.quantext


@torch.library.register_fake("quantext::fake_quant_uniform")
def _fake_quant_uniform_fake(x, scale, zero_point, qmin, qmax, axis=None, group_size=0, grad_factor=1.0):
    return torch.empty_like(x)


@torch.library.register_fake("quantext::fake_quant_uniform_backward")
def _fake_quant_uniform_backward_fake(grad, x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor,
                                      param_grads):
    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale)


@torch.library.register_fake("quantext::histogram")
def _histogram_fake(x, bins, lo, hi, axis=None):
    return x.new_empty((bins,) if axis is None else (x.shape[axis], bins), dtype=torch.long)


@torch.library.register_fake("quantext::magnitude_histogram")
def _magnitude_histogram_fake(x, bins, amax, axis=None):
    return x.new_empty((2, bins) if axis is None else (x.shape[axis], 2, bins), dtype=torch.long)


def _per_row(hist, *trailing):
    return hist.new_empty(hist.shape[:-1] + trailing, dtype=torch.float64)


@torch.library.register_fake("quantext::calib_percentile")
def _calib_percentile_fake(hist, lo, hi, q):
    return _per_row(hist)


@torch.library.register_fake("quantext::calib_entropy")
def _calib_entropy_fake(hist, amax, num_levels=128, start_bin=128, variant="tensorrt"):
    return _per_row(hist), _per_row(hist, hist.shape[-1] + 1)


@torch.library.register_fake("quantext::calib_mse")
def _calib_mse_fake(hist, amax, levels):
    return _per_row(hist), _per_row(hist, hist.shape[-1])


@torch.library.register_fake("quantext::calib_mse_affine")
def _calib_mse_affine_fake(hist, lo, hi, qmin, qmax):
    return _per_row(hist), _per_row(hist)
