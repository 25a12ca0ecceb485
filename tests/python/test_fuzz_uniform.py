"""Differential fuzzing of the uniform fake-quant op (forward, dx, LSQ dscale,
LSQ+ dzero) and the uniform code ops (quantize_uniform, dequantize_uniform)
against a slow pure-PyTorch reference of DESIGN 2.1/2.4.

Random shapes (empty, 1-element, sizes around the 8/16 vector widths, a few
large), layouts (transposed, sliced, broadcast, channels_last), dtypes,
granularities, bit widths 2..16 (signed/unsigned/narrow, and custom ranges
down to qmin == qmax), scales from 1e-30 to 1e30 (float16: its own range),
exact ties (k + 0.5) * s, NaN, +-inf and -0.0. Forward values and dx must be
bit-exact; the parameter gradients (reduced sums) within a bound derived from
the accumulation precision. Hypothesis runs derandomized: a failure prints the
drawn case and re-runs the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import given, note
from hypothesis import strategies as st

import quantext as qx
from fuzz_support import (ACCUMULATION_ULPS, DTYPES, FuzzCase, assert_bitwise_equal, assert_close_sum, fuzz_settings,
                          granularities, in_layout, is_dense, large_shapes, layouts, shapes,
                          sprinkle_specials)

ops = torch.ops.quantext


@dataclass(frozen=True)
class Case(FuzzCase):
    qmin: int
    qmax: int
    zero_point: str  # "symmetric", "int32", "int64", "float" (LSQ+)
    learn_scale: bool
    learn_zero: bool
    scale_dtype: torch.dtype
    log2_scale: float  # centre of the scales' exponents
    pow2_scale: bool  # powers of two make (k + 0.5) * s exact ties
    margin: float  # how far beyond the grid x reaches, in grid widths


def _log2_scale_range(dtype: torch.dtype, qmin: int, qmax: int) -> tuple[float, float]:
    if dtype == torch.float16:
        # float16 holds neither a grid 65504 wide nor steps below its normal range.
        hi = max(-13.0, float(torch.tensor(20000.0 / (qmax - qmin + 1)).log2()))
        return -14.0, hi
    return -99.0, 99.0  # about 1e-30 .. 1e30, where (qmax - qmin) * s stays finite in float32


@st.composite
def integer_ranges(draw) -> tuple[int, int, bool]:
    """(qmin, qmax, symmetric-capable) from uniform_bounds, or a custom range."""
    if draw(st.integers(0, 9)) == 0:
        qmin = draw(st.integers(-65536, 65535))
        return qmin, draw(st.integers(qmin, min(65535, qmin + draw(st.sampled_from([0, 1, 5, 300]))))), False
    bits, signed = draw(st.integers(2, 16)), draw(st.booleans())
    qmin, qmax = qx.uniform_bounds(bits, signed, draw(st.booleans()))
    return qmin, qmax, signed


@st.composite
def cases(draw, shape_strategy) -> Case:
    shape = draw(shape_strategy)
    dtype = draw(st.sampled_from(DTYPES))
    qmin, qmax, signed = draw(integer_ranges())
    zero_kinds = ["int32", "int64", "float"] + (["symmetric"] if signed and qmin <= 0 <= qmax else [])
    zero_point = draw(st.sampled_from(zero_kinds))
    lo, hi = _log2_scale_range(dtype, qmin, qmax)
    return Case(
        shape=shape, layout=draw(layouts(shape)), dtype=dtype, gran=draw(granularities(shape)), qmin=qmin,
        qmax=qmax, zero_point=zero_point, learn_scale=draw(st.booleans()),
        learn_zero=zero_point == "float" and draw(st.booleans()),
        scale_dtype=torch.float64 if dtype == torch.float64 and draw(st.booleans()) else torch.float32,
        log2_scale=draw(st.one_of(st.just(0.0), st.just(lo), st.just(hi), st.floats(lo, hi))),
        pow2_scale=draw(st.booleans()), margin=draw(st.sampled_from([0.0, 0.05, 0.5, 3.0])),
        tie_fraction=draw(st.sampled_from([0.0, 0.3, 1.0])), special_fraction=draw(st.sampled_from([0.0, 0.0, 0.1])),
        grad_factor=draw(st.sampled_from([1.0, 0.25, 1e-3])), seed=draw(st.integers(0, 2**31 - 1)))


def build(case: Case, device: str):
    """Input, scale, zero point and incoming gradient of a case, on ``device``."""
    gen = torch.Generator().manual_seed(case.seed)
    pshape = case.gran.param_shape(case.shape)
    lo, hi = _log2_scale_range(case.dtype, case.qmin, case.qmax)
    exponent = (case.log2_scale + torch.rand(pshape, generator=gen, dtype=torch.float64) * 2 - 1).clamp(lo, hi)
    scale = torch.exp2(exponent.round() if case.pow2_scale else exponent).to(case.scale_dtype)
    if case.zero_point == "symmetric":
        zero = torch.zeros(pshape, dtype=torch.int32)
    elif case.zero_point == "float":
        halves = torch.randint(2 * case.qmin, 2 * case.qmax + 1, pshape, generator=gen) / 2  # ties round to even
        zero = halves.float()
    else:
        zero = torch.randint(case.qmin, case.qmax + 1, pshape, generator=gen,
                             dtype=torch.int32 if case.zero_point == "int32" else torch.int64)
    # Values in units of the step, relative to the zero point: the grid is [qmin - z, qmax - z].
    z = case.gran.expand(torch.round(zero.double()), case.shape)
    width = case.qmax - case.qmin + 1
    u = torch.rand(case.shape, generator=gen, dtype=torch.float64) * (1 + 2 * case.margin) - case.margin
    t = case.qmin - z + u * width
    ties = torch.floor(t) + 0.5
    t = torch.where(torch.rand(case.shape, generator=gen, dtype=torch.float64) < case.tie_fraction, ties, t)
    x = t * case.gran.expand(scale.double(), case.shape)
    x = sprinkle_specials(x, gen, case.special_fraction).to(case.dtype)
    dy = torch.randn(case.shape, generator=gen, dtype=torch.float64).to(case.dtype)
    return in_layout(x.to(device), case.layout), scale.to(device), zero.to(device), dy.to(device)


def compute_type(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def reference_codes(case: Case, x, scale, zero):
    """Unclamped codes q (compute type), per-element scale and rounded zero point, as DESIGN 2.1 forms them:
    the reciprocal in the scale's precision, round half to even, zero point added after rounding."""
    acc = compute_type(case.dtype)
    s = case.gran.expand(scale, case.shape)
    inv = (torch.ones_like(s) / s).to(acc)
    z = torch.round(case.gran.expand(zero, case.shape).to(scale.dtype)).to(acc)
    q = torch.round(x.to(acc) * inv) + z
    return q, s.to(acc), z


