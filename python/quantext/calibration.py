"""Calibration range methods (DESIGN 5): histograms and the clipping searches.

The searches run in C++ (``torch.ops.quantext.calib_*``) on histograms; this
module turns what a :class:`~quantext.histogram_observer.HistogramObserver`
recorded into a clipping range ``(lo, hi)`` for a :class:`QuantSpec`, and
offers :func:`compute_clip` for a raw tensor.

Methods (``spec.calibration``), for a symmetric spec (``alpha``, then
``(-alpha, alpha)`` signed or ``(0, alpha)`` unsigned; an unsigned spec uses
only the values ``>= 0``):

- ``max``: the absolute maximum.
- ``percentile``: the ``spec.percentile``-th percentile of ``|x|``,
  interpolated linearly inside its bin.
- ``mse``: the ``alpha`` (a bin edge) minimizing the expected squared error of
  rounding ``|x|`` to the nearest of ``alpha * levels``, the histogram read as
  a piecewise-uniform density. ``levels`` is the grid's normalized magnitude
  table: uniform ``k / qmax`` (TensorRT's ``scale = alpha / qmax``), PoT/APoT
  from :func:`quantext.levels`.
- ``entropy``: TensorRT's KL search (or PPQ's, ``kl_variant="ppq"``) over
  ``2^(bits-1)`` levels (``2^bits`` unsigned, as NVIDIA's pytorch-quantization
  does). The threshold of ``i`` bins is ``(i + 0.5) * bin_width`` (TensorRT's
  convention; PPQ: ``i * bin_width``). With as many levels as bins (above 12
  bits at 2048 bins) there is nothing to merge and the method returns ``max``.
  TensorRT builds its histogram over ``[0, max|x|]``; the observer's range is
  a power of two (see :mod:`quantext.histogram_observer`), so the data fill
  1024 to 2048 of its bins and the first candidate (128 bins) can be up to
  ``max|x| / 8`` instead of ``max|x| / 16``. For TensorRT's exact histogram of
  one tensor: ``ops.calib_entropy(magnitude_histogram(x, 2048, x.abs().max()).sum(0), x.abs().max())``.
- ``aciq``: ``|mean| + ratio(bits) * spread`` with the Banner et al. ratio for a
  Laplace (``spread = b = E|x - mean|``) or Gaussian (``spread = std``) prior.
  ``aciq_sigma="tengine"`` estimates the Gaussian sigma from the absolute
  maximum and the count instead: ``sigma = 2 * absmax * 0.175 * (1 + sqrt(pi
  ln 4)) / sqrt(2 ln N)``. The ratios model a uniform grid (also used for
  PoT/APoT). ``std`` comes from float64 running sums (precise unless
  ``|mean| >> std``); ``b`` from the histogram read as piecewise uniform.

An asymmetric (uniform) spec gets ``[lo, hi]`` with ``lo <= 0 <= hi``:
``max`` the data range; ``percentile`` the ``(100 - p)``-th and ``p``-th
percentiles of ``x``; ``mse`` a search over ranges shrinking from the data
towards 0 for the actual affine grid (scale, rounded zero point);
``entropy`` ``(-t, t)`` with ``t`` from the ``|x|`` histogram; ``aciq``
``mean -+ ratio * spread``.

Every range is clamped to the observed data (a clip beyond the maximum only
wastes levels). A method that yields an empty range for data that is not all
zero falls back to ``max``; all-zero data get the range ``(0, eps)``
(``eps = torch.finfo(torch.float32).eps``, negated for the low end of a
signed symmetric spec), so a scale is never zero or NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._ops import ops
from .functional import int_arg, uniform_bounds
from .spec import QuantSpec

KL_VARIANTS = ("tensorrt", "ppq")
ACIQ_PRIORS = ("laplace", "gaussian")
ACIQ_SIGMAS = ("std", "tengine")

_EPS = torch.finfo(torch.float32).eps
_TENGINE_CONST = 0.5 * 0.35 * (1 + math.sqrt(math.pi * math.log(4)))


def _as_range_tensor(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.tensor(float(value), device=like.device)


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


def aciq_ratio(bits: int, prior: str = "laplace") -> float:
    """ACIQ's optimal ``alpha / sigma`` (Gaussian) or ``alpha / b`` (Laplace) for
    ``bits`` in [1, 16], found by minimizing the analytic clipping error plus
    the quantization noise ``alpha^2 / (3 * 4^bits)``."""
    return ops.aciq_ratio(int_arg("bits", bits), prior)


def magnitude_levels(spec: QuantSpec) -> torch.Tensor:
    """Normalized magnitudes (float64, ascending, ``0 .. 1``) of the grid of
    ``spec``, as the MSE search models it."""
    if spec.scheme == "uniform":
        qmax = uniform_bounds(spec.bits, spec.signed, spec.narrow_range)[1]
        return torch.arange(qmax + 1, dtype=torch.float64) / qmax
    import quantext  # noqa: PLC0415 (the level tables live in quantext.levels)

    levels = getattr(quantext, "levels", None)
    if levels is None:
        raise ValueError(f"calibration='mse' for scheme={spec.scheme!r} needs quantext.levels (the PoT/APoT "
                         "level tables); pass levels= explicitly")
    return torch.unique(levels(spec.scheme, spec.bits, signed=spec.signed, k=spec.k).abs().double())


@dataclass(frozen=True)
class HistogramStats:
    """What a histogram observer recorded, one row per channel (float64, CPU).

    ``hist[c, 0]`` counts ``|x|`` of the negative values and ``hist[c, 1]`` the
    values ``>= 0``, in ``bins`` bins over ``[0, amax[c]]``.
    """

    hist: torch.Tensor
    amax: torch.Tensor
    min_val: torch.Tensor
    max_val: torch.Tensor
    count: torch.Tensor
    sum: torch.Tensor
    sum_sq: torch.Tensor

    @property
    def bins(self) -> int:
        return self.hist.shape[-1]

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count

    def signed_hist(self) -> torch.Tensor:
        """Histogram of ``x`` over ``[-amax, amax]``, ``[C, 2 * bins]``."""
        return torch.cat([self.hist[:, 0].flip(-1), self.hist[:, 1]], dim=-1)

    def std(self) -> torch.Tensor:
        return (self.sum_sq / self.count - self.mean.square()).clamp_min(0).sqrt()

    def mean_abs_deviation(self) -> torch.Tensor:
        """``E|x - mean|`` with the histogram read as piecewise uniform (exact for
        every bin but the one holding the mean, which is integrated exactly too)."""
        h = self.signed_hist()
        width = (self.amax / self.bins)[:, None]
        left = -self.amax[:, None] + torch.arange(h.shape[-1], dtype=torch.float64) * width
        mu = self.mean[:, None]
        dev = (left + width / 2 - mu).abs()
        inside = (left <= mu) & (mu < left + width)
        dev = torch.where(inside, ((mu - left).square() + (left + width - mu).square()) / (2 * width), dev)
        return (h * dev).sum(-1) / self.count


def _check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _nonempty_rows(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with no counts get one count in bin 0 so the ops accept them; the mask says which were empty."""
    empty = h.sum(-1) == 0
    h = h.clone()
    h[empty, 0] = 1
    return h, empty


