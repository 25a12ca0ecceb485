"""Calibration searches in C++ vs the Python/NumPy loops of published implementations.

On the |x| histogram (2048 bins) of 1e6 Laplace samples:

- KL (TensorRT): ``ops.calib_entropy`` vs the NumPy loop of MXNet's
  ``_get_optimal_threshold`` (a Python loop over candidate thresholds, and over
  the 128 merged groups inside it) and a NumPy loop vectorized per candidate.
- KL (PPQ): vs PPQ's torch loop (``hist_to_scale_offset``).
- MSE (uniform 8 bits, 2048 candidate clips): ``ops.calib_mse`` vs a NumPy loop
  over the same candidates with the per-candidate vectorized error estimate of
  PyTorch's ``HistogramObserver`` (``_compute_quantization_error``).
- The histogram itself: ``magnitude_histogram`` vs ``torch.histc``.

Ratios are peer time / quantext time (> 1: quantext is faster), measured in
the same process.

    python benchmarks/calibration.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, markdown_table, median_seconds  # noqa: E402

import quantext as qx  # noqa: E402

BINS, LEVELS = 2048, 128


def kl_mxnet_style(hist: np.ndarray, levels: int = LEVELS) -> int:
    """MXNet's loop (without its smoothing, which quantext does not do either)."""
    divergence = []
    for i in range(levels, len(hist)):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        is_nonzeros = (p != 0).astype(np.int64)
        merged = i // levels
        quantized = np.zeros(levels)
        for j in range(levels):
            quantized[j] = hist[j * merged:(j + 1) * merged].sum()
        quantized[-1] += hist[levels * merged:i].sum()
        q = np.zeros(i)
        for j in range(levels):
            start, stop = j * merged, (i if j == levels - 1 else (j + 1) * merged)
            norm = is_nonzeros[start:stop].sum()
            if norm != 0:
                q[start:stop] = quantized[j] / norm
        q[p == 0] = 0
        p, q = p / p.sum(), q / q.sum()
        m = p > 0
        with np.errstate(divide="ignore"):
            divergence.append(np.sum(p[m] * np.log(p[m] / q[m])))
    return levels + int(np.argmin(divergence))


def kl_numpy_vectorized(hist: np.ndarray, levels: int = LEVELS) -> int:
    """One vectorized NumPy pass per candidate (np.add.reduceat for the groups)."""
    best, best_i = np.inf, -1
    for i in range(levels, len(hist)):
        p = hist[:i].copy()
        p[i - 1] += hist[i:].sum()
        nonzero = p > 0
        starts = np.arange(levels) * (i // levels)
        sums = np.add.reduceat(hist[:i], starts)
        counts = np.add.reduceat(nonzero.astype(np.float64), starts)
        q = np.repeat(np.divide(sums, counts, out=np.zeros(levels), where=counts > 0),
                      np.diff(np.append(starts, i))) * nonzero
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore"):
            kl = np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero]))
        if kl < best:
            best, best_i = kl, i
    return best_i


def kl_ppq(histogram: torch.Tensor, quant_bins: int = LEVELS) -> int:
    """PPQ's symmetric branch of TorchHistObserver.hist_to_scale_offset."""
    histogram = histogram.float().clone()
    hist_bins = histogram.numel()
    histogram[: int(hist_bins * .002)] = 0
    histogram[int(hist_bins * .002)] = 1
    hist_sum = torch.sum(histogram)
    losses = []
    for bin_range in range(quant_bins, hist_bins + quant_bins - 1, quant_bins):
        p_hist = torch.zeros(size=(bin_range,), dtype=torch.float)
        p_hist[:bin_range].copy_(histogram[:bin_range])
        p_hist[bin_range - 1] += torch.sum(histogram[bin_range:])
        p_hist = p_hist / hist_sum
        expand_ratio = int(bin_range / quant_bins)
        q_hist = histogram[:bin_range].clone().reshape((quant_bins, expand_ratio))
        positive_map = q_hist > 0
        positive_cnt = positive_map.sum(axis=1, keepdim=True)
        positive_cnt[positive_cnt == 0] = 1
        q_hist = torch.div(q_hist.sum(axis=1, keepdim=True), positive_cnt).repeat([1, expand_ratio]) * positive_map
        q_hist = (q_hist / torch.sum(q_hist)).flatten()
        losses.append({"kl": (p_hist * torch.log((p_hist + 1e-30) / (q_hist + 1e-30))).sum().item(),
                       "bin_range": bin_range})
    return sorted(losses, key=lambda x: x["kl"])[0]["bin_range"]


