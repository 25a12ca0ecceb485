"""Histogram observer: the statistics every calibration method needs.

Per tensor (or per channel along ``axis``) it keeps, in buffers:

- ``hist`` ``[C, 2, bins]`` int64: the histogram of ``|x|`` over
  ``[0, amax)``, split by sign (row 0: ``x < 0``, row 1: ``x >= 0``). The sum
  of the rows is the ``|x|`` histogram of symmetric specs; ``cat(flip(row 0),
  row 1)`` the ``x`` histogram of asymmetric ones.
- ``amax`` ``[C]``: the histogram's range, always a power of two, the
  smallest one above every ``|x|`` seen (0 while every value seen was 0).
- ``min_val``, ``max_val``, and ``count``, ``sum``, ``sum_sq`` of the finite
  values (float64), for ``max`` and ACIQ.

Growing range, exactly: bin ``j`` is ``[j * amax / bins, (j + 1) * amax /
bins)``. When a batch holds a larger ``|x|``, ``amax`` doubles ``k`` times and
old bin ``j`` moves to bin ``j >> k``: the old edges are a subset of the new
ones, so every old bin lies inside one new bin, and because the bin of ``v``
is ``floor(v * bins / amax)`` with a power-of-two ``amax`` (exact in floating
point) the merged counts equal, count for count, a histogram of all the data
built at the final range. The histogram therefore does not depend on the order
of the batches nor on how DDP split the data. The price: the data occupy
between half and all of the bins.

The input is observed in its own dtype (float64 values beyond float32's
range are recorded, not dropped) with one temporary the size of the input,
under the observer's lock (threads may share an observer).

Non-finite values are not counted (NaN, and +-inf which has no bin); a
batch without finite values leaves the statistics unchanged, and
:meth:`HistogramObserver.compute_range` raises ValueError if a channel never
saw one. Recording does not read device values on the host (no sync).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .._ops import ops
from ..spec import QuantSpec
from .observers import Observer
from .ranges import ACIQ_PRIORS, ACIQ_SIGMAS, KL_VARIANTS, check_option, range_from_stats
from .stats import HistogramStats

_STAT_BUFFERS = ("amax", "min_val", "max_val", "count", "sum", "sum_sq")


def _pow2_above(a: torch.Tensor) -> torch.Tensor:
    """The smallest power of two strictly above ``a`` (0 for ``a == 0``)."""
    return torch.where(a > 0, torch.ldexp(torch.ones_like(a), torch.frexp(a).exponent), 0.0)


def chunked_moments(x: torch.Tensor, axis: int | None, channels: int):
    """Per-channel count, sum, sum of squares, min and max of the finite values of
    ``x`` (float64; min/max ``+-inf`` where none), reducing over every dim but
    ``axis``. Computed on slices of ``x`` (views) whose float64 copies take
    about an eighth of ``x``'s bytes, so the temporaries stay well below the input's
    size whatever its dtype."""
    count = torch.zeros(channels, dtype=torch.int64, device=x.device)
    total = torch.zeros(channels, dtype=torch.float64, device=x.device)
    total_sq = torch.zeros(channels, dtype=torch.float64, device=x.device)
    lo = torch.full((channels,), torch.inf, dtype=torch.float64, device=x.device)
    hi = torch.full((channels,), -torch.inf, dtype=torch.float64, device=x.device)
    if x.dim() == 0:
        x = x.reshape(1)
    others = [d for d in range(x.dim()) if d != axis]
    # split along the largest dim that is not the channel axis (or along the axis itself)
    d = max(others, key=lambda i: x.shape[i]) if others else axis
    inner = x.numel() // max(x.shape[d], 1)
    budget = max(1 << 16, x.numel() * x.element_size() // 64)  # float64 elements per slice (1/8 of x)
    step = max(1, budget // max(inner, 1))
    for start in range(0, x.shape[d], step):
        c = x.narrow(d, start, min(step, x.shape[d] - start))
        dims = tuple(i for i in range(c.dim()) if i != axis)
        if d == axis:
            sl = slice(start, start + c.shape[d])
            acc = {"count": count[sl], "total": total[sl], "sq": total_sq[sl], "lo": lo[sl], "hi": hi[sl]}
        else:
            acc = {"count": count, "total": total, "sq": total_sq, "lo": lo, "hi": hi}
        n = c.shape[axis] if axis is not None else 1

        def red(t, op):
            return (getattr(t, op)(dims) if dims else t).reshape(n)

        t = c.to(torch.float64, copy=True)
        finite = torch.isfinite(t)
        acc["count"] += red(finite, "sum")
        del finite
        t.nan_to_num_(nan=torch.inf, posinf=torch.inf, neginf=torch.inf)
        torch.minimum(acc["lo"], red(t, "amin"), out=acc["lo"])
        t.copy_(c).nan_to_num_(nan=-torch.inf, posinf=-torch.inf, neginf=-torch.inf)
        torch.maximum(acc["hi"], red(t, "amax"), out=acc["hi"])
        t.copy_(c).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        acc["total"] += red(t, "sum")
        acc["sq"] += red(t.square_(), "sum")
    return count, total, total_sq, lo, hi


def _merge_bins(hist: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Bin ``j`` of row ``c`` moved to bin ``j >> shift[c]`` (the range doubled ``shift[c]`` times)."""
    j = torch.arange(hist.shape[-1], device=hist.device)
    index = (j[None, :] >> shift.clamp(0, 62)[:, None]).unsqueeze(1).expand_as(hist)
    return torch.zeros_like(hist).scatter_add_(2, index, hist)


