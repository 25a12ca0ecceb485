"""Minifloat (ExMy) fake quantization, ``torch.ops.quantext.fake_quant_fp`` and
``QuantSpec(scheme="fp")``, bit for bit against the pure-PyTorch reference
(fp_reference.py); the reference itself against torch's float8 casts and
ml_dtypes' FP8/FP6/FP4 types. Gradients: the clipped STE and the LSQ-style
scale gradient; layouts, dtypes, bad arguments, meta and opcheck."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.library import opcheck

import fp_reference as ref
import quantext as qx

ops = torch.ops.quantext

# (exp_bits, man_bits, special): the OCP formats, then generic ExMy (M = 0 included)
NAMED = {"e4m3": (4, 3, "fn"), "e5m2": (5, 2, "ieee"), "e2m3": (2, 3, "finite"), "e3m2": (3, 2, "finite"),
         "e2m1": (2, 1, "finite")}
FORMATS = list(NAMED.values()) + [(3, 4, "finite"), (2, 5, "finite"), (6, 1, "finite"), (1, 2, "finite"),
                                  (4, 3, "ieee"), (3, 3, "fn"), (7, 0, "finite"), (2, 0, "ieee"), (1, 0, "finite")]
ALL_FORMATS = [(e, m, s) for e in range(1, 8) for m in range(0, 8 - e) for s in ref.SPECIALS
               if not (s == "ieee" and e < 2 or s == "fn" and m < 1)]


def fmt_id(fmt):
    return "e{}m{}-{}".format(*fmt)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal values (NaN equal to NaN; the sign of zero not compared), shape and dtype."""
    a, b = a.detach().cpu(), b.detach().cpu()
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    same = (a == b) | (a.isnan() & b.isnan())
    assert bool(same.all()), f"{int((~same).sum())} of {a.numel()} differ, e.g. {a[~same][:4]} vs {b[~same][:4]}"


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    """float64 tensors equal bit for bit, -0.0 included (any NaN equal to any NaN)."""
    same = (a.view(torch.int64) == b.view(torch.int64)) | (a.isnan() & b.isnan())
    assert bool(same.all()), f"{int((~same).sum())} differ, e.g. {a[~same][:4]} vs {b[~same][:4]}"


def float32_sweep(step: int) -> torch.Tensor:
    """Every step-th float32 bit pattern from +0 to +inf, both signs, and NaN."""
    v = torch.arange(0, 0x7F800001, step, dtype=torch.int64).to(torch.int32).view(torch.float32)
    return torch.cat([v, -v, torch.tensor([math.inf, -math.inf, math.nan])])


def ties_and_neighbours(exp_bits, man_bits, special) -> torch.Tensor:
    """The values, the midpoints between them and the float32 neighbours of the midpoints, both signs."""
    t = ref.fp_values(exp_bits, man_bits, special)
    mid = ((t[:-1] + t[1:]) / 2).float()
    v = torch.cat([t.float(), mid, torch.nextafter(mid, torch.tensor(0.0)), torch.nextafter(mid, torch.tensor(1e30))])
    return torch.cat([v, -v])


# ------------------------------------------------------------------ the reference itself
ORACLES = [((4, 3, "fn"), torch.float8_e4m3fn), ((5, 2, "ieee"), torch.float8_e5m2),
           ((4, 3, "fn"), "float8_e4m3fn"), ((5, 2, "ieee"), "float8_e5m2"), ((4, 3, "ieee"), "float8_e4m3"),
           ((3, 4, "ieee"), "float8_e3m4"), ((2, 3, "finite"), "float6_e2m3fn"), ((3, 2, "finite"), "float6_e3m2fn"),
           ((2, 1, "finite"), "float4_e2m1fn")]
"""torch's float8 types, and ml_dtypes' (a requirement of the project) for the formats torch cannot cast to."""


def oracle_dtype(name_or_dtype):
    if isinstance(name_or_dtype, torch.dtype):
        return name_or_dtype
    return getattr(pytest.importorskip("ml_dtypes"), name_or_dtype)


def oracle_values(fmt, oracle) -> torch.Tensor:
    """Every code of the oracle's type decoded (ml_dtypes' FP6/FP4 sit in the low bits of a byte), float64."""
    dtype, codes = oracle_dtype(oracle), torch.arange(2 ** (1 + fmt[0] + fmt[1]), dtype=torch.int32).to(torch.uint8)
    if isinstance(dtype, torch.dtype):
        return codes.view(dtype).double()
    return torch.from_numpy(codes.numpy().view(dtype).astype(np.float64))


