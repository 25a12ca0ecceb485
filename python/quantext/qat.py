"""Whole-model QAT helpers: turn quantizers on/off, calibrate them, freeze BN."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from .nn import Quantizer, QuantConvBn2d
from .prepare import name_quantizers


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
    from now on: the forward pass is the graph ``convert`` produces)."""
    for module in model.modules():
        if isinstance(module, QuantConvBn2d):
            module.freeze_bn()
    return model


def _run(model: nn.Module, batch: Any) -> None:
    if isinstance(batch, dict):
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(batch[0])  # (inputs, targets) as data loaders yield them
    else:
        model(batch)


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], method: str | None = None, num_batches: int | None = None,
              progress: bool = True) -> nn.Module:
    """Sets every quantizer's parameters from the ranges observed on ``batches``.

    Runs the model in eval mode without gradients, with every quantizer observing
    and fake quantization off (observers see float activations). Under
    ``torch.distributed`` the statistics are reduced across ranks first, so every
    rank ends with the range of all ranks' data. Afterwards fake quantization is
    on, observers are off and every module is back in its previous train/eval mode.

    Args:
        model: a prepared model (may be wrapped in DDP).
        batches: an iterable of inputs: tensors, ``(inputs, targets)`` tuples or
            lists (the first element is fed), or dicts of keyword arguments.
        method: range method for activation quantizers, overriding their
            ``spec.calibration`` (weights keep their own, normally ``"max"``).
        num_batches: stop after this many batches.
        progress: show a tqdm progress bar.

    Observers start fresh: earlier statistics are discarded.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415 (only needed here)

    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}")
    name_quantizers(model)
    qs = [q for _, q in quantizers(model)]
    if not qs:
        raise ValueError("calibrate: the model has no quantext Quantizer (run qx.prepare_qat first)")
    for q in qs:
        q.reset_observer(method if method is not None and q.role == "activation" else None)
        q.observe(True).disable()
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        total = num_batches if num_batches is not None else (len(batches) if hasattr(batches, "__len__") else None)
        for i, batch in enumerate(tqdm(batches, total=total, desc="calibrate", disable=not progress)):
            _run(model, batch)
            if num_batches is not None and i + 1 >= num_batches:
                break
    finally:
        for m, mode in modes.items():
            m.training = mode
        for q in qs:
            q.observe(False)
    distributed = dist.is_available() and dist.is_initialized()
    unobserved = []
    for q in qs:
        if distributed:
            q.observer.all_reduce_()
        if q.observer.observed:
            q.compute_qparams()
        else:
            unobserved.append(q.name)
        q.enable()
    if unobserved:
        raise RuntimeError(f"calibrate: these quantizers saw no data (not on the path of the batches?): {unobserved}")
    return model