def _aciq_alpha(stats: HistogramStats, spec: QuantSpec, prior: str, sigma: str, absmax: torch.Tensor) -> torch.Tensor:
    if sigma == "tengine":
        if prior != "gaussian":
            raise ValueError(f"aciq_sigma='tengine' estimates a Gaussian sigma: it needs aciq_prior='gaussian', "
                             f"got {prior!r}")
        if bool((stats.count < 2).any()):
            raise ValueError("aciq_sigma='tengine' needs at least 2 observed values per channel, got "
                             f"{int(stats.count.min())}")
        spread = 2 * absmax * _TENGINE_CONST / (2 * stats.count.log()).sqrt()
    else:
        spread = stats.std() if prior == "gaussian" else stats.mean_abs_deviation()
    return aciq_ratio(spec.bits, prior) * spread


def _entropy_clip(mag: torch.Tensor, amax: torch.Tensor, level_bits: int, opts: dict,
                  top: torch.Tensor) -> torch.Tensor:
    """KL threshold over 2^level_bits levels; ``top`` when the grid has as many levels as the
    histogram has candidate bins (nothing to merge: no clipping)."""
    levels = 1 << level_bits
    if max(levels, opts["kl_start_bin"] if opts["kl_variant"] == "tensorrt" else 0) >= mag.shape[-1]:
        return top
    return ops.calib_entropy(mag, amax, levels, opts["kl_start_bin"], opts["kl_variant"])[0]


