"""``calibrate``: sets every quantizer of a model from the data it sees, and
``calibration_report``: what the last calibration found (scale floors hit,
negative values clipped, signs decided from the data).

The building blocks (observers, range methods) are in :mod:`quantext.calibration`.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm.auto import tqdm

from ._transaction import ModuleSnapshot, atomic
from .nn import QuantConvBn2d
from .prepare import name_quantizers
from .qat import quantizers

BN_MODES = ("auto", "running", "batch")
_LISTED = 8
"""Quantizers named in one summary warning (the report lists them all)."""


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


@dataclass(frozen=True)
class CalibrationReport:
    """What calibration found, per quantizer (qualified names).

    Attributes:
        floored: quantizers whose data asked for a scale (``alpha``) below
            their ``min_scale`` floor, with the smallest value asked for; they
            use the floor, a grid coarser than their data.
        clipped: quantizers with an unsigned spec without a zero point whose
            data held negative values, with the fraction of values clipped to 0
            (``None``: unknown).
        signs: quantizers whose spec has ``sign_from_data``, with the
            ``signed`` calibration decided.
        batch_stats: BatchNorm modules that ran with batch statistics (see
            :func:`calibrate`'s ``bn``).
    """

    floored: dict[str, float] = field(default_factory=dict)
    clipped: dict[str, float | None] = field(default_factory=dict)
    signs: dict[str, bool] = field(default_factory=dict)
    batch_stats: tuple[str, ...] = ()


def calibration_report(model: nn.Module) -> CalibrationReport:
    """The findings of the last range computation of every quantizer of ``model``
    (after :func:`calibrate`, which also warns about them); ``batch_stats`` is
    that of the last :func:`calibrate` call on ``model``."""
    floored, clipped, signs = {}, {}, {}
    for name, q in quantizers(model):
        f = q.findings
        if f is None:
            continue
        if f.floored is not None:
            floored[name] = f.floored
        if f.clipped_fraction is None or f.clipped_fraction > 0:
            clipped[name] = f.clipped_fraction
        if q.spec.sign_from_data:
            signs[name] = f.signed
    return CalibrationReport(floored, clipped, signs, getattr(model, "_quantext_batch_stats", ()))


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], method: str | None = None, num_batches: int | None = None,
              progress: bool = True, bn: str = "auto") -> nn.Module:
    """Sets every quantizer's parameters from the ranges observed on ``batches``.

    Runs the model in eval mode without gradients, with every quantizer observing
    and fake quantization off (observers see float activations). Under
    ``torch.distributed`` the statistics are reduced across ranks first, so every
    rank ends with the range of all ranks' data. A model sharded by FSDP2's
    ``fully_shard`` whose quantizers hold learned parameters is refused (a
    ValueError): calibrate before sharding (docs/distributed.md). Afterwards
    fake quantization is on, observers are off and every module is back in its
    previous train/eval mode. Dynamic quantizers (``QuantSpec(dynamic=True)``)
    take each input's range and have nothing to calibrate.

    Args:
        model: a prepared model (may be wrapped in DDP).
        batches: an iterable of inputs: tensors, ``(inputs, targets)`` tuples or
            lists (the first element is fed), or dicts of keyword arguments.
        method: range method for activation quantizers, overriding their
            ``spec.calibration`` (weights keep their own, normally ``"max"``).
        num_batches: stop after this many batches.
        progress: show a tqdm progress bar.
        bn: which statistics BatchNorm layers (``nn.BatchNorm*`` and the BN of
            :class:`~quantext.nn.QuantConvBn2d` before ``freeze_bn``) normalize
            with while calibrating: ``"running"`` (eval mode), ``"batch"`` (each
            batch's own, as in training) or ``"auto"``: batch statistics for a
            BatchNorm whose running statistics were never updated (zero mean,
            unit variance, no batch tracked: an untrained network), running ones
            otherwise. An untrained network's eval-mode activations are not
            those it trains on (they can be 1e-6 of them), so ranges calibrated
            on them clip everything in the first training step and the
            gradients explode. Running statistics, counters and momentum are
            left as they were (batch 1 with 1x1 feature maps cannot use batch
            statistics: an error says so).

    Observers start fresh: earlier statistics are discarded.

    Findings are reported in one warning each (the first quantizers named) and
    kept for :func:`calibration_report`: scales that hit their floor, negative
    values clipped by an unsigned spec without a zero point; ``sign_from_data``
    specs become signed or unsigned from the data.

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
    if bn not in BN_MODES:
        raise ValueError(f"calibrate: bn must be one of {BN_MODES}, got {bn!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"calibrate: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(batches, torch.Tensor):
        raise TypeError("calibrate: batches must be an iterable of batches (e.g. [x] or a DataLoader), got a single "
                        "tensor (it would be iterated along its first dimension)")
    if not hasattr(batches, "__iter__"):
        raise TypeError(f"calibrate: batches must be an iterable of batches, got {type(batches).__name__}")
    name_quantizers(model)
    every = [q for _, q in quantizers(model)]
    if not every:
        raise ValueError("calibrate: the model has no quantext Quantizer (run qx.prepare_qat first)")
    qs = [q for q in every if not q.spec.dynamic]  # dynamic ones take each input's range: nothing to calibrate
    if not qs:
        return model
    sharded = _learnable_under_fully_shard(model, qs)
    if sharded:
        raise ValueError(f"calibrate: the model is sharded by fully_shard (FSDP2) and {len(sharded)} quantizers hold "
                         f"learned parameters (e.g. {sharded[0]!r}): their calibrated values would go to unsharded "
                         "copies that FSDP discards; calibrate before fully_shard (docs/distributed.md)")
    modules = [m for q in qs for m in q.modules()]
    atomic(modules, lambda: _calibrate(model, qs, batches, method, num_batches, progress, bn))
    _warn_findings(calibration_report(model))
    return model


def _learnable_under_fully_shard(model: nn.Module, qs: list) -> list[str]:
    """Names of the quantizers with parameters when ``model`` holds an FSDP2
    module. fully_shard replaces parameters by shards and all-gathered copies
    that it frees or overwrites, so calibrated values written into whichever
    is registered are lost (buffers it leaves alone)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: nothing can be sharded
    if fsdp is None or not any(isinstance(m, fsdp.FSDPModule) for m in model.modules()):
        return []
    return [q.name for q in qs if next(q.parameters(recurse=False), None) is not None]


def _untrained(bn: _BatchNorm) -> bool:
    """Running statistics still at their initial values (no batch ever tracked)."""
    return bn.track_running_stats and bn.running_mean is not None and int(bn.num_batches_tracked) == 0 and \
        bool((bn.running_mean == 0).all() and (bn.running_var == 1).all())


def _batch_stat_modules(model: nn.Module, bn: str) -> dict[str, tuple[nn.Module, _BatchNorm]]:
    """The modules to run in training mode (with the BatchNorm whose statistics they use)."""
    if bn == "running":
        return {}
    folded = {id(m.bn) for m in model.modules() if isinstance(m, QuantConvBn2d)}
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantConvBn2d):
            norm = m.bn
            if m.is_bn_frozen:
                continue
        elif isinstance(m, _BatchNorm) and id(m) not in folded and m.track_running_stats:
            norm = m
        else:
            continue
        if bn == "batch" or _untrained(norm):
            out[name] = (m, norm)
    return out


def _calibrate(model: nn.Module, qs: list, batches: Iterable[Any], method: str | None, num_batches: int | None,
               progress: bool, bn: str) -> None:
    for q in qs:
        q.reset_observer(method if method is not None and q.role == "activation" else None)
        q.observe(True).disable()
    modes = {m: m.training for m in model.modules()}
    batch_stats = _batch_stat_modules(model, bn)
    # Running statistics, counters (num_batches_tracked, qat_steps, bn_frozen) and momentum come back afterwards.
    kept = ModuleSnapshot(m for pair in batch_stats.values() for m in pair)
    model.eval()
    for module, norm in batch_stats.values():
        module.train()
        norm.momentum = 0.0  # the running statistics (and a QuantConvBn2d's folded weight) stay put meanwhile
    try:
        total = num_batches if num_batches is not None else (len(batches) if hasattr(batches, "__len__") else None)
        for i, batch in enumerate(tqdm(batches, total=total, desc="calibrate", disable=not progress)):
            try:
                _run(model, batch, i)
            except ValueError as err:
                if batch_stats and "value per channel" in str(err):
                    raise ValueError(f"calibrate: {err}; bn={bn!r} normalizes {len(batch_stats)} BatchNorm layers "
                                     f"(e.g. {next(iter(batch_stats))!r}) with batch statistics, which needs more "
                                     "than one value per channel: use larger batches, or bn='running'") from err
                raise
            if num_batches is not None and i + 1 >= num_batches:
                break
    finally:
        kept.restore()
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
            q.compute_qparams(warn=False)
        except (ValueError, RuntimeError) as err:
            raise type(err)(f"calibrate: Quantizer '{q.name}': {err}; nothing was changed") from err
        q.enable()
    model._quantext_batch_stats = tuple(batch_stats)


def _listing(items: dict[str, Any], fmt) -> str:
    shown = ", ".join(f"{name} ({fmt(v)})" for name, v in list(items.items())[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _warn_findings(report: CalibrationReport) -> None:
    if report.clipped:
        warnings.warn(f"calibrate: {len(report.clipped)} quantizers have an unsigned spec without a zero point but saw "
                      "negative values, which they clip to 0 (fraction of values clipped): "
                      f"{_listing(report.clipped, lambda v: '?' if v is None else f'{v:.1%}')}; use signed=True, "
                      "sign_from_data=True or symmetric=False (qx.calibration_report(model).clipped lists them)",
                      stacklevel=3)
    if report.floored:
        warnings.warn(f"calibrate: {len(report.floored)} quantizers hit the scale floor (min_scale): their data asked "
                      f"for a smaller scale (value asked for): {_listing(report.floored, lambda v: f'{v:.3g}')}; "
                      "their grids are coarser than their data (qx.calibration_report(model).floored lists them)",
                      stacklevel=3)
