"""``convert``: the inference form of a QAT model.

The result is a deep copy in eval mode in which

- every :class:`~quantext.nn.QuantConvBn2d` is replaced by the
  :class:`~quantext.nn.QuantConv2d` of its folded weight ``W * gamma / sigma_run``
  and bias ``beta - (mu_run - b) * gamma / sigma_run`` (``QuantConvBnReLU2d``
  by ``nn.Sequential(conv=QuantConv2d, relu=nn.ReLU())``): no BatchNorm of a
  fused pair remains;
- every other BatchNorm (one that follows no convolution: DenseNet's
  ``norm -> relu -> conv``, a BN after an add, ``BatchNorm1d`` after a Linear)
  is replaced by the :class:`~quantext.nn.ChannelAffine` it computes in eval
  mode (float ``Mul``/``Add`` in ONNX), so no BatchNorm remains at all;
- every :class:`~quantext.nn.Quantizer` is frozen: observer off, learned
  parameters turned into buffers holding their projected values, zero points
  int32.

Folding never produces NaN or inf: a channel with ``var + eps = 0`` folds to
weight 0 and bias ``beta``; running statistics that are not finite (a diverged
run), a BatchNorm without running statistics, or a fold that overflows the
dtype are errors naming the module.

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

from .nn import ChannelAffine, QuantConvBn2d
from .prepare import name_quantizers, set_module
from .qat import quantizers


def _fold(module: nn.Module, name: str) -> nn.Module | None:
    """The inference form of a BN-holding module, or ``None`` when it has none."""
    if isinstance(module, QuantConvBn2d):
        return module.fold(name)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return ChannelAffine.from_batchnorm(module, name)
    return None


def convert(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in inference form (see the module docstring); its
    output equals that of ``model`` with frozen BN (or in eval mode)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model)
    folded = _fold(model, type(model).__name__)
    if folded is not None:
        model = folded
    # Fused modules first: their own BatchNorm goes with them, it must not become an affine.
    for kinds in (QuantConvBn2d, nn.modules.batchnorm._BatchNorm):
        for name, module in list(model.named_modules()):
            if name and isinstance(module, kinds):
                set_module(model, name, _fold(module, name))
    for _, q in quantizers(model):
        q.freeze()
    name_quantizers(model)
    return model.eval()