def reference_forward(case: Case, q, s, z):
    return ((q.clamp(case.qmin, case.qmax) - z) * s).to(case.dtype)


def reference_param_grads(case: Case, x, dy, q, s, z):
    """(dscale, dzero, their error bounds) in float64."""
    x64, dy64, q64, s64, z64 = x.double(), dy.double(), q.double(), s.double(), z.double()
    inside = (q64 >= case.qmin) & (q64 <= case.qmax)
    below, above = q64 < case.qmin, q64 > case.qmax
    y64 = (q64.clamp(case.qmin, case.qmax) - z64) * s64
    ts = torch.where(inside, (y64 - x64) / s64,
                     torch.where(below, case.qmin - z64, torch.where(above, case.qmax - z64, 0.0)))
    tz = torch.where(below | above, -s64, 0.0)
    eps = torch.finfo(compute_type(case.dtype)).eps
    g = case.grad_factor
    # Per element, (y - x) * (1/s) in the compute type is off by a few ulps of |q - z| (y rounds), and
    # by the rounding of the reciprocal, taken in the scale's precision (float32 also for float64 x).
    scale_eps = torch.finfo(case.scale_dtype).eps
    elem_s = torch.where(inside, dy64.abs() * (4 * eps * ((q64.clamp(case.qmin, case.qmax) - z64).abs() + 1)
                                               + scale_eps * ts.abs()), 0.0)
    results = []
    # dscale comes back in the scale's dtype, dzero in the (float32) zero point's.
    for terms, elem, out in ((dy64 * ts, elem_s, case.scale_dtype), (dy64 * tz, torch.zeros_like(elem_s), torch.float32)):
        out_eps = torch.finfo(out).eps
        total = g * case.gran.reduce(terms, case.shape)
        bound = g * (case.gran.reduce(elem + ACCUMULATION_ULPS * eps * terms.abs(), case.shape))
        results.append((total, bound + out_eps * total.abs() + 1e-300))
    return results


