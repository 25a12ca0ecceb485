"""Differential fuzzing of the PoT/APoT ops (fake_quant_levels forward, dx,
dalpha; quantize_levels / dequantize_levels) against a slow pure-PyTorch
reference of DESIGN 2.2-2.4 and docs/schemes.md.

The reference builds the level table from exact fractions (PoT: powers of
two; APoT: the sums of ``apot_decode_table``'s powers), holds the levels in
the compute type (float32 for float16/bfloat16/float32 inputs), switches
between neighbours at the exact midpoint of those held levels (or at
``level * sqrt(1/2)`` for ``rounding="log"``), and counts the switch points
below ``|clip(x / alpha)|``: ties go to the smaller level. Inputs include
values on and just above every switch point, the levels themselves, NaN,
+-inf and -0.0, in every dtype and layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import torch
from hypothesis import given, note
from hypothesis import strategies as st

import quantext as qx
from fuzz_support import (ACCUMULATION_ULPS, DTYPES, FuzzCase, assert_bitwise_equal, assert_close_sum, fuzz_settings,
                          granularities, in_layout, large_shapes, layouts, shapes, sprinkle_specials)

ops = torch.ops.quantext


@dataclass(frozen=True)
class Case(FuzzCase):
    scheme: str
    bits: int
    signed: bool
    k: int
    rounding: str
    learn_alpha: bool
    alpha_dtype: torch.dtype
    log2_alpha: float
    pow2_alpha: bool
    margin: float

    @property
    def lo(self) -> float:
        return -1.0 if self.signed else 0.0


def round_down(point: Fraction, dtype: torch.dtype) -> torch.Tensor:
    """The largest value of ``dtype`` that is <= ``point``."""
    v = torch.tensor(float(point), dtype=torch.float64).to(dtype)
    up, down = torch.tensor(math.inf, dtype=dtype), torch.tensor(-math.inf, dtype=dtype)
    while Fraction(v.item()) > point:
        v = torch.nextafter(v, down)
    while Fraction(torch.nextafter(v, up).item()) <= point:
        v = torch.nextafter(v, up)
    return v


@lru_cache(maxsize=None)
def grid(scheme: str, bits: int, signed: bool, k: int, rounding: str,
         dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(magnitude levels, thresholds) in ``dtype``, the compute type.

    Levels: exact fractions rounded once to float64, then to ``dtype``. A
    magnitude ``a`` goes to level #{i : a > switch_i}: switch_i is the exact
    midpoint of the ``dtype`` levels i and i+1 (the nearest representable
    level, ties to the smaller), or for ``rounding="log"`` the float64
    geometric midpoint ``level[i+1] * sqrt(1/2)``. Thresholds are the switch
    points rounded down to ``dtype``, so that ``threshold < a`` holds exactly
    when ``a > switch`` for every ``a`` of that dtype.
    """
    magnitude_bits = bits - 1 if signed else bits
    if scheme == "pot":
        exact = [Fraction(0)] + [Fraction(1, 2**j) for j in range((1 << magnitude_bits) - 2, -1, -1)]
    else:
        rows = qx.apot_decode_table(bits, signed, k).tolist()
        sums = sorted(sum((Fraction(1, 2**e) for e in row if e >= 0), Fraction(0)) for row in rows)
        exact = [s / sums[-1] for s in sums]
    levels64 = [float(m) for m in exact]
    levels = torch.tensor(levels64, dtype=torch.float64).to(dtype)
    if rounding == "log":
        switches = [Fraction(levels64[i + 1] * math.sqrt(0.5)) for i in range(len(exact) - 1)]
    else:
        held = [Fraction(v) for v in levels.tolist()]
        switches = [(held[i] + held[i + 1]) / 2 for i in range(len(held) - 1)]
    return levels, torch.stack([round_down(p, dtype) for p in switches])


def _log2_alpha_range(dtype: torch.dtype) -> tuple[float, float]:
    return (-14.0, 13.0) if dtype == torch.float16 else (-60.0, 60.0)


