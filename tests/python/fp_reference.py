"""Slow, obviously-correct references for the minifloat (ExMy) tests: the
format's values enumerated from its bit encodings, rounding by search over
that table, and fake quantization / gradients per tensor, channel or group."""

from __future__ import annotations

import math

import torch

SPECIALS = ("ieee", "fn", "finite")


def fp_values(exp_bits: int, man_bits: int, special: str) -> torch.Tensor:
    """Every finite non-negative value of the format, float64, ascending.

    The table index of a value is its code ``(exponent field << man_bits) |
    mantissa field``: codes are enumerated in order and only top-exponent codes
    (the last ones) are dropped. "ieee": the top exponent is inf/NaN; "fn":
    only its all-ones mantissa is NaN; "finite": every code is a number.
    """
    assert special in SPECIALS and exp_bits >= 1 and man_bits >= 0 and 1 + exp_bits + man_bits <= 8
    bias = 2 ** (exp_bits - 1) - 1
    top, full = 2 ** exp_bits - 1, 2 ** man_bits - 1
    values = []
    for e in range(top + 1):
        for m in range(full + 1):
            if e == top and (special == "ieee" or special == "fn" and m == full):
                continue
            # subnormal 0.m * 2^(1-bias); normal 1.m * 2^(e-bias): exact in float64
            values.append(math.ldexp(m, 1 - bias - man_bits) if e == 0 else
                          math.ldexp(2 ** man_bits + m, e - bias - man_bits))
    return torch.tensor(values, dtype=torch.float64)


def fp_max(exp_bits: int, man_bits: int, special: str) -> float:
    return float(fp_values(exp_bits, man_bits, special)[-1])


def ties_go_down(table: torch.Tensor) -> torch.Tensor:
    """Per gap (table[i], table[i+1]): whether its midpoint rounds to table[i].

    Round half to even: on the grid of the gap's spacing both ends are
    integers; the even one wins. With a mantissa (M >= 1) that is the even
    code, so ties alternate with the index (test_fp checks it). With M = 0 a
    normal tie 2^e | 2^(e+1) carries up (1.1b rounds to 10b), as IEEE rounding
    of the significand does, which index parity would not.
    """
    lo, hi = table[:-1], table[1:]
    return torch.remainder(lo / (hi - lo), 2) == 0


def round_to_format(v: torch.Tensor, exp_bits: int, man_bits: int, special: str) -> torch.Tensor:
    """Nearest value of the format (float64): ties to even, saturating at the
    largest finite value (+-inf included), NaN stays NaN, sign kept (-0.0)."""
    table = fp_values(exp_bits, man_bits, special)
    down = ties_go_down(table)
    # float64 holds every float32 v and the table's midpoints exactly: the comparisons below are exact
    a = torch.nan_to_num(v.to(torch.float64).abs(), nan=0.0).clamp(max=float(table[-1])).contiguous()
    hi = torch.searchsorted(table, a)  # first value >= a
    lo = (hi - 1).clamp(min=0)
    mid = (table[lo] + table[hi]) / 2
    pick_lo = (a < mid) | ((a == mid) & down[lo])
    q = torch.where(pick_lo, table[lo], table[hi])
    q = torch.copysign(q, v.to(torch.float64))
    return torch.where(torch.isnan(v), torch.full_like(q, math.nan), q)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def expand_param(p: torch.Tensor, x: torch.Tensor, axis: int | None, group_size: int = 0) -> torch.Tensor:
    """A per-tensor/channel/group parameter broadcastable against x."""
    if axis is None:
        return p.reshape(())
    if group_size:
        return p.repeat_interleave(group_size, dim=axis)
    shape = [1] * x.dim()
    shape[axis] = -1
    return p.reshape(shape)


def scaled(x, scale, axis, group_size):
    """v = x * (1/scale), the reciprocal in the scale's dtype, the product in the compute dtype."""
    acc = compute_dtype(x)
    inv = expand_param(1.0 / scale.detach(), x, axis, group_size).to(acc)
    return x.detach().to(acc) * inv


def fake_quant_fp_reference(x, scale, exp_bits, man_bits, special, axis=None, group_size=0) -> torch.Tensor:
    acc = compute_dtype(x)
    q = round_to_format(scaled(x, scale, axis, group_size), exp_bits, man_bits, special).to(acc)  # exact
    return (q * expand_param(scale.detach(), x, axis, group_size).to(acc)).to(x.dtype)


def reduce_to_param(per_element: torch.Tensor, scale: torch.Tensor, axis, group_size) -> torch.Tensor:
    if axis is None:
        return per_element.sum().reshape(scale.shape)
    if group_size:
        p = per_element.movedim(axis, -1)
        return p.reshape(*p.shape[:-1], -1, group_size).sum(-1).movedim(-1, axis)
    return per_element.movedim(axis, 0).reshape(per_element.shape[axis], -1).sum(1)


def scale_grad_terms(x, scale, exp_bits, man_bits, special, axis=None, group_size=0) -> torch.Tensor:
    """Per element, float64: Q(v) - v inside, sign(v) * max outside, 0 for NaN."""
    v = scaled(x, scale, axis, group_size).to(torch.float64)
    top = fp_max(exp_bits, man_bits, special)
    term = torch.where(v.abs() <= top, round_to_format(v, exp_bits, man_bits, special) - v, torch.sign(v) * top)
    return torch.where(torch.isnan(v), 0.0, term)


def fake_quant_fp_grads(dy, x, scale, exp_bits, man_bits, special, axis=None, group_size=0, grad_factor=1.0):
    """dx (clipped STE: dy where |v| <= max) and dscale (the terms times dy,
    summed in float64, times grad_factor)."""
    v = scaled(x, scale, axis, group_size)
    inside = v.abs() <= fp_max(exp_bits, man_bits, special)
    dx = torch.where(inside, dy.to(v.dtype), torch.zeros((), dtype=v.dtype)).to(x.dtype)
    per_element = dy.detach().to(torch.float64) * scale_grad_terms(x, scale, exp_bits, man_bits, special, axis,
                                                                   group_size)
    return dx, grad_factor * reduce_to_param(per_element, scale, axis, group_size)


def straight_through(x, scale, exp_bits, man_bits, special, axis=None, group_size=0):
    """The same forward composed of differentiable torch ops: the rounding is
    passed straight through on the clamped value, so autograd gives the
    clipped-STE dx and the LSQ-style dscale on its own."""
    top = fp_max(exp_bits, man_bits, special)
    s = expand_param(scale, x, axis, group_size).to(compute_dtype(x))
    c = (x.to(s.dtype) / s).clamp(-top, top)
    q = c + (round_to_format(c.detach(), exp_bits, man_bits, special).to(c.dtype) - c).detach()
    return q * s
