"""``convert``: the inference form of a QAT model.

The result is a deep copy in eval mode in which

- every :class:`~quantext.nn.QuantConvBn2d` is replaced by the
  :class:`~quantext.nn.QuantConv2d` of its folded weight ``W * gamma / sigma_run``
  and bias ``beta - gamma * (mu_run - b) / sigma_run`` (``QuantConvBnReLU2d``
  by ``nn.Sequential(conv=QuantConv2d, relu=nn.ReLU())``): no BatchNorm of a
  fused pair remains;
- every :class:`~quantext.nn.Quantizer` is frozen: observer off, learned
  parameters turned into buffers holding their projected values, zero points
  int32.

What an exporter walks: ``QuantConv2d``/``QuantLinear`` modules with
``.weight``, ``.bias``, ``.weight_quantizer`` and ``.input_quantizer`` (each a
Quantizer or ``None``), and standalone Quantizers on the inputs of residual
adds. A Quantizer exposes ``.spec``, ``.scale``, ``.zero_point``, ``.alpha``,
``.bounds`` (uniform) and ``.qparams()``. Layers left in float stay ordinary
modules.
"""

from __future__ import annotations

import copy

from torch import nn

from .nn import QuantConvBn2d
from .prepare import name_quantizers, set_module
from .qat import quantizers


def convert(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in inference form (see the module docstring); its
    output equals that of ``model`` with frozen BN (or in eval mode)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)
    if isinstance(model, QuantConvBn2d):
        model = model.fold()
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantConvBn2d):
            set_module(model, name, module.fold())
    for _, q in quantizers(model):
        q.freeze()
    name_quantizers(model)
    return model.eval()
