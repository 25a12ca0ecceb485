"""What a histogram observer recorded, in the form the range methods read."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
