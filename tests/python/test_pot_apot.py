"""PoT/APoT fake quantization (quantext::fake_quant_levels) against the
brute-force nearest-level reference: forward bit for bit, gradients by the
reference formulas, parameter gradients by gradcheck where the straight-through
estimator is the true derivative."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.library import opcheck

import quantext as qx
import schemes_reference as ref
from quantext.functional import fake_quant_levels

SCHEMES = ("pot", "apot")


def grids():
    """(scheme, bits, signed, k) over every width."""
    bits = st.integers(1, 8)
    return st.tuples(st.sampled_from(SCHEMES), bits, st.booleans(), st.sampled_from([1, 2, 3])).filter(
        lambda g: not (g[2] and g[1] == 1))


def sample(shape, seed, dtype=torch.float32, spread=1.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * spread
    return x.to(dtype)


def with_specials(x, alpha, axis, scheme, bits, signed, k, seed):
    """Replace about a third of x by alpha times a level, a midpoint between
    levels (a tie, exact when alpha is a power of two) or a clip edge, with
    random signs."""
    levels = ref.magnitude_tensor(scheme, ref.magnitude_bits(bits, signed), k)
    single = levels.float().double()
    special = torch.cat([levels, (levels[1:] + levels[:-1]) / 2, (single[1:] + single[:-1]) / 2,
                         torch.tensor([1.0, 1.0 + 2 ** -20, 0.0], dtype=torch.float64)])
    g = torch.Generator().manual_seed(seed + 2)
    pick = special[torch.randint(len(special), x.shape, generator=g)]
    pick = pick * torch.where(torch.rand(x.shape, generator=g) < 0.5, -1.0, 1.0)
    a = alpha if axis is None else alpha.reshape([-1 if d == axis else 1 for d in range(x.dim())])
    return torch.where(torch.rand(x.shape, generator=g) < 0.35, (pick * a).to(x.dtype), x)


def alpha_for(x, axis, seed):
    g = torch.Generator().manual_seed(seed + 1)
    n = 1 if axis is None else x.shape[axis]
    a = torch.rand(n, generator=g) * 2 + 0.25
    return a.reshape(()) if axis is None else a


def assert_same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b) or torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0)), (
        (a - b).abs().max())


@settings(derandomize=True, max_examples=60, deadline=None)
@given(grid=grids(), shape=st.lists(st.integers(1, 9), min_size=1, max_size=4), per_channel=st.booleans(),
       pow2_alpha=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_forward_matches_nearest_level(grid, shape, per_channel, pow2_alpha, seed):
    scheme, bits, signed, k = grid
    axis = (seed % len(shape)) if per_channel else None
    x = sample(shape, seed)
    alpha = alpha_for(x, axis, seed)
    if pow2_alpha:
        alpha = torch.exp2(torch.round(torch.log2(alpha)))
    x = with_specials(x, alpha, axis, scheme, bits, signed, k, seed)
    y = fake_quant_levels(x, alpha, scheme, bits, signed, k, axis=axis)
    assert_same(y, ref.fake_quant(x, alpha, scheme, bits, signed, k, axis=axis))


@pytest.mark.parametrize("scheme,bits,signed", [("pot", 4, True), ("apot", 5, True), ("apot", 8, False),
                                                ("pot", 8, False), ("apot", 3, False)])
def test_forward_large_and_float64(device, scheme, bits, signed):
    # Big enough for the SIMD body, both CPU searches (scan up to 128 levels,
    # binary above) and the multi-threaded chunks.
    for dtype in (torch.float32, torch.float64):
        x = sample((70001,), 3, dtype, spread=0.7)
        alpha = torch.tensor(1.3, dtype=dtype)
        y = fake_quant_levels(x.to(device), alpha.to(device), scheme, bits, signed)
        assert_same(y.cpu(), ref.fake_quant(x, alpha, scheme, bits, signed))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_ties_go_to_smaller_magnitude(device, scheme, bits):
    # A value exactly between two float32 levels goes to the smaller one.
    levels = [Fraction(v) for v in ref.magnitude_tensor(scheme, bits - 1).float().tolist()]
    ties = [(lo + hi) / 2 for lo, hi in zip(levels, levels[1:])]
    pairs = [(float(lo), float(t)) for lo, t in zip(levels, ties) if Fraction(float(torch.tensor(float(t)))) == t]
    assert len(pairs) > 0
    below, exact = (torch.tensor(v) for v in zip(*pairs))
    x = torch.cat([exact, -exact])
    y = fake_quant_levels(x.to(device), torch.tensor(1.0, device=device), scheme, bits, True).cpu()  # v == x
    assert torch.equal(y, torch.cat([below, -below]))


def neighbours(x, steps):
    """x and its float neighbours up to `steps` ulps away on both sides."""
    out, up, down = [x], x, x
    for _ in range(steps):
        up, down = torch.nextafter(up, up.new_tensor(math.inf)), torch.nextafter(down, down.new_tensor(-math.inf))
        out += [up, down]
    return torch.cat(out)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits,signed", [(b, s) for b in range(1, 9) for s in (False, True) if not (s and b == 1)])
def test_every_switch_point(scheme, bits, signed):
    """Every level and the float32 values on and next to every midpoint, through
    whichever CPU search the grid takes (closed form, bucket index, scan or
    binary search) and through the scalar tail."""
    levels = ref.magnitude_tensor(scheme, ref.magnitude_bits(bits, signed)).float()
    mids = ((levels[1:].double() + levels[:-1].double()) / 2).float()
    points = torch.cat([levels, neighbours(mids, 1)])
    x = torch.cat([points, -points]) if signed else points
    x = torch.cat([x, x[:5]])  # an odd length leaves a scalar tail
    alpha = torch.tensor(1.0)
    assert_same(fake_quant_levels(x, alpha, scheme, bits, signed), ref.fake_quant(x, alpha, scheme, bits, signed))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits,signed", [(b, s) for b in range(6, 9) for s in (False, True)])
def test_bucket_edges(scheme, bits, signed):
    """Every float32 in [2^-20, 1] whose bits are a multiple of 2^9, and the one
    below it: on both sides of every edge of the CPU bucket index's buckets and
    fine buckets (a bucket spans a power of two of at least 2^12 in the bits,
    a fine bucket an eighth of it), where a fine bucket's one stored level must
    equal the search."""
    lo, hi = (torch.tensor(v).view(torch.int32).item() for v in (2.0 ** -20, 1.0))
    on = torch.arange(lo, hi + 1, 2 ** 9, dtype=torch.int32)
    edges = torch.cat([on, on - 1]).view(torch.float32)
    x = torch.cat([edges, -edges]) if signed else edges
    alpha = torch.tensor(1.0)
    assert_same(fake_quant_levels(x, alpha, scheme, bits, signed), ref.fake_quant(x, alpha, scheme, bits, signed))


@pytest.mark.parametrize("rounding", ["nearest", "log"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [0.37, 3e-5, 6e4, 2 ** -140, 1e30])
def test_switch_points_with_alpha(alpha, dtype, rounding):
    """With one alpha the CPU compares x with the thresholds carried over to
    x (no division): every x next to alpha times a level, a switch point or
    the clip edge gives the level, dx and dalpha of the quotient, as the
    reference and the per-channel kernel (which divides) compute them, on
    every grid. The alphas cover subnormal products and quotients. (The
    reference's log2 is not exact at float64 geometric midpoints: float64 log
    rounding is checked against the per-channel kernel only.)"""
    alpha_t = torch.tensor(alpha, dtype=dtype)
    against_ref = dtype == torch.float32 or rounding == "nearest"
    for scheme in SCHEMES:
        for bits, signed in [(b, s) for b in range(1, 9) for s in (False, True) if not (s and b == 1)]:
            if scheme == "apot" and rounding == "log":
                continue
            levels = ref.magnitude_tensor(scheme, ref.magnitude_bits(bits, signed)).to(dtype).double()
            mids = (levels[1:] + levels[:-1]) / 2 if rounding == "nearest" else levels[1:] * math.sqrt(0.5)
            points = (torch.cat([levels, mids]) * alpha).to(dtype)
            x = neighbours(points, 3)
            x = torch.cat([x, -x, x[:5]])  # an odd length leaves a scalar tail
            args = (scheme, bits, signed, 2, rounding)
            dy = torch.linspace(-1, 1, len(x), dtype=dtype)
            xg, ag = x.clone().requires_grad_(), alpha_t.clone().requires_grad_()
            y = fake_quant_levels(xg, ag, *args)
            y.backward(dy)
            # Two channels of the same alpha take the dividing kernels.
            x2, a2 = torch.stack([x, x]).requires_grad_(), alpha_t.repeat(2).requires_grad_()
            y2 = fake_quant_levels(x2, a2, *args, axis=0)
            y2.backward(torch.stack([dy, dy]))
            assert_same(y, y2[0].detach())
            assert torch.equal(xg.grad, x2.grad[0])
            torch.testing.assert_close(ag.grad, a2.grad[0], rtol=1e-6, atol=1e-30)
            if against_ref:
                assert_same(y.detach(), ref.fake_quant(x, alpha_t, *args))
                dx, dalpha = ref.grads(dy, x, alpha_t, *args)
                assert torch.equal(xg.grad, dx)
                torch.testing.assert_close(ag.grad.double(), dalpha, rtol=1e-5, atol=1e-30)


@settings(derandomize=True, max_examples=30, deadline=None)
@given(bits=st.integers(1, 8), signed=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_log_rounding_matches_log2_reference(bits, signed, seed):
    if signed and bits == 1:
        return
    b = ref.magnitude_bits(bits, signed)
    # Log-uniform magnitudes over the whole exponent range, both signs.
    g = torch.Generator().manual_seed(seed)
    e = -torch.rand(4000, generator=g, dtype=torch.float64) * (2 ** b + 1)
    x = (torch.exp2(e) * torch.where(torch.rand(4000, generator=g) < 0.5, -1.0, 1.0)).float()
    alpha = torch.tensor(1.0 + seed % 7 / 8)
    x = x * alpha
    y = fake_quant_levels(x, alpha, "pot", bits, signed, rounding="log")
    assert_same(y, ref.fake_quant(x, alpha, "pot", bits, signed, rounding="log"))


def test_log_rounding_definition():
    # Geometric midpoints: 2^-0.5 splits 1 and 1/2; below 2^-(m+0.5) -> 0.
    alpha = torch.tensor(1.0)
    s = math.sqrt(0.5)
    x = torch.tensor([s * 1.0001, s * 0.9999, 0.74, 2 ** -6.49, 2 ** -6.51])
    y = fake_quant_levels(x, alpha, "pot", 4, True, rounding="log")  # m = 6
    assert y.tolist() == [1.0, 0.5, 1.0, 2 ** -6, 0.0]
    # Linear midpoints instead: 3/4 between 1/2 and 1, 2^-7 between 0 and 2^-6.
    assert fake_quant_levels(x, alpha, "pot", 4, True).tolist() == [0.5, 0.5, 0.5, 2 ** -6, 2 ** -6]


@pytest.mark.parametrize("bits", [3, 4, 5])
def test_nearest_has_lower_mse_than_log(bits):
    x = sample((200000,), 11)
    alpha = torch.tensor(2.5)
    mse = {r: (fake_quant_levels(x, alpha, "pot", bits, True, rounding=r) - x).pow(2).mean().item()
           for r in ("nearest", "log")}
    assert mse["nearest"] < mse["log"]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("signed", [True, False])
def test_special_values(device, scheme, signed):
    x = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e30, -1e30, 1e-30], device=device,
                     requires_grad=True)
    alpha = torch.tensor(2.0, device=device, requires_grad=True)
    y = fake_quant_levels(x, alpha, scheme, 4, signed)
    low = -2.0 if signed else 0.0
    assert math.isnan(y[0].item())
    assert y[1:].tolist() == [2.0, low, 0.0, 0.0, 2.0, low, 0.0]
    y.backward(torch.ones_like(y))
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    # +-inf / +-1e30: the clip bound (1 above; -1 or 0 below); NaN: 0.
    assert alpha.grad.item() == pytest.approx(2 * (1 + (-1 if signed else 0)) + 0 - 1e-30 / 2, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_dtypes(device, dtype, scheme):
    x = sample((5, 301), 5, dtype)
    alpha = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5], dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    y = fake_quant_levels(x.to(device), alpha.to(device), scheme, 5, True, axis=0).cpu()
    assert_same(y, ref.fake_quant(x, alpha, scheme, 5, True, axis=0))


@pytest.mark.parametrize("axis", [None, 0, 1, 3, -1])
def test_layouts(device, axis):
    x = sample((4, 6, 5, 7), 9).contiguous(memory_format=torch.channels_last)
    alpha = alpha_for(x, axis, 2)
    y = fake_quant_levels(x.to(device), alpha.to(device), "apot", 4, True, axis=axis)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert_same(y.cpu(), ref.fake_quant(x, alpha, "apot", 4, True, axis=axis))
    t = sample((7, 12), 9)[:, ::2].t()  # non-contiguous, non-dense
    ax = 0 if axis is not None else None
    a_t = alpha_for(t, ax, 3)
    y = fake_quant_levels(t.to(device), a_t.to(device), "pot", 3, False, axis=ax)
    assert_same(y.cpu(), ref.fake_quant(t, a_t, "pot", 3, False, axis=ax))


def test_empty(device):
    x = torch.empty(0, 3, device=device, requires_grad=True)
    alpha = torch.ones(3, device=device, requires_grad=True)
    y = fake_quant_levels(x, alpha, "apot", 4, True, axis=1)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 3) and torch.equal(alpha.grad.cpu(), torch.zeros(3))


@settings(derandomize=True, max_examples=40, deadline=None)
@given(grid=grids(), shape=st.lists(st.integers(1, 7), min_size=1, max_size=3), per_channel=st.booleans(),
       rounding=st.sampled_from(["nearest", "log"]), seed=st.integers(0, 2 ** 16))
def test_backward_matches_reference(grid, shape, per_channel, rounding, seed):
    scheme, bits, signed, k = grid
    if rounding == "log":
        scheme = "pot"
    axis = (seed % len(shape)) if per_channel else None
    x = sample(shape, seed, spread=2.0)
    alpha = alpha_for(x, axis, seed)
    x = with_specials(x, alpha, axis, scheme, bits, signed, k, seed).requires_grad_()
    alpha.requires_grad_()
    dy = sample(shape, seed + 5)
    y = fake_quant_levels(x, alpha, scheme, bits, signed, k, rounding, axis, grad_factor=0.5)
    dx, dalpha = torch.autograd.grad(y, (x, alpha), dy)
    ref_dx, ref_dalpha = ref.grads(dy, x.detach(), alpha.detach(), scheme, bits, signed, k, rounding, axis)
    assert torch.equal(dx, ref_dx)
    torch.testing.assert_close(dalpha.double(), 0.5 * ref_dalpha, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_large(device, dtype):
    x = sample((3, 50000), 1, dtype)
    alpha = torch.tensor([0.5, 1.0, 2.0])
    dy = sample((3, 50000), 2, dtype)
    xd, ad = x.to(device).requires_grad_(), alpha.to(device).requires_grad_()
    for scheme, bits in (("apot", 4), ("pot", 8)):
        y = fake_quant_levels(xd, ad, scheme, bits, False, axis=0)
        dx, dalpha = torch.autograd.grad(y, (xd, ad), dy.to(device))
        ref_dx, ref_dalpha = ref.grads(dy, x, alpha, scheme, bits, False, axis=0)
        assert torch.equal(dx.cpu(), ref_dx)
        torch.testing.assert_close(dalpha.double().cpu(), ref_dalpha, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("axis", [None, 1])
def test_gradcheck_float64(scheme, signed, axis):
    # The STE is the true derivative where x is clipped: y = alpha * bound,
    # dy/dx = 0, dy/dalpha = bound. gradcheck there checks the alpha
    # reduction (per tensor / per channel) numerically.
    g = torch.Generator().manual_seed(0)
    mag = 1.5 + torch.rand(4, 3, 5, generator=g, dtype=torch.float64)
    x = (mag * torch.where(torch.rand(4, 3, 5, generator=g) < 0.5, -1.0, 1.0)).requires_grad_()
    alpha = (torch.tensor(1.0, dtype=torch.float64) if axis is None else
             torch.tensor([0.7, 1.0, 1.2], dtype=torch.float64)).requires_grad_()
    torch.autograd.gradcheck(lambda x, a: fake_quant_levels(x, a, scheme, 4, signed, axis=axis),
                             (x, alpha))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(alpha=torch.tensor(0.0)), ValueError, "alpha must be positive and finite, got 0"),
    (dict(alpha=torch.tensor(-1.0)), ValueError, "alpha must be positive and finite, got -1"),
    (dict(alpha=torch.tensor(math.nan)), ValueError, "alpha must be positive and finite, got nan"),
    (dict(alpha=torch.tensor(math.inf)), ValueError, "alpha must be positive and finite, got inf"),
    (dict(alpha=torch.tensor(1.0, dtype=torch.float64)), TypeError, "alpha must be float32"),
    (dict(alpha=torch.ones(3), axis=1), ValueError, r"per-channel alpha must have shape \[4\]"),
    (dict(bits=9), ValueError, r"bits must be in \[2, 8\] for a signed grid, got 9"),
    (dict(bits=1), ValueError, r"bits must be in \[2, 8\] for a signed grid, got 1"),
    (dict(k=0), ValueError, r"k must be in \[1, 8\], got 0"),
    (dict(scheme="uniform"), ValueError, "scheme must be 'pot' or 'apot', got 'uniform'"),
    (dict(rounding="up"), ValueError, "rounding must be 'nearest' or 'log', got 'up'"),
    (dict(scheme="apot", rounding="log"), ValueError, "rounding='log' is only defined for scheme 'pot'"),
    (dict(x=torch.ones(2, 4, dtype=torch.int32)), TypeError, "input must be a floating point tensor"),
])
def test_errors(kwargs, error, match):
    args = dict(x=torch.ones(2, 4), alpha=torch.tensor(1.0), scheme="pot", bits=4, signed=True, k=2,
                rounding="nearest", axis=None)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        fake_quant_levels(**args)


def test_opcheck():
    x = sample((3, 4, 5), 0).requires_grad_()
    for args in [(x, torch.tensor([1.0, 2.0, 0.5], requires_grad=True), "apot", 4, True, 2, "nearest", 0, 1.0),
                 (x, torch.tensor(1.5, requires_grad=True), "pot", 3, False, 2, "log", None, 0.5)]:
        opcheck(torch.ops.quantext.fake_quant_levels.default, args)
    grad = torch.randn(3, 4, 5)
    opcheck(torch.ops.quantext.fake_quant_levels_backward.default,
            (grad, x.detach(), torch.tensor(1.5), "apot", 5, True, 2, "nearest", None, 1.0, True))


def test_compile():
    x = sample((8, 16), 0)
    alpha = torch.tensor(1.5)
    f = torch.compile(lambda x, a: qx.ops.fake_quant_levels(x, a, "apot", 4, True) * 2, fullgraph=True,
                      backend="eager")
    assert torch.equal(f(x, alpha), fake_quant_levels(x, alpha, "apot", 4, True) * 2)