def mse_numpy(hist: np.ndarray, amax: float, qmax: int = 127) -> float:
    """Every candidate clip (i + 1) * width, each error estimated as PyTorch's
    HistogramObserver does (vectorized over the bins)."""
    bins = len(hist)
    width = amax / bins
    density = hist / width
    begin = np.arange(bins) * width
    end = begin + width

    def norm(b, e):
        return density * (e**3 - b**3) / 3

    best, best_alpha = np.inf, 0.0
    for i in range(bins):
        alpha = (i + 1) * width
        dst = alpha / qmax  # width of one quantized bin
        first = np.clip(np.floor(begin / dst), 0, qmax - 1)
        last = np.clip(np.floor(end / dst), 0, qmax - 1)
        err = norm(begin - (first + 0.5) * dst, np.full(bins, dst / 2))
        err += (last - first - 1) * norm(np.full(bins, -dst / 2), np.full(bins, dst / 2))
        err += norm(np.full(bins, -dst / 2), end - (last + 0.5) * dst)
        total = err.sum()
        if total < best:
            best, best_alpha = total, alpha
    return best_alpha


def run(quick: bool) -> str:
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(1_000_000, generator=gen, dtype=torch.float64) - 0.5
    x = (-torch.sign(u) * torch.log1p(-2 * u.abs())).float()
    amax = x.abs().max().item()
    hist = qx.magnitude_histogram(x, BINS, amax).sum(0)
    hist_np, amax_t = hist.double().numpy(), torch.tensor(amax)
    levels = torch.arange(128, dtype=torch.float64) / 127
    slow = {"repeats": 1 if quick else 3, "warmup": 0}
    fast = {"repeats": 7 if quick else 25, "warmup": 2}

    rows = []

    def row(name, ours, peers):
        t = median_seconds(ours, **fast)
        for peer_name, peer, opts in peers:
            tp = median_seconds(peer, **opts)
            rows.append([name, f"{t * 1e3:.3f}", peer_name, f"{tp * 1e3:.1f}", f"{tp / t:.0f}x"])

    row("KL TensorRT, 1920 candidates", lambda: qx.ops.calib_entropy(hist, amax_t, LEVELS, LEVELS, "tensorrt"),
        [("NumPy, MXNet loop", lambda: kl_mxnet_style(hist_np), slow),
         ("NumPy, vectorized per candidate", lambda: kl_numpy_vectorized(hist_np), slow)])
    row("KL PPQ, 16 candidates", lambda: qx.ops.calib_entropy(hist, amax_t, LEVELS, LEVELS, "ppq"),
        [("torch, PPQ loop", lambda: kl_ppq(hist), fast)])
    row("MSE uniform 8-bit, 2048 candidates", lambda: qx.ops.calib_mse(hist, amax_t, levels),
        [("NumPy, HistogramObserver-style error", lambda: mse_numpy(hist_np, amax), slow)])
    n = 1_000_000 if quick else 10_000_000
    big = torch.randn(n, generator=gen)
    row(f"histogram, {n:.0e} floats, 2048 bins", lambda: qx.magnitude_histogram(big, BINS, 8.0),
        [("torch.histc", lambda: torch.histc(big, BINS, -8.0, 8.0), fast)])

    # The searches agree with their peers on the same histogram.
    trt = qx.ops.calib_entropy(hist, amax_t, LEVELS, LEVELS, "tensorrt")[0].item()
    agree = [f"KL threshold: quantext {trt:.4f}, MXNet loop {(kl_mxnet_style(hist_np) + 0.5) * amax / BINS:.4f}",
             f"PPQ threshold: quantext {qx.ops.calib_entropy(hist, amax_t, LEVELS, LEVELS, 'ppq')[0].item():.4f}, "
             f"PPQ loop {kl_ppq(hist) * amax / BINS:.4f}"]
    header = ["search (quantext, C++)", "quantext ms", "peer", "peer ms", "peer / quantext"]
    return "\n".join([f"Calibration searches on {machine()} (medians)", "", markdown_table(header, rows), "",
                      *(f"- {a}" for a in agree)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller histogram input")
    print(run(parser.parse_args().quick))
