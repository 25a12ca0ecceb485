"""Observers: modules that watch a tensor during calibration and turn what
they saw into a clipping range ``(lo, hi)``.

Every observer keeps its statistics in buffers (so ``state_dict`` and
checkpoints carry them), records under ``torch.no_grad``, reduces them across
DDP ranks with :meth:`Observer.all_reduce_`, and answers
:meth:`Observer.compute_range` with tensors of shape ``[]`` (per tensor) or
``[C]`` (per channel along ``axis``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from .spec import QuantSpec


class Observer(nn.Module):
    """Base class. ``axis=None`` observes per tensor, else per index of ``axis``."""

    def __init__(self, axis: int | None = None) -> None:
        super().__init__()
        self.axis = axis

    def _per_channel_view(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``[C, -1]`` (per channel) or ``[1, -1]`` (per tensor), float32."""
        x = x.detach().float()
        if self.axis is None:
            return x.reshape(1, -1)
        return x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)

    @property
    def observed(self) -> bool:
        """Whether any data has been recorded."""
        raise NotImplementedError

    def compute_range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Clipping range for ``spec`` (its ``calibration`` method)."""
        raise NotImplementedError

    def all_reduce_(self, group=None) -> None:
        """Combine statistics across the ranks of ``group`` (no-op without DDP)."""
        raise NotImplementedError

    def _squeeze(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(()) if self.axis is None else t

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Statistics start empty and take their shape from the data: take the
        # saved shapes so that a loaded observer is usable.
        for name, buf in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if buf is not None and saved is not None and saved.shape != buf.shape:
                self._buffers[name] = torch.empty(saved.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MinMaxObserver(Observer):
    """Running min / max (``averaging_constant=None``) or their moving average."""

    def __init__(self, axis: int | None = None, averaging_constant: float | None = None) -> None:
        super().__init__(axis)
        if averaging_constant is not None and not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must be in (0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant
        self.register_buffer("min_val", torch.tensor([]))
        self.register_buffer("max_val", torch.tensor([]))

    @property
    def observed(self) -> bool:
        return self.min_val.numel() > 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == 0:
            return x
        v = self._per_channel_view(x)
        finite = v.isfinite()
        if not finite.any(dim=1).all():
            raise ValueError(f"{type(self).__name__}: a channel has no finite values to observe")
        lo = torch.where(finite, v, torch.inf).amin(dim=1)
        hi = torch.where(finite, v, -torch.inf).amax(dim=1)
        if not self.observed:
            self.min_val, self.max_val = lo, hi
        elif self.averaging_constant is None:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)
        return x

    def compute_range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.observed:
            raise RuntimeError(f"{type(self).__name__}: compute_range called before any data was observed")
        if spec.calibration != "max":
            raise ValueError(f"{type(self).__name__} supports calibration='max' only, got {spec.calibration!r}; "
                             "use a HistogramObserver")
        lo, hi = self.min_val, self.max_val
        if spec.symmetric:
            hi = torch.maximum(lo.abs(), hi.abs())
            lo = -hi if spec.signed else torch.zeros_like(hi)
        return self._squeeze(lo), self._squeeze(hi)

    def all_reduce_(self, group=None) -> None:
        if not (dist.is_available() and dist.is_initialized()) or not self.observed:
            return
        if self.averaging_constant is not None:
            dist.all_reduce(self.min_val, op=dist.ReduceOp.SUM, group=group)
            dist.all_reduce(self.max_val, op=dist.ReduceOp.SUM, group=group)
            world = dist.get_world_size(group)
            self.min_val /= world
            self.max_val /= world
        else:
            dist.all_reduce(self.min_val, op=dist.ReduceOp.MIN, group=group)
            dist.all_reduce(self.max_val, op=dist.ReduceOp.MAX, group=group)



def make_observer(spec: QuantSpec) -> Observer:
    """The observer that ``spec.calibration`` needs, per tensor or per channel."""
    axis = spec.per_channel_axis
    if spec.calibration == "max":
        return MinMaxObserver(axis=axis)
    from .histogram_observer import HistogramObserver  # noqa: PLC0415 (calibration module, issue 5)

    return HistogramObserver(axis=axis)