def check_case(case: Case, device: str) -> None:
    x, scale, zero, dy = build(case, device)
    note(f"x: shape {tuple(x.shape)} strides {x.stride()} dtype {x.dtype}; scale {scale.dtype} "
         f"[{scale.min().item() if scale.numel() else None}, {scale.max().item() if scale.numel() else None}]; "
         f"zero_point {zero.dtype}")
    x_leaf = x.detach().requires_grad_(True)
    s_leaf = scale.clone().requires_grad_(case.learn_scale)
    z_leaf = zero.clone().requires_grad_(case.learn_zero)
    y = qx.fake_quant_uniform(x_leaf, s_leaf, z_leaf, case.qmin, case.qmax, case.gran.axis, case.gran.group,
                              case.grad_factor)
    # The reference runs on the CPU.
    x_ref, scale_ref, zero_ref, dy_ref = x.cpu(), scale.cpu(), zero.cpu(), dy.cpu()
    q, s, z = reference_codes(case, x_ref, scale_ref, zero_ref)
    assert_bitwise_equal(y.detach(), reference_forward(case, q, s, z), "forward")
    if x.numel() and is_dense(x):
        assert y.stride() == x.stride(), f"output strides {y.stride()} differ from the input's {x.stride()}"
    y.backward(dy)
    inside = (q >= case.qmin) & (q <= case.qmax)
    assert_bitwise_equal(x_leaf.grad, torch.where(inside, dy_ref, torch.zeros_like(dy_ref)), "dx")
    (dscale, dscale_tol), (dzero, dzero_tol) = reference_param_grads(case, x_ref, dy_ref, q, s, z)
    if case.learn_scale:
        assert_close_sum(s_leaf.grad, dscale, dscale_tol, "dscale")
    if case.learn_zero:
        assert_close_sum(z_leaf.grad, dzero, dzero_tol, "dzero")
    check_codes(case, x, scale, zero, q, z)


def check_codes(case: Case, x, scale, zero, q, z) -> None:
    """quantize_uniform: the clamped code (NaN: the zero point) in the smallest fitting integer dtype;
    dequantize_uniform: (code - z) * s in the scale's dtype."""
    axis, group = case.gran.axis, case.gran.group
    codes = ops.quantize_uniform(x, scale, zero, case.qmin, case.qmax, axis, group)
    code_dtype = next(dt for dt, lo, hi in _CODE_DTYPES if lo <= case.qmin and case.qmax <= hi)
    assert_bitwise_equal(codes, torch.where(q.isnan(), z, q.clamp(case.qmin, case.qmax)).to(code_dtype),
                         "quantize_uniform")
    values = ops.dequantize_uniform(codes, scale, zero, axis, group)
    scale, zero = scale.cpu(), zero.cpu()
    s = case.gran.expand(scale, case.shape)
    zs = torch.round(case.gran.expand(zero, case.shape).to(scale.dtype))
    assert_bitwise_equal(values, (codes.cpu().to(scale.dtype) - zs) * s, "dequantize_uniform")


_CODE_DTYPES = ((torch.int8, -128, 127), (torch.uint8, 0, 255), (torch.int16, -32768, 32767),
                (torch.int32, -2**31, 2**31 - 1))


@fuzz_settings(2500)
@given(case=cases(shapes(max_numel=2048)))
def test_fuzz_small(case, device):
    check_case(case, device)


@fuzz_settings(12)
@given(case=cases(large_shapes(200_000, (1, 3, 16, 17))))
def test_fuzz_large(case, device):
    """Tensors spanning many per-tensor chunks and threads."""
    check_case(case, device)