@st.composite
def cases(draw, shape_strategy) -> Case:
    shape = draw(shape_strategy)
    dtype = draw(st.sampled_from(DTYPES))
    scheme = draw(st.sampled_from(["pot", "apot"]))
    signed = draw(st.booleans())
    lo, hi = _log2_alpha_range(dtype)
    return Case(
        shape=shape, layout=draw(layouts(shape)), dtype=dtype, gran=draw(granularities(shape, allow_group=False)),
        scheme=scheme, bits=draw(st.integers(2 if signed else 1, 8)), signed=signed,
        k=draw(st.integers(1, 4)) if scheme == "apot" else 2,
        rounding=draw(st.sampled_from(["nearest", "log"])) if scheme == "pot" else "nearest",
        learn_alpha=draw(st.booleans()),
        alpha_dtype=torch.float64 if dtype == torch.float64 and draw(st.booleans()) else torch.float32,
        log2_alpha=draw(st.one_of(st.just(0.0), st.just(lo), st.just(hi), st.floats(lo, hi))),
        pow2_alpha=draw(st.booleans()), margin=draw(st.sampled_from([0.0, 0.05, 3.0])),
        tie_fraction=draw(st.sampled_from([0.0, 0.5, 1.0])), special_fraction=draw(st.sampled_from([0.0, 0.0, 0.1])),
        grad_factor=draw(st.sampled_from([1.0, 0.25, 1e-3])), seed=draw(st.integers(0, 2**31 - 1)))


