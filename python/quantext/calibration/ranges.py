"""Calibration range methods: what a
:class:`~quantext.calibration.HistogramObserver` recorded turned into a
clipping range ``(lo, hi)`` for a :class:`QuantSpec`. The searches run in C++
(``torch.ops.quantext.calib_*``) on the histograms.

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
  a power of two (see :mod:`quantext.calibration.histogram_observer`), so the
  data fill 1024 to 2048 of its bins and the first candidate (128 bins) can be up to
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

import torch

from .._ops import ops
from ..functional import int_arg
from ..schemes import levels
from ..spec import QuantSpec
from .stats import HistogramStats

KL_VARIANTS = ("tensorrt", "ppq")
ACIQ_PRIORS = ("laplace", "gaussian")
ACIQ_SIGMAS = ("std", "tengine")

_EPS = torch.finfo(torch.float32).eps
_TENGINE_CONST = 0.5 * 0.35 * (1 + math.sqrt(math.pi * math.log(4)))


def aciq_ratio(bits: int, prior: str = "laplace") -> float:
    """ACIQ's optimal ``alpha / sigma`` (Gaussian) or ``alpha / b`` (Laplace) for
    ``bits`` in [1, 16], found by minimizing the analytic clipping error plus
    the quantization noise ``alpha^2 / (3 * 4^bits)``."""
    return ops.aciq_ratio(int_arg("bits", bits), prior)


def magnitude_levels(spec: QuantSpec) -> torch.Tensor:
    """Normalized magnitudes (float64, ascending, ``0 .. 1``) of the grid of
    ``spec``, as the MSE search models it."""
    if spec.scheme == "uniform":
        qmax = spec.bounds[1]
        return torch.arange(qmax + 1, dtype=torch.float64) / qmax
    return torch.unique(levels(spec.scheme, spec.bits, signed=spec.signed, k=spec.k).abs().double())


def check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """ValueError unless ``value`` is one of ``allowed``."""
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
    if mag.shape[-1] > 1:
        # Exact zeros (ReLU outputs, padding) pile up in bin 0; merged into a level with its
        # neighbours that spike costs so much divergence that the search clips far too low (1.5
        # sigma at 8 bits on a ReLU'd Gaussian). Bin 0 counts like bin 1 instead, as NVIDIA's
        # pytorch-quantization entropy calibrator does (unless nothing else has counts).
        mag = mag.clone()
        mag[..., 0] = torch.where(mag[..., 1:].sum(-1) > 0, mag[..., 1], mag[..., 0])
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
        qmin, qmax = spec.bounds
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
    check_option("kl_variant", kl_variant, KL_VARIANTS)
    check_option("aciq_prior", aciq_prior, ACIQ_PRIORS)
    check_option("aciq_sigma", aciq_sigma, ACIQ_SIGMAS)
    empty = (stats.count == 0).nonzero().flatten().tolist()
    if empty:
        where = "" if stats.count.numel() == 1 else f" in channel {empty[0]}"
        raise ValueError(f"no finite values were observed{where}: cannot compute a range")
    opts = {"kl_variant": kl_variant, "kl_start_bin": kl_start_bin, "aciq_prior": aciq_prior,
            "aciq_sigma": aciq_sigma, "levels": levels}
    if spec.symmetric:
        return _symmetric_range(stats, spec, opts)
    return _affine_range(stats, spec, opts)