def oracle_round(v: torch.Tensor, fmt, oracle) -> torch.Tensor:
    """v rounded by the oracle's own cast, clamped first: not every cast saturates."""
    top = ref.fp_max(*fmt)
    c, dtype = v.clamp(-top, top), oracle_dtype(oracle)
    if isinstance(dtype, torch.dtype):
        return c.to(dtype).double()
    return torch.from_numpy(c.numpy().astype(dtype).astype(np.float64))


def oracle_id(value):
    return value if isinstance(value, str) else fmt_id(value) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize("fmt,oracle", ORACLES, ids=oracle_id)
def test_tables_match_the_oracles(fmt, oracle):
    """Enumerated from the format definitions, equal to the oracle type's decoded codes."""
    values = oracle_values(fmt, oracle)
    assert torch.equal(ref.fp_values(*fmt), torch.unique(values[torch.isfinite(values) & (values >= 0)]))


@pytest.mark.parametrize("fmt,count,top,tiny", [
    ((4, 3, "fn"), 127, 448.0, 2.0 ** -9), ((5, 2, "ieee"), 124, 57344.0, 2.0 ** -16),
    ((2, 3, "finite"), 32, 7.5, 2.0 ** -3), ((3, 2, "finite"), 32, 28.0, 2.0 ** -4), ((2, 1, "finite"), 8, 6.0, 0.5)])
def test_named_formats(fmt, count, top, tiny):
    t = ref.fp_values(*fmt)
    assert len(t) == count and t[0] == 0 and t[-1] == top and t[1] == tiny
    assert bool((t[1:] > t[:-1]).all())
    if fmt == (2, 1, "finite"):
        assert t.tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=fmt_id)
def test_ties_go_to_the_even_code(fmt):
    """With a mantissa, the tie rule of the reference is the parity of the code (= table index)."""
    t = ref.fp_values(*fmt)
    down = ref.ties_go_down(t)
    if fmt[1] >= 1:
        assert torch.equal(down, torch.arange(len(t) - 1) % 2 == 0)
    else:  # M = 0: 0 | 2^emin goes to 0, every normal tie up (the significand 1.1b carries)
        assert down.tolist() == [True] + [False] * (len(t) - 2)


@pytest.mark.parametrize("fmt,oracle", ORACLES, ids=oracle_id)
def test_reference_matches_oracle_casts(fmt, oracle):
    """Bit for bit (-0.0 included) over every 997th float32 pattern, all ties and their neighbours."""
    v = torch.cat([float32_sweep(997), ties_and_neighbours(*fmt)])
    if not isinstance(oracle_dtype(oracle), torch.dtype) and fmt[2] == "finite":
        v = v[~v.isnan()]  # FP6/FP4 have no NaN to cast to
    assert_same_bits(ref.round_to_format(v, *fmt), oracle_round(v, fmt, oracle))


@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_reference_float64_near_ties(fmt):
    """float64 values an ulp off a midpoint go to the nearer value. (torch's float64 -> float8
    casts round through float32 first, which makes these ties: no oracle here.)"""
    t = ref.fp_values(*fmt)
    mid = (t[:-1] + t[1:]) / 2
    below, above = torch.nextafter(mid, torch.zeros_like(mid)), torch.nextafter(mid, torch.full_like(mid, math.inf))
    assert torch.equal(ref.round_to_format(below, *fmt), t[:-1])
    assert torch.equal(ref.round_to_format(above, *fmt), t[1:])
    assert torch.equal(ref.round_to_format(-below, *fmt), -t[:-1])


@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_reference_special_values(fmt):
    top = ref.fp_max(*fmt)
    v = torch.tensor([math.inf, -math.inf, math.nan, 3e38, -3e38, -1e-45, 0.0, -0.0])
    r = ref.round_to_format(v, *fmt)
    assert r[:2].tolist() == [top, -top] and math.isnan(r[2]) and r[3:5].tolist() == [top, -top]
    assert r[5:].tolist() == [0.0, 0.0, 0.0] and torch.signbit(r[5:]).tolist() == [True, False, True]


