"""``calibrate``: sets every quantizer of a model from the data it sees.

The building blocks (observers, range methods) are in :mod:`quantext.calibration`.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ._transaction import atomic
from .prepare import name_quantizers
from .qat import quantizers


def _run(model: nn.Module, batch: Any, index: int) -> None:
    if batch is None or (isinstance(batch, (tuple, list)) and (not batch or batch[0] is None)):
        raise TypeError(f"calibrate: batch {index} of `batches` is {batch!r}: expected a tensor, an (inputs, targets) "
                        "tuple/list or a dict of keyword arguments")
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

    All or nothing: when calibration fails (a batch that cannot run, a
    quantizer whose data had no finite value, one that saw no data), every
    quantizer is put back exactly as it was before the call (parameters,
    flags, observers) and the error names the quantizer; a failed calibrate
    never leaves a model that quietly runs in float.
    """
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)):
        raise TypeError(f"num_batches must be an int or None, got {num_batches!r}")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(batches, torch.Tensor):
        raise TypeError("calibrate: batches must be an iterable of batches (e.g. [x] or a DataLoader), got a single "
                        "tensor (it would be iterated along its first dimension)")
    if not hasattr(batches, "__iter__"):
        raise TypeError(f"calibrate: batches must be an iterable of batches, got {type(batches).__name__}")
    name_quantizers(model)
    qs = [q for _, q in quantizers(model)]
    if not qs:
        raise ValueError("calibrate: the model has no quantext Quantizer (run qx.prepare_qat first)")
    modules = [m for q in qs for m in q.modules()]
    return atomic(modules, lambda: _calibrate(model, qs, batches, method, num_batches, progress))


def _calibrate(model: nn.Module, qs: list, batches: Iterable[Any], method: str | None, num_batches: int | None,
               progress: bool) -> nn.Module:
    for q in qs:
        q.reset_observer(method if method is not None and q.role == "activation" else None)
        q.observe(True).disable()
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        total = num_batches if num_batches is not None else (len(batches) if hasattr(batches, "__len__") else None)
        for i, batch in enumerate(tqdm(batches, total=total, desc="calibrate", disable=not progress)):
            _run(model, batch, i)
            if num_batches is not None and i + 1 >= num_batches:
                break
    finally:
        for m, mode in modes.items():
            m.training = mode
        for q in qs:
            q.observe(False)
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        for q in qs:
            q.observer.all_reduce_()
    unobserved = [q.name for q in qs if not q.observer.observed]
    if unobserved:
        raise RuntimeError(f"calibrate: these quantizers saw no data (not on the path of the batches?): {unobserved}; "
                           "nothing was changed")
    for q in qs:
        try:
            q.compute_qparams()
        except (ValueError, RuntimeError) as err:
            raise type(err)(f"calibrate: Quantizer '{q.name}': {err}; nothing was changed") from err
        q.enable()
    return model
