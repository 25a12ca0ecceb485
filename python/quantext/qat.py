"""Whole-model QAT switches: list the quantizers, turn them on/off, freeze BN.
Calibrating them is :func:`quantext.calibrate` (:mod:`quantext.model_calibration`)."""

from __future__ import annotations

from typing import Iterator

from torch import nn

from .nn import Quantizer, QuantConvBn2d


def quantizers(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    """Every :class:`Quantizer` in ``model`` with its qualified name (module order,
    the same on every DDP rank)."""
    for name, module in model.named_modules():
        if isinstance(module, Quantizer):
            yield name, module


def enable_quant(model: nn.Module) -> nn.Module:
    """Turns fake quantization on in every quantizer."""
    for _, q in quantizers(model):
        q.enable()
    return model


def disable_quant(model: nn.Module) -> nn.Module:
    """Turns fake quantization off in every quantizer (the model then computes in float)."""
    for _, q in quantizers(model):
        q.disable()
    return model


def freeze_bn(model: nn.Module) -> nn.Module:
    """Freezes the BN statistics of every BN-folded module (running statistics only
    from now on: the forward pass is the graph ``convert`` produces). A BatchNorm
    that follows no convolution stays an ``nn.BatchNorm*d``: it uses batch
    statistics in training mode and its running ones in eval mode, where it equals
    the :class:`~quantext.nn.ChannelAffine` that ``convert`` makes of it."""
    for module in model.modules():
        if isinstance(module, QuantConvBn2d):
            module.freeze_bn()
    return model