# ------------------------------------------------------------------ the op against the reference
def param_shape(shape, granularity, axis, group_size):
    if granularity == "tensor":
        return ()
    if granularity == "channel":
        return (shape[axis],)
    p = list(shape)
    p[axis] //= group_size
    return tuple(p)


GRANULARITIES = [("tensor", None, 0), ("channel", 1, 0), ("group", 2, 4), ("channel", -1, 0), ("group", 0, 2)]


def sample(shape, fmt, scale, axis, group_size, seed=0, dtype=torch.float32):
    """Values over the format's whole range relative to the scale: subnormals, normals, saturated;
    with -0.0, +-inf, NaN and a float32 subnormal."""
    g = torch.Generator().manual_seed(seed)
    magnitude = torch.exp(torch.empty(shape, dtype=torch.float64).uniform_(-14, 2, generator=g))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * magnitude * ref.fp_max(*fmt)
    x = x * ref.expand_param(scale.double(), x, axis, group_size)
    flat = x.view(-1)
    specials = torch.tensor([-0.0, math.inf, -math.inf, math.nan, 1e-40], dtype=torch.float64)
    flat[:min(len(flat), 5)] = specials[:len(flat)]
    return x.to(dtype)


def random_scale(pshape, seed=1, low=1e-3, high=1e1):
    g = torch.Generator().manual_seed(seed)
    log_scale = torch.empty(pshape, dtype=torch.float64).uniform_(math.log(low), math.log(high), generator=g)
    return torch.exp(log_scale).float()


@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
@pytest.mark.parametrize("granularity,axis,group_size", GRANULARITIES)
def test_matches_reference(device, fmt, granularity, axis, group_size):
    shape = (4, 6, 8)
    scale = random_scale(param_shape(shape, granularity, axis, group_size))
    x = sample(shape, fmt, scale, axis, group_size)
    y = ops.fake_quant_fp(x.to(device), scale.to(device), *fmt, axis, group_size)
    assert_same(y, ref.fake_quant_fp_reference(x, scale, *fmt, axis, group_size))


@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_ties_with_power_of_two_scales(device, fmt):
    """A power-of-two scale keeps x * (1/scale) exact: every midpoint is a real tie."""
    v = ties_and_neighbours(*fmt)
    for scale in (torch.tensor(2.0 ** -7), torch.tensor(1.0), torch.tensor(2.0 ** 9)):
        x = v * scale
        assert_same(ops.fake_quant_fp(x.to(device), scale.to(device), *fmt),
                    ref.fake_quant_fp_reference(x, scale, *fmt))


@pytest.mark.parametrize("fmt", [NAMED["e4m3"], NAMED["e5m2"]], ids=fmt_id)
def test_float8_round_trip(device, fmt):
    """With scale 1 the op is the (clamped) torch.float8 round trip over the float32 sweep."""
    dtype = torch.float8_e4m3fn if fmt[2] == "fn" else torch.float8_e5m2
    x = float32_sweep(4099)
    y = ops.fake_quant_fp(x.to(device), torch.tensor(1.0, device=device), *fmt)
    assert_same(y, oracle_round(x, fmt, dtype).float())


@pytest.mark.parametrize("dtype,scale_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                               (torch.float64, torch.float32), (torch.float64, torch.float64)])
@pytest.mark.parametrize("fmt", [NAMED["e4m3"], NAMED["e5m2"], NAMED["e2m1"], (6, 1, "finite")], ids=fmt_id)
@pytest.mark.parametrize("granularity,axis,group_size", GRANULARITIES[:3])
def test_dtypes(device, dtype, scale_dtype, fmt, granularity, axis, group_size):
    shape = (3, 6, 8)
    scale = random_scale(param_shape(shape, granularity, axis, group_size)).to(scale_dtype)
    x = sample(shape, fmt, scale, axis, group_size, dtype=dtype)
    y = ops.fake_quant_fp(x.to(device), scale.to(device), *fmt, axis, group_size)
    assert y.dtype == dtype
    assert_same(y, ref.fake_quant_fp_reference(x, scale, *fmt, axis, group_size))


@pytest.mark.parametrize("fmt", [NAMED["e4m3"], NAMED["e3m2"]], ids=fmt_id)
def test_layouts(device, fmt):
    base = torch.randn(2, 6, 9, 14) * 4
    scale = random_scale((6,))
    views = {
        "channels_last": base[:, :, :, :7].contiguous().to(memory_format=torch.channels_last),
        "transposed": base.permute(3, 1, 2, 0),
        "permuted": base.permute(0, 1, 3, 2),
        "sliced": base[:, :, ::2, 1::2],
        "expanded": base[:1, :, :5, :7].expand(2, 6, 5, 7),
    }
    for name, x in views.items():
        y = ops.fake_quant_fp(x.to(device), scale.to(device), *fmt, 1)
        assert_same(y, ref.fake_quant_fp_reference(x, scale, *fmt, 1))
        if name == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)
    xt = base[0, :, 0].t()  # [14, 6]: the channel axis last and strided
    assert_same(ops.fake_quant_fp(xt.to(device), scale.to(device), *fmt, 1),
                ref.fake_quant_fp_reference(xt, scale, *fmt, 1))


