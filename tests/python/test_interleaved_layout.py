"""Per-channel ops with the channel axis (nearly) innermost in memory: the CPU
loops cycle through the parameters (the Interleaved layout of math/layout.h).
Results must equal ATen's per-channel ops and the level reference bit for bit,
and the parameter gradients must not depend on the memory layout: the same
values laid out channel-outermost give the same bits."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import schemes_reference as ref

ops = torch.ops.quantext
SETTINGS = settings(derandomize=True, max_examples=30, deadline=None)


def sample(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)


# (shape, axis, permutation that makes the channel axis innermost in memory).
# The last cases have a few elements inside each channel index (inner 2, 3),
# and channel counts below and above a SIMD vector.
LAYOUTS = [((4, 7, 5, 3), 1, (0, 2, 3, 1)), ((64, 3), 1, (0, 1)), ((9, 37), 1, (0, 1)), ((6, 16, 2), 1, (0, 2, 1)),
           ((5, 40, 3), 1, (0, 2, 1)), ((3, 8, 4, 4), 1, (0, 2, 3, 1)), ((300, 5), -1, (0, 1))]


def innermost(shape, perm, seed, dtype=torch.float32):
    """A tensor of `shape` whose memory order is `perm` (channels innermost)."""
    x = sample([shape[p] for p in perm], seed, dtype)
    inverse = [perm.index(d) for d in range(len(shape))]
    return x.permute(inverse)


def uniform_params(channels, seed):
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(channels, generator=g) * 0.2 + 0.02
    zero = torch.randint(-3, 4, (channels,), generator=g).float()
    return scale, zero


@SETTINGS
@given(case=st.sampled_from(LAYOUTS), seed=st.integers(0, 2 ** 16),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
def test_uniform_forward_matches_aten(case, seed, dtype):
    shape, axis, perm = case
    x = innermost(shape, perm, seed, dtype)
    ax = axis % len(shape)
    scale, zero = uniform_params(shape[ax], seed)
    if dtype == torch.float64:
        scale = scale.double()
        zero = zero.double()
    y = ops.fake_quant_uniform(x, scale, zero, -8, 7, axis, 0, 1.0)
    y_ref = torch.fake_quantize_per_channel_affine(x.float(), scale.float(), zero.int(), ax, -8, 7).to(dtype)
    assert y.stride() == x.stride()
    if dtype == torch.float64:  # ATen computes in float32: the channel-outermost layout instead
        y_ref = ops.fake_quant_uniform(x.contiguous(), scale, zero, -8, 7, axis, 0, 1.0)
    assert torch.equal(y, y_ref)


@SETTINGS
@given(case=st.sampled_from(LAYOUTS), seed=st.integers(0, 2 ** 16))
def test_uniform_lsq_grads_do_not_depend_on_layout(case, seed):
    shape, axis, perm = case
    x_inner = innermost(shape, perm, seed)
    x_outer = x_inner.contiguous()
    scale, zero = uniform_params(shape[axis], seed)
    dy = sample(shape, seed + 1)
    results = []
    for x in (x_inner, x_outer):
        x = x.detach().requires_grad_()
        s = scale.clone().requires_grad_()
        z = zero.clone().requires_grad_()
        y = ops.fake_quant_uniform(x, s, z, -8, 7, axis, 0, 0.5)
        results.append((y, *torch.autograd.grad(y, (x, s, z), dy)))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@SETTINGS
@given(case=st.sampled_from(LAYOUTS), seed=st.integers(0, 2 ** 16),
       grid=st.sampled_from([("pot", 4, True), ("apot", 8, True), ("apot", 5, False), ("pot", 3, False)]))
def test_levels_match_reference(case, seed, grid):
    shape, axis, perm = case
    scheme, bits, signed = grid
    x = innermost(shape, perm, seed)
    x = x if signed else x.abs()
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(shape[axis], generator=g) * 2 + 0.5
    y = ops.fake_quant_levels(x, alpha, scheme, bits, signed, 2, "nearest", axis, 1.0)
    assert torch.equal(y, ref.fake_quant(x, alpha, scheme, bits, signed, axis=axis % len(shape)))
    dy = sample(shape, seed + 1)
    xr = x.detach().requires_grad_()
    ar = alpha.clone().requires_grad_()
    dx, da = torch.autograd.grad(ops.fake_quant_levels(xr, ar, scheme, bits, signed, 2, "nearest", axis, 1.0),
                                 (xr, ar), dy)
    dx_ref, da_ref = ref.grads(dy, x, alpha, scheme, bits, signed, axis=axis % len(shape))
    assert torch.equal(dx, dx_ref)
    torch.testing.assert_close(da, da_ref.to(da.dtype), rtol=1e-5, atol=1e-5)
    # The same values laid out channel-outermost: the same bits.
    xo = x.contiguous().requires_grad_()
    ao = alpha.clone().requires_grad_()
    dxo, dao = torch.autograd.grad(ops.fake_quant_levels(xo, ao, scheme, bits, signed, 2, "nearest", axis, 1.0),
                                   (xo, ao), dy)
    assert torch.equal(dx, dxo) and torch.equal(da, dao)


@pytest.mark.parametrize("case", LAYOUTS)
def test_codes_round_trip(case):
    shape, axis, perm = case
    x = innermost(shape, perm, 3)
    scale, zero = uniform_params(shape[axis], 3)
    codes = ops.quantize_uniform(x, scale, zero, -8, 7, axis, 0)
    assert torch.equal(codes, ops.quantize_uniform(x.contiguous(), scale, zero, -8, 7, axis, 0))
    assert torch.equal(ops.dequantize_uniform(codes, scale, zero, axis, 0),
                       ops.fake_quant_uniform(x, scale, zero, -8, 7, axis, 0, 1.0))
    alpha = torch.rand(shape[axis]) + 0.5
    lc = ops.quantize_levels(x, alpha, "apot", 8, True, 2, "nearest", axis)
    assert torch.equal(lc, ref.codes(x, alpha, "apot", 8, True, axis=axis % len(shape)).to(lc.dtype))
    assert torch.equal(ops.dequantize_levels(lc, alpha, "apot", 8, True, 2, axis),
                       ops.fake_quant_levels(x, alpha, "apot", 8, True, 2, "nearest", axis, 1.0))


def test_masked_backward_matches_plain():
    """The fixed-parameter forward saves its clip mask in this layout too."""
    x = innermost((4, 7, 5, 3), (0, 2, 3, 1), 5).requires_grad_()
    scale, zero = uniform_params(7, 5)
    dy = sample((4, 7, 5, 3), 6)
    (dx,) = torch.autograd.grad(ops.fake_quant_uniform(x, scale, zero, -8, 7, 1, 0, 1.0), (x,), dy)
    xa = x.detach().float().requires_grad_()
    (dx_ref,) = torch.autograd.grad(torch.fake_quantize_per_channel_affine(xa, scale, zero.int(), 1, -8, 7), (xa,), dy)
    assert torch.equal(dx, dx_ref)
