"""``compute_clip``: the clipping range of a tensor or an observer, in one call."""

from __future__ import annotations

import torch

from ..spec import QuantSpec
from .histogram_observer import HistogramObserver


def compute_clip(data: torch.Tensor, method: str | None = None, spec: QuantSpec | None = None, *,
                 bins: int = 2048, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipping range ``(lo, hi)`` of ``data`` for ``spec`` with calibration ``method``.

    ``data`` is a raw tensor (observed per tensor, or per channel along
    ``spec.axis`` for a per-channel spec) or a
    :class:`~quantext.calibration.HistogramObserver` that has already
    observed. ``method`` defaults to ``spec.calibration``; ``spec`` to an 8-bit
    signed symmetric per-tensor uniform grid. ``options`` are those of
    :func:`~quantext.calibration.range_from_stats` (``kl_variant``,
    ``kl_start_bin``, ``aciq_prior``, ``aciq_sigma``, ``levels``). Shapes:
    ``[]`` per tensor, ``[C]`` per channel.
    """
    spec = spec if spec is not None else QuantSpec()
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    if method is not None:
        spec = spec.replace(calibration=method)
    if isinstance(data, HistogramObserver):
        return data.compute_range(spec, **options)
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a tensor or a HistogramObserver, got {type(data).__name__}")
    if data.numel() == 0:
        raise ValueError(f"data is empty (shape {tuple(data.shape)}): there is nothing to calibrate")
    observer = HistogramObserver(axis=spec.per_channel_axis, bins=bins).to(data.device)
    observer(data)
    return observer.compute_range(spec, **options)