def _symmetric_alpha(stats: HistogramStats, spec: QuantSpec, opts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, data top) of a symmetric spec."""
    if spec.signed:
        mag, top = stats.hist.sum(1), torch.maximum(-stats.min_val, stats.max_val)
    else:
        mag, top = stats.hist[:, 1], stats.max_val.clamp_min(0)
    method = spec.calibration
    if method == "max":
        return top, top
    if method == "aciq":
        return stats.mean.abs() + _aciq_alpha(stats, spec, opts["aciq_prior"], opts["aciq_sigma"], top), top
    mag, empty = _nonempty_rows(mag)
    if method == "percentile":
        alpha = ops.calib_percentile(mag, torch.zeros_like(stats.amax), stats.amax, spec.percentile / 100)
    elif method == "mse":
        levels = opts["levels"] if opts["levels"] is not None else magnitude_levels(spec)
        alpha = ops.calib_mse(mag, stats.amax, levels)[0]
    else:
        alpha = _entropy_clip(mag, stats.amax, spec.bits - 1 + (0 if spec.signed else 1), opts, top)
    return torch.where(empty, 0.0, alpha), top


def _symmetric_range(stats: HistogramStats, spec: QuantSpec, opts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    alpha, top = _symmetric_alpha(stats, spec, opts)
    alpha = torch.minimum(alpha, top)
    alpha = torch.where(alpha > 0, alpha, top)  # a degenerate clip of non-zero data: fall back to max
    alpha = torch.where(alpha > 0, alpha, _EPS)  # all-zero data
    return (-alpha if spec.signed else torch.zeros_like(alpha)), alpha


def _affine_range(stats: HistogramStats, spec: QuantSpec, opts: dict) -> tuple[torch.Tensor, torch.Tensor]:
    data_lo, data_hi = stats.min_val.clamp_max(0), stats.max_val.clamp_min(0)
    method, p = spec.calibration, spec.percentile / 100
    if method == "max":
        lo, hi = data_lo, data_hi
    elif method == "percentile":
        h = stats.signed_hist()
        lo = ops.calib_percentile(h, -stats.amax, stats.amax, 1 - p)
        hi = ops.calib_percentile(h, -stats.amax, stats.amax, p)
    elif method == "mse":
        qmin, qmax = uniform_bounds(spec.bits, spec.signed, spec.narrow_range)
        lo, hi = ops.calib_mse_affine(stats.signed_hist(), -stats.amax, stats.amax, qmin, qmax)
    elif method == "entropy":
        t = _entropy_clip(stats.hist.sum(1), stats.amax, spec.bits - 1, opts, torch.maximum(-data_lo, data_hi))
        lo, hi = -t, t
    else:
        alpha = _aciq_alpha(stats, spec, opts["aciq_prior"], opts["aciq_sigma"],
                            torch.maximum(-stats.min_val, stats.max_val))
        lo, hi = stats.mean - alpha, stats.mean + alpha
    lo, hi = torch.maximum(lo.clamp_max(0), data_lo), torch.minimum(hi.clamp_min(0), data_hi)
    empty = hi <= lo
    lo, hi = torch.where(empty, data_lo, lo), torch.where(empty, data_hi, hi)
    return lo, torch.where(hi > lo, hi, lo + _EPS)


def range_from_stats(stats: HistogramStats, spec: QuantSpec, *, kl_variant: str = "tensorrt",
                     kl_start_bin: int = 128, aciq_prior: str = "laplace", aciq_sigma: str = "std",
                     levels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipping range ``(lo, hi)`` (float64, ``[C]``) of ``spec.calibration`` on
    ``stats`` (see the module docstring for each method).

    Raises ValueError when a channel saw no finite value.
    """
    _check_option("kl_variant", kl_variant, KL_VARIANTS)
    _check_option("aciq_prior", aciq_prior, ACIQ_PRIORS)
    _check_option("aciq_sigma", aciq_sigma, ACIQ_SIGMAS)
    empty = (stats.count == 0).nonzero().flatten().tolist()
    if empty:
        where = "" if stats.count.numel() == 1 else f" in channel {empty[0]}"
        raise ValueError(f"no finite values were observed{where}: cannot compute a range")
    opts = {"kl_variant": kl_variant, "kl_start_bin": kl_start_bin, "aciq_prior": aciq_prior,
            "aciq_sigma": aciq_sigma, "levels": levels}
    if spec.symmetric:
        return _symmetric_range(stats, spec, opts)
    return _affine_range(stats, spec, opts)


def compute_clip(data: torch.Tensor, method: str | None = None, spec: QuantSpec | None = None, *,
                 bins: int = 2048, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipping range ``(lo, hi)`` of ``data`` for ``spec`` with calibration ``method``.

    ``data`` is a raw tensor (observed per tensor, or per channel along
    ``spec.axis`` for a per-channel spec) or a
    :class:`~quantext.histogram_observer.HistogramObserver` that has already
    observed. ``method`` defaults to ``spec.calibration``; ``spec`` to an 8-bit
    signed symmetric per-tensor uniform grid. ``options`` are those of
    :func:`range_from_stats` (``kl_variant``, ``kl_start_bin``, ``aciq_prior``,
    ``aciq_sigma``, ``levels``). Shapes: ``[]`` per tensor, ``[C]`` per channel.
    """
    from .histogram_observer import HistogramObserver  # noqa: PLC0415 (the observer builds on this module)

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
