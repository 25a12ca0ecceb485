"""Histogram ops for calibration: counts of ``x`` over a range, and of ``|x|``
split by sign (the statistics the observers keep)."""

from __future__ import annotations

import torch

from .._ops import ops
from ..functional import int_arg


def _as_range_tensor(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    # float64: the kernels bin in double, and a float32 tensor would move a Python float end.
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(float(value), dtype=torch.float64, device=like.device)


def histogram(x: torch.Tensor, bins: int, lo: torch.Tensor | float, hi: torch.Tensor | float,
              axis: int | None = None) -> torch.Tensor:
    """Counts (int64) of the values of ``x`` in ``bins`` equal bins over ``[lo, hi]``.

    Bins are ``[lo + i*w, lo + (i+1)*w)``; ``hi`` itself counts in the last bin.
    Values outside ``[lo, hi]`` and NaN are not counted. ``axis``: one histogram
    per index of ``axis`` (``lo``/``hi`` of shape ``[C]``, result ``[C, bins]``).
    ``lo``/``hi`` may live on the device: the CUDA kernel reads them there.
    """
    return ops.histogram(x, int_arg("bins", bins), _as_range_tensor(lo, x), _as_range_tensor(hi, x), axis)


def magnitude_histogram(x: torch.Tensor, bins: int, amax: torch.Tensor | float,
                        axis: int | None = None) -> torch.Tensor:
    """Histogram of ``|x|`` over ``[0, amax]`` split by sign: ``[2, bins]``
    (``[C, 2, bins]`` with ``axis``), row 0 counting ``x < 0``, row 1 ``x >= 0``.

    The sum of the two rows is the ``|x|`` histogram; ``cat(flip(row 0), row 1)``
    is the histogram of ``x`` over ``[-amax, amax]`` in ``2 * bins`` bins.
    """
    return ops.magnitude_histogram(x, int_arg("bins", bins), _as_range_tensor(amax, x), axis)