def compute_type(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def build(case: Case, device: str):
    """Input, alpha and incoming gradient of a case, on ``device``."""
    gen = torch.Generator().manual_seed(case.seed)
    pshape = case.gran.param_shape(case.shape)
    lo, hi = _log2_alpha_range(case.dtype)
    exponent = (case.log2_alpha + torch.rand(pshape, generator=gen, dtype=torch.float64) * 2 - 1).clamp(lo, hi)
    alpha = torch.exp2(exponent.round() if case.pow2_alpha else exponent).to(case.alpha_dtype)
    u = torch.rand(case.shape, generator=gen, dtype=torch.float64)
    v = case.lo - case.margin + u * (1 - case.lo + 2 * case.margin)
    # Special points in units of alpha: the thresholds (the last value of the compute type that rounds
    # down), the next value up (the first that rounds up) and the levels.
    acc = compute_type(case.dtype)
    levels, thresholds = grid(case.scheme, case.bits, case.signed, case.k, case.rounding, acc)
    above = torch.nextafter(thresholds, torch.tensor(math.inf, dtype=acc))
    points = torch.cat([thresholds, above, levels]).double()
    pick = points[torch.randint(0, len(points), case.shape, generator=gen)]
    sign = torch.where(torch.rand(case.shape, generator=gen) < 0.5, -1.0, 1.0).double() if case.signed else 1.0
    v = torch.where(torch.rand(case.shape, generator=gen, dtype=torch.float64) < case.tie_fraction, sign * pick, v)
    x = v * case.gran.expand(alpha.double(), case.shape)
    x = sprinkle_specials(x, gen, case.special_fraction).to(case.dtype)
    dy = torch.randn(case.shape, generator=gen, dtype=torch.float64).to(case.dtype)
    return in_layout(x.to(device), case.layout), alpha.to(device), dy.to(device)


@dataclass
class Reference:
    v: torch.Tensor  # x / alpha in the compute type
    clipped: torch.Tensor  # v clipped to [lo, 1]
    index: torch.Tensor  # magnitude index (int64)
    level: torch.Tensor  # signed level in the compute type
    alpha: torch.Tensor  # alpha per element in the compute type


def reference(case: Case, x: torch.Tensor, alpha: torch.Tensor) -> Reference:
    acc = compute_type(case.dtype)
    levels, thresholds = grid(case.scheme, case.bits, case.signed, case.k, case.rounding, acc)
    a = case.gran.expand(alpha, case.shape).to(acc)
    v = x.to(acc) / a
    c = v.clamp(case.lo, 1.0)
    # The number of thresholds strictly below |c| (a tie keeps the smaller level); NaN gets index 0.
    index = torch.searchsorted(thresholds, c.abs().nan_to_num(0.0).contiguous(), side="left")
    level = levels[index]
    return Reference(v, c, index, torch.where(c < 0, 0.0 - level, level), a)


def check_case(case: Case, device: str) -> None:
    x, alpha, dy = build(case, device)
    note(f"x: shape {tuple(x.shape)} strides {x.stride()} dtype {x.dtype}; alpha {alpha.dtype} "
         f"[{alpha.min().item() if alpha.numel() else None}, {alpha.max().item() if alpha.numel() else None}]")
    args = (case.scheme, case.bits, case.signed, case.k, case.rounding, case.gran.axis)
    x_leaf = x.detach().requires_grad_(True)
    a_leaf = alpha.clone().requires_grad_(case.learn_alpha)
    y = qx.functional.fake_quant_levels(x_leaf, a_leaf, *args, grad_factor=case.grad_factor)
    # The reference runs on the CPU.
    x_ref, alpha_ref, dy_ref = x.cpu(), alpha.cpu(), dy.cpu()
    ref = reference(case, x_ref, alpha_ref)
    in_range = ~ref.v.isnan()  # the clip leaves only NaN outside [lo, 1]
    assert_bitwise_equal(y.detach(), torch.where(in_range, ref.level * ref.alpha, ref.v).to(case.dtype), "forward")

    y.backward(dy)
    inside = (ref.v >= case.lo) & (ref.v <= 1)
    assert_bitwise_equal(x_leaf.grad, torch.where(inside, dy_ref, torch.zeros_like(dy_ref)), "dx")
    if case.learn_alpha:
        v64, dy64 = ref.v.double(), dy_ref.double()
        clipped = torch.where(v64 < case.lo, case.lo, torch.where(v64 > 1, 1.0, 0.0))
        terms = dy64 * torch.where(inside, ref.level.double() - v64, clipped)
        eps = torch.finfo(ref.v.dtype).eps
        total = case.grad_factor * case.gran.reduce(terms, case.shape)
        bound = case.grad_factor * case.gran.reduce((2 + ACCUMULATION_ULPS) * eps * terms.abs(), case.shape)
        # Storing the float64 sum in alpha's dtype rounds it: by eps relative, or by up to half the
        # smallest subnormal where the sum is below the normal range.
        finfo = torch.finfo(case.alpha_dtype)
        tol = bound + finfo.eps * total.abs() + finfo.smallest_normal * finfo.eps
        assert_close_sum(a_leaf.grad, total, tol, "dalpha")

    codes = ops.quantize_levels(x, alpha, *args)
    want = torch.where(ref.clipped < 0, -ref.index, ref.index)
    want = torch.where(ref.v.isnan(), 0, want).to(torch.int8 if case.signed else torch.uint8)
    assert_bitwise_equal(codes, want, "quantize_levels")
    # Decoding computes in alpha's dtype.
    values = ops.dequantize_levels(codes, alpha, case.scheme, case.bits, case.signed, case.k, case.gran.axis)
    levels = grid(case.scheme, case.bits, case.signed, case.k, case.rounding, case.alpha_dtype)[0]
    magnitude = levels[want.long().abs()]
    expected = torch.where(want < 0, 0.0 - magnitude, magnitude) * case.gran.expand(alpha_ref, case.shape)
    assert_bitwise_equal(values, expected, "dequantize_levels")


@fuzz_settings(1500)
@given(case=cases(shapes(max_numel=1024)))
def test_fuzz_small(case, device):
    check_case(case, device)


@fuzz_settings(8)
@given(case=cases(large_shapes(120_000, (1, 3, 16))))
def test_fuzz_large(case, device):
    check_case(case, device)
