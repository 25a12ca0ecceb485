"""Observers: modules that watch a tensor during calibration and turn what
they saw into a clipping range ``(lo, hi)``.

:class:`MinMaxObserver` (``max``), :class:`GroupMinMaxObserver` (per-group
quantizers) and the base class; the histogram observer that every other method
needs is :class:`~quantext.calibration.HistogramObserver`.

Every observer keeps its statistics in buffers (so ``state_dict`` and
checkpoints carry them), records under ``torch.no_grad``, reduces them across
DDP ranks with :meth:`Observer.all_reduce_`, and answers
:meth:`Observer.compute_range` with tensors of shape ``[]`` (per tensor) or
``[C]`` (per channel along ``axis``).
"""

from __future__ import annotations


from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .._thread_lock import ThreadLock, module_lock
from ..spec import QuantSpec


def observed_input(x: torch.Tensor, who: str) -> torch.Tensor:
    """``x`` detached, checked: a real tensor; integers become float32 (float64 for 64-bit ints)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{who}: expected a tensor, got {type(x).__name__}")
    if x.is_complex():
        raise TypeError(f"{who}: cannot observe a complex tensor ({x.dtype}): its imaginary part would be dropped")
    x = x.detach()
    if not x.is_floating_point():
        x = x.double() if x.dtype == torch.int64 else x.float()
    return x


def finite_extremes(x: torch.Tensor, dims: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max over ``dims`` (all when None) of the finite values of ``x``
    (``+inf`` / ``-inf`` where there is none), in ``x``'s dtype, with one
    temporary the size of ``x``."""
    inf = float("inf")
    t = torch.nan_to_num(x, nan=inf, posinf=inf, neginf=inf)
    lo = t.amin() if dims is None else t.amin(dims)
    torch.nan_to_num(x, nan=-inf, posinf=-inf, neginf=-inf, out=t)
    hi = t.amax() if dims is None else t.amax(dims)
    return lo, hi


