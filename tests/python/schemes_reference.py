"""Slow, obviously-correct references for the PoT/APoT tests: level sets in
exact rational arithmetic, and fake quantization / gradients / codes by
brute-force distance to every level (the way the published APoT code does it)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import torch

# The APoT reference code's additive terms (exponents, 2^-1 its largest) for k=2, B=3 and 5.
REFERENCE_TERMS = {3: [[1, 2, 4], [3]], 5: [[1, 3, 6], [2, 4, 7], [5]]}


def magnitude_bits(bits: int, signed: bool) -> int:
    return bits - 1 if signed else bits


def apot_terms(b: int, k: int) -> list[list[int]]:
    """Exponents of each additive term's non-zero powers 2^-e.

    k | B: DESIGN's P_i = {2^-(i + j*n)}. k=2 and B in {1, 3, 5}: the reference
    code's sets. Otherwise quantext's documented extension (n = B // k full
    terms, one term of 2^r - 1 powers leading each of the last rounds), here
    in closed form: round j holds exponents offset(j) .. offset(j) + size(j) - 1.
    """
    if k == 2 and b in REFERENCE_TERMS:
        return [[e - 1 for e in t] for t in REFERENCE_TERMS[b]]
    n, r = divmod(b, k)
    rounds, partial = 2 ** k - 1, 2 ** r - 1
    first_partial = rounds - partial

    def offset(j):
        return j * n + max(0, j - first_partial)

    full = [[offset(j) + (j >= first_partial) + i for j in range(rounds)] for i in range(n)]
    extra = [[offset(j) for j in range(first_partial, rounds)]] if r else []
    return full + extra


def terms(scheme: str, b: int, k: int = 2) -> list[list[int]]:
    return [list(range(2 ** b - 1))] if scheme == "pot" else apot_terms(b, k)


def magnitudes(scheme: str, b: int, k: int = 2) -> list[Fraction]:
    """Distinct sums of one value (or 0) per term, normalized by the largest."""
    choices = [[None] + t for t in terms(scheme, b, k)]
    sums = {sum((Fraction(1, 2 ** e) for e in combo if e is not None), Fraction(0))
            for combo in itertools.product(*choices)}
    top = max(sums)
    return sorted(s / top for s in sums)


def magnitude_tensor(scheme: str, b: int, k: int = 2) -> torch.Tensor:
    return torch.tensor([float(f) for f in magnitudes(scheme, b, k)], dtype=torch.float64)


def _param_view(p: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None:
        return p.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def level_index(a: torch.Tensor, mags: torch.Tensor, rounding: str = "nearest") -> torch.Tensor:
    """Index of the level nearest to a >= 0 among ``mags`` (the levels as the
    compute dtype holds them), ties to the smaller; NaN -> 0.

    "nearest": distance to every level, argmin (which returns the first, i.e.
    smaller, of equal minima); near-ties are settled in exact arithmetic.
    "log": round(log2 a) to the nearest integer; below the smallest exponent -> 0.
    """
    mags = mags.to(torch.float64)
    a64 = torch.nan_to_num(a.to(torch.float64), nan=0.0).reshape(-1)
    if rounding == "log":
        m = len(mags) - 2
        e = torch.log2(a64).round().clamp(max=0)
        return torch.where(e < -m, torch.zeros_like(e), e + m + 1).long().reshape(a.shape)
    # Levels that the compute dtype merges (PoT's smallest powers underflow
    # float32 to 0) count once: the first of them.
    distinct = torch.unique(mags)
    first = torch.searchsorted(mags, distinct)
    levels = [Fraction(v) for v in distinct.tolist()]
    index = torch.empty(a64.shape, dtype=torch.long)
    for lo in range(0, len(a64), 8192):
        d = (a64[lo:lo + 8192].unsqueeze(-1) - distinct).abs()
        index[lo:lo + 8192] = d.argmin(-1)
        if len(distinct) > 1:
            best = d.topk(2, dim=-1, largest=False).values
            for i in torch.nonzero(best[:, 1] - best[:, 0] <= 1e-9 * best[:, 1]).flatten().tolist():
                v = Fraction(a64[lo + i].item())
                index[lo + i] = min(range(len(levels)), key=lambda j: (abs(v - levels[j]), j))
    return first[index].reshape(a.shape)


def quantized(x, alpha, scheme, bits, signed, k=2, rounding="nearest", axis=None):
    """In the compute dtype: alpha (broadcastable), v = x / alpha, v clipped,
    the magnitude index and the signed normalized level."""
    acc = compute_dtype(x)
    mags = magnitude_tensor(scheme, magnitude_bits(bits, signed), k).to(acc)
    a = _param_view(alpha.to(acc), x, axis)
    v = x.to(acc) / a
    c = v.clamp(-1.0 if signed else 0.0, 1.0)
    index = level_index(c.abs(), mags, rounding)
    mag = mags[index]
    return a, v, c, index, torch.where(c < 0, -mag, mag)


def fake_quant(x, alpha, scheme, bits, signed, k=2, rounding="nearest", axis=None):
    a, _, c, _, level = quantized(x, alpha, scheme, bits, signed, k, rounding, axis)
    return torch.where(torch.isnan(c), c, level * a).to(x.dtype)


def grads(dy, x, alpha, scheme, bits, signed, k=2, rounding="nearest", axis=None):
    """dx and dalpha (summed in float64) of the clipped STE with learned alpha."""
    _, v, _, _, level = quantized(x, alpha, scheme, bits, signed, k, rounding, axis)
    lo = -1.0 if signed else 0.0
    inside = (v >= lo) & (v <= 1)
    outside = torch.where(v > 1, 1.0, torch.where(v < lo, lo, 0.0)).to(v.dtype)
    dy = dy.to(v.dtype)
    dx = torch.where(inside, dy, torch.zeros_like(dy)).to(x.dtype)
    per_element = (dy * torch.where(inside, level - v, outside)).to(torch.float64)
    if axis is None:
        dalpha = per_element.sum().reshape(alpha.shape)
    else:
        dalpha = per_element.movedim(axis, 0).reshape(x.shape[axis], -1).sum(1)
    return dx, dalpha


def codes(x, alpha, scheme, bits, signed, k=2, rounding="nearest", axis=None):
    _, _, c, index, _ = quantized(x, alpha, scheme, bits, signed, k, rounding, axis)
    return torch.where(c < 0, -index, index).to(torch.int8 if signed else torch.uint8)