def test_empty(device):
    for shape, scale, axis, group_size in [((0,), torch.tensor(0.5), None, 0), ((0, 4), torch.ones(4), 1, 0),
                                           ((3, 0), torch.ones(3), 0, 0), ((2, 0), torch.ones(2, 0), 1, 4)]:
        x = torch.empty(shape, device=device, requires_grad=True)
        s = scale.to(device).requires_grad_()
        y = ops.fake_quant_fp(x, s, 4, 3, "fn", axis, group_size)
        assert y.shape == shape
        y.sum().backward()
        assert x.grad.shape == shape and s.grad.shape == scale.shape and not bool(s.grad.any())


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0] or [1, 3]  # any size divides an empty axis


# The `device` fixture is a plain string: nothing for hypothesis to reset between examples.
HYPOTHESIS = settings(max_examples=150, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPOTHESIS
@given(fmt=st.sampled_from(ALL_FORMATS), shape=st.lists(st.integers(0, 9), min_size=1, max_size=3),
       granularity=st.sampled_from(["tensor", "channel", "group"]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
       log_scale=st.floats(math.log(1e-6), math.log(1e6)), spread=st.floats(-12.0, 4.0),
       data=st.data(), seed=st.integers(0, 2 ** 31 - 1))
def test_random_cases(device, fmt, shape, granularity, dtype, log_scale, spread, data, seed):
    axis = None if granularity == "tensor" else data.draw(st.integers(-len(shape), len(shape) - 1))
    group_size = data.draw(st.sampled_from(divisors(shape[axis]))) if granularity == "group" else 0
    g = torch.Generator().manual_seed(seed)
    pshape = param_shape(shape, granularity, axis, group_size)
    scale = torch.exp(log_scale + torch.randn(pshape, generator=g, dtype=torch.float64)).clamp(1e-6, 1e6)
    scale = scale.to(torch.float64 if dtype == torch.float64 and seed % 2 else torch.float32)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * math.exp(spread) * ref.fp_max(*fmt)
    x = x * torch.exp(torch.randn(shape, generator=g, dtype=torch.float64) * 3)
    x = x * ref.expand_param(scale.double(), x, axis, group_size)
    if x.numel():
        specials = [math.inf, -math.inf, math.nan, 1e-40, -0.0, 3e38]
        picks = torch.randint(x.numel(), (3,), generator=g).tolist()
        for i, pick in enumerate(picks):
            x.view(-1)[pick] = specials[(seed + i) % len(specials)]
    x = x.to(dtype)
    y = ops.fake_quant_fp(x.to(device), scale.to(device), *fmt, axis, group_size)
    assert_same(y, ref.fake_quant_fp_reference(x, scale, *fmt, axis, group_size))


# ------------------------------------------------------------------ gradients
def dscale_tolerance(dy, x, scale, fmt, axis, group_size, rtol=1e-5):
    """Products rounded in float32 and summed in some order: relative to each scale's sum of magnitudes."""
    terms = dy.to(torch.float64) * ref.scale_grad_terms(x, scale, *fmt, axis, group_size)
    magnitude = ref.reduce_to_param(terms.abs(), scale, axis, group_size)
    return dict(rtol=rtol, atol=rtol * float(magnitude.max()) if magnitude.numel() else 0.0)


@pytest.mark.parametrize("fmt", [NAMED["e4m3"], NAMED["e5m2"], NAMED["e2m1"], (3, 4, "finite"), (7, 0, "finite")],
                         ids=fmt_id)
@pytest.mark.parametrize("granularity,axis,group_size", GRANULARITIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gradients(device, fmt, granularity, axis, group_size, dtype):
    shape = (4, 6, 8)
    scale = random_scale(param_shape(shape, granularity, axis, group_size)).to(
        torch.float64 if dtype == torch.float64 else torch.float32)
    x = sample(shape, fmt, scale, axis, group_size, dtype=dtype)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
    xg, sg = x.to(device).requires_grad_(), scale.to(device).requires_grad_()
    y = ops.fake_quant_fp(xg, sg, *fmt, axis, group_size, 0.3)
    dx, ds = torch.autograd.grad(y, (xg, sg), dy.to(device))
    dx_ref, ds_ref = ref.fake_quant_fp_grads(dy, x, scale, *fmt, axis, group_size, grad_factor=0.3)
    assert_same(dx, dx_ref)
    assert ds.dtype == scale.dtype and ds.shape == scale.shape
    torch.testing.assert_close(ds.cpu().double(), ds_ref, **dscale_tolerance(dy, x, scale, fmt, axis, group_size))
    # only the input: the same dx (the scale gradient is not computed)
    (dx_only,) = torch.autograd.grad(ops.fake_quant_fp(xg, scale.to(device), *fmt, axis, group_size), xg, dy.to(device))
    assert_same(dx_only, dx_ref)


@pytest.mark.parametrize("fmt", [NAMED["e4m3"], NAMED["e3m2"], (1, 2, "finite")], ids=fmt_id)
@pytest.mark.parametrize("granularity,axis,group_size", GRANULARITIES[:3])
def test_gradients_match_straight_through_autograd(device, fmt, granularity, axis, group_size):
    """gradcheck means nothing for a step function; autograd through the reference's
    straight-through composition (finite inputs: inf / inf there would be NaN) does."""
    shape = (4, 6, 8)
    scale = random_scale(param_shape(shape, granularity, axis, group_size))
    x = sample(shape, fmt, scale, axis, group_size, seed=3)
    x = torch.where(torch.isfinite(x), x, 1.0)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    # in float64, so that its own sums add no rounding
    xs, ss = x.double().requires_grad_(), scale.double().requires_grad_()
    dx_st, ds_st = torch.autograd.grad(ref.straight_through(xs, ss, *fmt, axis, group_size), (xs, ss), dy.double())
    xg, sg = x.to(device).requires_grad_(), scale.to(device).requires_grad_()
    dx, ds = torch.autograd.grad(ops.fake_quant_fp(xg, sg, *fmt, axis, group_size), (xg, sg), dy.to(device))
    torch.testing.assert_close(dx.cpu().double(), dx_st, rtol=1e-12, atol=0)
    # x / s there, x * (1/s) in float32 here: Q(v) - v differs by an ulp of v
    torch.testing.assert_close(ds.cpu().double(), ds_st, **dscale_tolerance(dy, x, scale, fmt, axis, group_size, 1e-4))


@pytest.mark.parametrize("fmt", [NAMED["e4m3"], NAMED["e2m3"]], ids=fmt_id)
@pytest.mark.parametrize("granularity,axis,group_size", GRANULARITIES[:3])
def test_masked_and_backward_ops(device, fmt, granularity, axis, group_size):
    shape = (4, 6, 40)
    scale = random_scale(param_shape(shape, granularity, axis, group_size)).to(device)
    x = sample(shape, fmt, scale.cpu(), axis, group_size).to(device)
    dy = torch.randn(shape, device=device)
    y, mask = ops.fake_quant_fp_masked(x, scale, *fmt, axis, group_size)
    assert_same(y, ops.fake_quant_fp(x, scale, *fmt, axis, group_size))
    dx_ref, ds_ref = ref.fake_quant_fp_grads(dy.cpu(), x.cpu(), scale.cpu(), *fmt, axis, group_size, 0.5)
    if mask.numel():  # a per-group layout keeps no mask (the backward recomputes it)
        assert_same(ops.clip_mask_backward(dy, mask), dx_ref)
    dx, ds = ops.fake_quant_fp_backward(dy, x, scale, *fmt, axis, group_size, 0.5, True)
    assert_same(dx, dx_ref)
    torch.testing.assert_close(ds.cpu().double(), ds_ref, **dscale_tolerance(dy.cpu(), x.cpu(), scale.cpu(), fmt,
                                                                            axis, group_size))
    dx, _ = ops.fake_quant_fp_backward(dy, x, scale, *fmt, axis, group_size, 0.5, False)
    assert_same(dx, dx_ref)


# ------------------------------------------------------------------ bad arguments, meta, opcheck
FORMAT_ERRORS = [((0, 3, "finite"), "exp_bits"), ((4, 4, "fn"), "exp_bits"), ((5, 3, "finite"), "exp_bits"),
                 ((4, -1, "finite"), "man_bits"), ((4, 3, "zzz"), "special"), ((5, 0, "fn"), "special|man_bits"),
                 ((1, 3, "ieee"), "special|exp_bits")]


@pytest.mark.parametrize("fmt,match", FORMAT_ERRORS)
@pytest.mark.parametrize("where", ["cpu", "meta"])
def test_bad_formats(fmt, match, where):
    x, s = torch.randn(4, 3, device=where), torch.tensor(0.1, device=where)
    with pytest.raises(ValueError, match=match):
        ops.fake_quant_fp(x, s, *fmt)
    with pytest.raises(ValueError, match=match):
        ops.fake_quant_fp_masked(x, s, *fmt)
    with pytest.raises(ValueError, match=match):
        ops.fake_quant_fp_backward(x, x, s, *fmt, None, 0, 1.0, True)


@pytest.mark.parametrize("kwargs,match,exc", [
    (dict(scale=torch.tensor(0.0)), "scale", ValueError),
    (dict(scale=torch.tensor(-0.5)), "scale", ValueError),
    (dict(scale=torch.tensor(math.nan)), "scale", ValueError),
    (dict(scale=torch.tensor(math.inf)), "scale", ValueError),
    (dict(scale=torch.tensor([0.1, 0.0, 0.2]), axis=1), "scale", ValueError),
    (dict(scale=torch.ones(2)), "scale", ValueError),
    (dict(scale=torch.ones(4), axis=1), "scale", ValueError),
    (dict(scale=torch.ones(2, 1), axis=0, group_size=2), "scale", ValueError),
    (dict(scale=torch.ones(4, 3, 1), axis=1, group_size=2), "group_size", ValueError),
    (dict(scale=torch.ones(3), axis=2), "axis", ValueError),
    (dict(scale=torch.tensor(0.1, dtype=torch.float16)), "scale", TypeError),
    (dict(grad_factor=math.nan), "grad_factor", ValueError),
])
def test_bad_arguments(kwargs, match, exc):
    args = dict(x=torch.randn(4, 3), scale=torch.tensor(0.1), exp_bits=4, man_bits=3, special="fn", axis=None,
                group_size=0, grad_factor=1.0)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        ops.fake_quant_fp(*args.values())


def _opcheck_cases(device):
    x = torch.randn(4, 6, 5, device=device) * 20
    xg = x.clone().requires_grad_()
    s_c = torch.full((6,), 0.05, device=device)
    s_t = torch.tensor(0.05, device=device, requires_grad=True)
    s_g = torch.full((4, 3, 5), 0.05, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    return {
        "per tensor, learned scale": (ops.fake_quant_fp.default, (xg, s_t, 4, 3, "fn", None, 0, 0.5)),
        "per channel": (ops.fake_quant_fp.default, (xg, s_c, 5, 2, "ieee", 1, 0, 1.0)),
        "per group, learned scale": (ops.fake_quant_fp.default, (xg, s_g, 2, 1, "finite", 1, 2, 1.0)),
        "masked per channel": (ops.fake_quant_fp_masked.default, (x, s_c, 3, 2, "finite", 1, 0)),
        "masked per group": (ops.fake_quant_fp_masked.default, (x, s_g.detach(), 2, 3, "finite", 1, 2)),
        "backward": (ops.fake_quant_fp_backward.default, (grad, x, s_c, 4, 3, "fn", 1, 0, 1.0, True)),
        "backward per group": (ops.fake_quant_fp_backward.default,
                               (grad, x, s_g.detach(), 1, 2, "finite", 1, 2, 0.1, True)),
    }


@pytest.mark.parametrize("case", list(_opcheck_cases("cpu")))
def test_opcheck(case, device):
    op, args = _opcheck_cases(device)[case]
    opcheck(op, args)


@pytest.mark.parametrize("case", list(_opcheck_cases("cpu")))
def test_meta_shapes(case):
    op, args = _opcheck_cases("cpu")[case]
    meta_args = [a.detach().to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    real, meta = op(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args]), op(*meta_args)
    real, meta = (real, meta) if isinstance(real, tuple) else ((real,), (meta,))
    if op is ops.fake_quant_fp_masked.default:
        # A meta mask has the length a non-CPU kernel would give: none ([0]) for short channel runs.
        assert meta[1].dtype == torch.int32 and meta[1].shape in (real[1].shape, (0,))
        real, meta = real[:1], meta[:1]
    for r, m in zip(real, meta):
        assert m.device.type == "meta" and m.shape == r.shape and m.dtype == r.dtype


# ------------------------------------------------------------------ spec level
@pytest.mark.parametrize("name,bits,exp_bits", [("e4m3", 8, 4), ("e5m2", 8, 5), ("e2m3", 6, 2), ("e3m2", 6, 3),
                                                ("e2m1", 4, 2)])
def test_fp_spec_names(name, bits, exp_bits):
    assert qx.fp_spec(name) == qx.QuantSpec(scheme="fp", bits=bits, exp_bits=exp_bits)
    assert qx.fp_spec(name, granularity="channel", axis=1) == qx.QuantSpec(scheme="fp", bits=bits, exp_bits=exp_bits,
                                                                           granularity="channel", axis=1)
    x = sample((5, 40), NAMED[name], torch.tensor(0.25), None, 0)
    assert_same(qx.fake_quant(x, qx.fp_spec(name), scale=0.25),
                ref.fake_quant_fp_reference(x, torch.tensor(0.25), *NAMED[name]))


@pytest.mark.parametrize("bits,exp_bits,fp_special,special", [
    (8, 4, "auto", "fn"), (8, 5, "auto", "ieee"), (6, 2, "auto", "finite"), (6, 3, "auto", "finite"),
    (4, 2, "auto", "finite"), (8, 3, "auto", "finite"), (7, 3, "auto", "finite"), (8, 6, "auto", "finite"),
    (5, 1, "auto", "finite"), (8, 4, "ieee", "ieee"), (8, 4, "finite", "finite"), (8, 5, "fn", "fn"),
    (6, 3, "ieee", "ieee")])
def test_spec_special_resolution(bits, exp_bits, fp_special, special):
    """Values past every candidate's largest value tell the specials apart."""
    fmt = (exp_bits, bits - 1 - exp_bits, special)
    spec = qx.QuantSpec(scheme="fp", bits=bits, exp_bits=exp_bits, fp_special=fp_special)
    scale = torch.tensor(0.3)
    x = sample((6, 50), fmt, scale, None, 0) * 1.2
    assert_same(qx.fake_quant(x, spec, scale=scale), ref.fake_quant_fp_reference(x, scale, *fmt))


@pytest.mark.parametrize("granularity,axis,group_size", GRANULARITIES[1:])
def test_spec_granularities(granularity, axis, group_size):
    shape = (4, 6, 8)
    spec = qx.QuantSpec(scheme="fp", bits=6, exp_bits=3, granularity=granularity, axis=axis,
                        group_size=group_size or None)
    scale = random_scale(param_shape(shape, granularity, axis, group_size))
    x = sample(shape, (3, 2, "finite"), scale, axis, group_size).requires_grad_()
    y = qx.fake_quant(x, spec, scale=scale)
    assert_same(y, ref.fake_quant_fp_reference(x, scale, 3, 2, "finite", axis, group_size))
    dy = torch.randn(shape)
    (dx,) = torch.autograd.grad(y, x, dy)
    assert_same(dx, ref.fake_quant_fp_grads(dy, x, scale, 3, 2, "finite", axis, group_size)[0])


@pytest.mark.parametrize("fields,match", [(dict(exp_bits=8), "exp_bits"), (dict(exp_bits=0), "exp_bits"),
                                          (dict(fp_special="zzz"), "fp_special"),
                                          (dict(bits=8, exp_bits=7, fp_special="fn"), "fp_special|mantissa"),
                                          (dict(bits=3, exp_bits=1, fp_special="ieee"), "fp_special|exp_bits")])
def test_bad_specs(fields, match):
    with pytest.raises(ValueError, match=match):
        qx.QuantSpec(**{"scheme": "fp", "bits": 8, "exp_bits": 4, **fields})
