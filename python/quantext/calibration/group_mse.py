""":class:`GroupMSEObserver`: the ``mse`` range of per-group weight quantizers,
searched on the weight itself.

A histogram per group (what the per-tensor and per-channel ``mse`` method
searches) would cost 2048 bins for every 32-256 weights. A group holds few
enough values to search directly: for each candidate clip ``r * max`` (``r``
from 0.1 to 1 in steps of 0.01), the group is fake-quantized on the spec's
actual grid by the quantext op and its squared error summed; each group keeps
the ``r`` of least error (the largest on ties, so a group that no clip
improves keeps its max).
"""

from __future__ import annotations

import torch

from .._ops import ops
from ..spec import MIN_SCALE, QuantSpec
from .observers import GroupMinMaxObserver

RATIOS = torch.linspace(0.1, 1.0, 91).tolist()


class GroupMSEObserver(GroupMinMaxObserver):
    """:class:`GroupMinMaxObserver` that also keeps the last tensor it observed
    (a weight: the same tensor every batch; one float32 copy of it, not part of
    the state dict) and answers ``calibration="mse"`` with the clip of least
    squared error per group (module docstring); ``"max"`` as its parent."""

    def __init__(self, axis: int, group_size: int) -> None:
        super().__init__(axis, group_size)
        self._groups: torch.Tensor | None = None

    def _record(self, x: torch.Tensor) -> None:
        super()._record(x)
        self._groups = self._per_channel_view(x.detach()).clone()

    def compute_range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        if spec.calibration != "mse":
            return super().compute_range(spec)
        if self._groups is None:
            raise RuntimeError("GroupMSEObserver: the mse search needs the observed tensor, which a state dict does "
                               "not hold: observe the weight again (qx.calibrate does)")
        lo, hi = super().compute_range(spec.replace(calibration="max"))
        best, best_err = torch.ones_like(hi), torch.full_like(hi, float("inf"))
        for r in reversed(RATIOS):  # strict improvement only: ties keep the larger clip
            err = self._error(spec, lo * r, hi * r)
            better = err < best_err
            best, best_err = torch.where(better, r, best), torch.where(better, err, best_err)
        return lo * best, hi * best

    def _error(self, spec: QuantSpec, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Per group, the squared error of the grid that maps ``[lo, hi]`` (the rule of ``qparams_from_range``)."""
        qmin, qmax = spec.bounds
        if spec.symmetric:
            scale = (torch.maximum(lo.abs(), hi.abs()) / qmax).clamp_min(MIN_SCALE)
            zero_point = torch.zeros_like(scale, dtype=torch.int32)
        else:
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
            scale = ((hi - lo) / (qmax - qmin)).clamp_min(MIN_SCALE)
            zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
        x = self._groups
        y = ops.fake_quant_uniform(x, scale.to(x.device), zero_point.to(x.device), qmin, qmax, 0)
        return (y - x).double().pow(2).sum(1)