def _sign_counts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Number of negative and of finite values of ``x``, counted on views of about a
    sixteenth of it (the masks stay well below the input's size)."""
    if x.dim() == 0:
        x = x.reshape(1)
    d = max(range(x.dim()), key=lambda i: x.shape[i])
    step = max(1, -(-x.shape[d] // 16))
    negatives = torch.zeros((), dtype=torch.int64, device=x.device)
    finite = torch.zeros((), dtype=torch.int64, device=x.device)
    for c in x.split(step, dim=d):
        negatives += (c < 0).sum()
        finite += torch.isfinite(c).sum()
    return negatives, finite


def keeping_dtypes(fn, tensors) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` for ``nn.Module._apply`` that moves ``tensors`` (None entries allowed)
    to the device ``fn`` gives them but keeps their dtype."""
    own = {id(t) for t in tensors if t is not None}

    def keep_dtype(t: torch.Tensor) -> torch.Tensor:
        out = fn(t)
        if id(t) in own and isinstance(out, torch.Tensor) and out.dtype != t.dtype:
            return t.to(device=out.device)
        return out

    return keep_dtype


class Observer(nn.Module):
    """Base class. ``axis=None`` observes per tensor, else per index of ``axis``.

    Observers accept float16/bfloat16/float32/float64 (and integer) tensors and
    keep the input's precision (a float64 value beyond float32's range is
    recorded as it is, not as ``inf``); recording is serialized by a lock, so
    several threads may feed one observer."""

    def __init__(self, axis: int | None = None) -> None:
        super().__init__()
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
            raise TypeError(f"{type(self).__name__}: axis must be an int or None, got {axis!r}")
        self.axis = axis
        self._lock = ThreadLock()

    def _apply(self, fn, recurse: bool = True):
        """Moves the statistics with the module but keeps their dtypes: casting a model
        (``model.half()``) must not round the recorded ranges."""
        return super()._apply(keeping_dtypes(fn, self._buffers.values()), recurse)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Records ``x`` (returned unchanged)."""
        values = observed_input(x, type(self).__name__)
        if values.numel():
            with module_lock(self):
                self._record(values)
        return x

    def _record(self, x: torch.Tensor) -> None:
        """Adds the checked, non-empty values ``x`` to the statistics."""
        raise NotImplementedError

    def _axis_of(self, x: torch.Tensor) -> int | None:
        if self.axis is None:
            return None
        if not -x.dim() <= self.axis < max(x.dim(), 1) or x.dim() == 0:
            raise ValueError(f"{type(self).__name__}: axis={self.axis} is out of range for a tensor of shape "
                             f"{tuple(x.shape)}")
        return self.axis % x.dim()

    def _reduce_dims(self, x: torch.Tensor) -> tuple[int | None, tuple[int, ...] | None]:
        axis = self._axis_of(x)
        return axis, None if axis is None else tuple(d for d in range(x.dim()) if d != axis)

    def _per_channel_view(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``[C, -1]`` (per channel) or ``[1, -1]`` (per tensor), float32."""
        x = observed_input(x, type(self).__name__).float()
        axis = self._axis_of(x)
        if axis is None:
            return x.reshape(1, -1)
        return x.movedim(axis, 0).reshape(x.shape[axis], -1)

    @property
    def observed(self) -> bool:
        """Whether any data has been recorded."""
        raise NotImplementedError

    def compute_range(self, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Clipping range for ``spec`` (its ``calibration`` method)."""
        raise NotImplementedError

    def negative_fraction(self) -> float | None:
        """Fraction of the finite values recorded that were negative (what an
        unsigned grid without a zero point clips to 0), or ``None`` when it is
        not known (statistics loaded from a state dict)."""
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
        # Counts of negative and of finite values, for negative_fraction(); not saved (older state
        # dicts lack them), so a loaded observer does not know the fraction.
        self.register_buffer("negatives", torch.zeros((), dtype=torch.int64), persistent=False)
        self.register_buffer("finite", torch.zeros((), dtype=torch.int64), persistent=False)

    @property
    def observed(self) -> bool:
        return self.min_val.numel() > 0

    def _extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (``[C]``) or per-tensor (``[1]``) finite min and max of ``x``."""
        axis, dims = self._reduce_dims(x)
        lo, hi = finite_extremes(x, dims)
        return lo.reshape(-1), hi.reshape(-1)

    def _record(self, x: torch.Tensor) -> None:
        lo, hi = self._extremes(x)
        if bool((lo > hi).any()):
            bad = int((lo > hi).nonzero()[0, 0])
            where = " (every value is NaN or inf)" if lo.numel() == 1 else f" (channel/group {bad})"
            raise ValueError(f"{type(self).__name__}: a channel has no finite values to observe{where}")
        # min/max statistics are float32 (what the scale is computed in), but saturate
        # instead of becoming inf for float64 values beyond float32's range.
        f32 = torch.finfo(torch.float32).max
        lo, hi = lo.double().clamp(-f32, f32).float(), hi.double().clamp(-f32, f32).float()
        negatives, finite = _sign_counts(x)
        self.negatives += negatives
        self.finite += finite
        if not self.observed:
            self.min_val, self.max_val = lo, hi
        elif self.averaging_constant is None:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)
        else:
            c = self.averaging_constant
            self.min_val = self.min_val + c * (lo - self.min_val)
            self.max_val = self.max_val + c * (hi - self.max_val)

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

    def negative_fraction(self) -> float | None:
        finite = int(self.finite)
        return int(self.negatives) / finite if finite else None

    def all_reduce_(self, group=None) -> None:
        if not (dist.is_available() and dist.is_initialized()) or not self.observed:
            return
        dist.all_reduce(self.negatives, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(self.finite, op=dist.ReduceOp.SUM, group=group)
        if self.averaging_constant is not None:
            dist.all_reduce(self.min_val, op=dist.ReduceOp.SUM, group=group)
            dist.all_reduce(self.max_val, op=dist.ReduceOp.SUM, group=group)
            world = dist.get_world_size(group)
            self.min_val /= world
            self.max_val /= world
        else:
            dist.all_reduce(self.min_val, op=dist.ReduceOp.MIN, group=group)
            dist.all_reduce(self.max_val, op=dist.ReduceOp.MAX, group=group)


class GroupMinMaxObserver(MinMaxObserver):
    """Min/max of each group of ``group_size`` consecutive elements along ``axis``
    (per-group quantizers), flattened in the order of the per-group parameter tensor."""

    def __init__(self, axis: int, group_size: int) -> None:
        super().__init__(axis=axis)
        self.group_size = group_size

    def _per_channel_view(self, x: torch.Tensor) -> torch.Tensor:
        x = observed_input(x, type(self).__name__).float()
        axis = self._axis_of(x)
        grouped = x.unflatten(axis, (-1, self.group_size)).movedim(axis + 1, -1)
        return grouped.reshape(-1, self.group_size)

    def _extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        axis = self._axis_of(x)
        grouped = x.unflatten(axis, (-1, self.group_size))  # a view: reduce over every dim but the groups'
        lo, hi = finite_extremes(grouped, (axis + 1,))
        # the order of the per-group parameter tensor: x's shape with size/group on axis
        return lo.reshape(-1), hi.reshape(-1)