class HistogramObserver(Observer):
    """Histogram of ``|x|`` split by sign plus moments, for every calibration method.

    Args:
        axis: ``None`` per tensor, else one histogram per index of ``axis``.
        bins: bins per sign (2048, TensorRT's count, by default).
        kl_variant: ``"tensorrt"`` or ``"ppq"`` (entropy method).
        kl_start_bin: first candidate threshold of the TensorRT KL search, in bins.
        aciq_prior: ``"laplace"`` or ``"gaussian"``.
        aciq_sigma: ``"std"`` (moments) or ``"tengine"`` (from absmax and the count).

    See :mod:`quantext.calibration.ranges` for what each method computes.
    """

    def __init__(self, axis: int | None = None, bins: int = 2048, *, kl_variant: str = "tensorrt",
                 kl_start_bin: int = 128, aciq_prior: str = "laplace", aciq_sigma: str = "std") -> None:
        super().__init__(axis)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive int, got {bins!r}")
        check_option("kl_variant", kl_variant, KL_VARIANTS)
        check_option("aciq_prior", aciq_prior, ACIQ_PRIORS)
        check_option("aciq_sigma", aciq_sigma, ACIQ_SIGMAS)
        if isinstance(kl_start_bin, bool) or not isinstance(kl_start_bin, int) or kl_start_bin < 1:
            raise ValueError(f"kl_start_bin must be a positive int, got {kl_start_bin!r}")
        self.bins = bins
        self.options = {"kl_variant": kl_variant, "kl_start_bin": kl_start_bin, "aciq_prior": aciq_prior,
                        "aciq_sigma": aciq_sigma}
        self.register_buffer("hist", torch.zeros(0, dtype=torch.long))
        for name in _STAT_BUFFERS:
            self.register_buffer(name, torch.zeros(0, dtype=torch.float64))

    @property
    def observed(self) -> bool:
        return self.hist.numel() > 0

    def _init_state(self, channels: int, device: torch.device) -> None:
        f64 = {"dtype": torch.float64, "device": device}
        self.hist = torch.zeros(channels, 2, self.bins, dtype=torch.long, device=device)
        self.amax, self.count, self.sum, self.sum_sq = (torch.zeros(channels, **f64) for _ in range(4))
        self.min_val = torch.full((channels,), torch.inf, **f64)
        self.max_val = torch.full((channels,), -torch.inf, **f64)

    def _check_channels(self, channels: int) -> None:
        if channels != self.hist.shape[0]:
            raise ValueError(f"{type(self).__name__}: observed {self.hist.shape[0]} channels before, "
                             f"got {channels} now (axis={self.axis})")

    def _grow(self, target: torch.Tensor) -> None:
        """Widen the range to at least ``target`` (powers of two), merging bins exactly."""
        target = torch.maximum(self.amax, target)
        shift = torch.where(self.amax > 0, torch.frexp(target).exponent - torch.frexp(self.amax).exponent, 0)
        self.hist = _merge_bins(self.hist, shift.long())
        self.amax = target

    def _record(self, x: torch.Tensor) -> None:
        # In the input's own precision (float64 values beyond float32's range are kept), with
        # temporaries below the input's size (chunked_moments; the histogram op reads x itself).
        axis, dims = self._reduce_dims(x)
        channels = 1 if axis is None else x.shape[axis]
        if not self.observed:
            self._init_state(channels, x.device)
        self._check_channels(channels)
        if x.dim() == 0:
            x = x.reshape(1)
        count, total, total_sq, lo, hi = chunked_moments(x, axis, channels)
        self.count += count
        self.sum += total
        self.sum_sq += total_sq
        self.min_val = torch.minimum(self.min_val, lo)
        self.max_val = torch.maximum(self.max_val, hi)
        self._grow(_pow2_above(torch.maximum(-lo, hi).clamp_min(0)))
        # While every value seen is 0 any range counts them in bin 0.
        amax = torch.where(self.amax > 0, self.amax, 1.0)
        if axis is None:
            hist = ops.magnitude_histogram(x, self.bins, amax.reshape(()), None).unsqueeze(0)
        else:
            hist = ops.magnitude_histogram(x, self.bins, amax, axis)
        self.hist += hist

    def stats(self) -> HistogramStats:
        """The recorded statistics on the host, float64."""
        if not self.observed:
            raise RuntimeError(f"{type(self).__name__}: no data observed yet")
        amax = torch.where(self.amax > 0, self.amax, 1.0)
        rest = (getattr(self, n).cpu() for n in _STAT_BUFFERS[1:])
        return HistogramStats(self.hist.double().cpu(), amax.cpu(), *rest)

    def negative_fraction(self) -> float | None:
        count = float(self.count.sum()) if self.observed else 0.0
        return float(self.hist[:, 0].sum()) / count if count else None

    def compute_range(self, spec: QuantSpec, **options) -> tuple[torch.Tensor, torch.Tensor]:
        """Clipping range for ``spec.calibration`` (float32, ``[]`` or ``[C]``).

        ``options`` override the constructor's method options for this call
        (and ``levels``, the MSE search's normalized magnitude table).
        """
        if not self.observed:
            raise RuntimeError(f"{type(self).__name__}: compute_range called before any data was observed")
        lo, hi = range_from_stats(self.stats(), spec, **{**self.options, **options})
        device = self.hist.device
        return self._squeeze(lo.float().to(device)), self._squeeze(hi.float().to(device))

    def all_reduce_(self, group=None) -> None:
        """Every rank ends with the statistics of all ranks' data: the ranks
        agree on the widest range (MAX), merge their bins into it, then SUM the
        counts and moments and take MIN/MAX of the extremes. Ranks that observed
        nothing take part with empty statistics. Every rank of ``group`` must call it."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.observed:
            device = self.hist.device
        else:
            cuda = dist.get_backend(group) == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        channels = torch.tensor([self.hist.shape[0] if self.observed else 0], device=device)
        dist.all_reduce(channels, op=dist.ReduceOp.MAX, group=group)
        if int(channels.item()) == 0:
            return
        if not self.observed:
            self._init_state(int(channels.item()), device)
        self._check_channels(int(channels.item()))
        target = self.amax.clone()
        dist.all_reduce(target, op=dist.ReduceOp.MAX, group=group)
        self._grow(target)
        for name in ("hist", "count", "sum", "sum_sq"):
            dist.all_reduce(getattr(self, name), op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(self.min_val, op=dist.ReduceOp.MIN, group=group)
        dist.all_reduce(self.max_val, op=dist.ReduceOp.MAX, group=group)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, bins={self.bins}, " + ", ".join(f"{k}={v!r}" for k, v in self.options.items())
