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
