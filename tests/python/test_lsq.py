"""LSQ / LSQ+ gradients of the uniform op: against ATen's learnable fake-quant
ops (per tensor, per channel), and per group / in float64, where ATen has no
equivalent, against the DESIGN 2.1 formulas and gradcheck."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import quantext as qx
from quantext.functional import fake_quant_uniform, lsq_grad_factor
from quantext.spec import QuantSpec


def sample(shape, seed, dtype=torch.float32, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * spread).to(dtype)


def grads(y, inputs, seed):
    dy = sample(y.shape, seed + 100, y.dtype).to(y.device)
    return torch.autograd.grad(y, inputs, dy)


BOUNDS = [(-128, 127), (-8, 7), (0, 15), (0, 255), (-7, 7)]


def aten_zero_points(n, qmax, g):
    # ATen's learnable backward reads the zero point as int64(z + 0.5), which
    # truncates a negative z toward zero (z = -1 becomes 0) while its forward
    # uses -1: compare on non-negative integer zero points only. Negative ones
    # are covered by test_per_group_formulas.
    return torch.randint(0, qmax + 1, (n,), generator=g).float()


def assert_matches_aten(y, y_ref, inputs, seed):
    """Outputs and input gradients bit for bit, scale and zero-point gradients
    to summation-order rounding."""
    assert torch.equal(y, y_ref)
    dx, ds, dz = grads(y, inputs, seed)
    dx_ref, ds_ref, dz_ref = grads(y_ref, inputs, seed)
    assert torch.equal(dx, dx_ref)
    torch.testing.assert_close(ds, ds_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dz, dz_ref, rtol=1e-4, atol=1e-4)


# The `device` fixture is a plain string: no state for hypothesis to reset between examples.
HYPOTHESIS = settings(derandomize=True, max_examples=25, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPOTHESIS
@given(bounds=st.sampled_from(BOUNDS), shape=st.lists(st.integers(1, 40), min_size=1, max_size=3),
       seed=st.integers(0, 2 ** 16), factor=st.sampled_from([1.0, 0.3]))
def test_per_tensor_matches_aten(bounds, shape, seed, factor, device):
    qmin, qmax = bounds
    x = sample(shape, seed).to(device).requires_grad_()
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(1, generator=g) * 0.3 + 0.01).to(device).requires_grad_()
    z = aten_zero_points(1, qmax, g).to(device).requires_grad_()
    y = fake_quant_uniform(x, s, z, qmin, qmax, grad_factor=factor)
    y_ref = torch._fake_quantize_learnable_per_tensor_affine(x, s, z, qmin, qmax, factor)
    assert_matches_aten(y, y_ref, (x, s, z), seed)


@HYPOTHESIS
@given(bounds=st.sampled_from(BOUNDS), shape=st.lists(st.integers(1, 12), min_size=2, max_size=4),
       seed=st.integers(0, 2 ** 16), factor=st.sampled_from([1.0, 0.05]), channels_last=st.booleans())
def test_per_channel_matches_aten(bounds, shape, seed, factor, channels_last, device):
    qmin, qmax = bounds
    x = sample(shape, seed).to(device)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    axis = seed % x.dim()
    g = torch.Generator().manual_seed(seed)
    c = x.shape[axis]
    s = (torch.rand(c, generator=g) * 0.3 + 0.01).to(device).requires_grad_()
    z = aten_zero_points(c, qmax, g).to(device).requires_grad_()
    y = fake_quant_uniform(x, s, z, qmin, qmax, axis, grad_factor=factor)
    y_ref = torch._fake_quantize_learnable_per_channel_affine(x, s, z, axis, qmin, qmax, factor)
    assert_matches_aten(y, y_ref, (x, s, z), seed)


def lsq_reference(dy, x, s, z, qmin, qmax):
    """DESIGN 2.1, elementwise on broadcast parameters: (dx, ds, dz) per element."""
    zr = torch.round(z)
    inv = 1 / s
    q = torch.round(x * inv) + zr
    below, above = q < qmin, q > qmax
    inside = ~(below | above)
    y = (q.clamp(qmin, qmax) - zr) * s
    ds = torch.where(inside, (y - x) * inv, torch.where(below, qmin - zr, qmax - zr))
    dz = torch.where(inside, torch.zeros_like(x), -s.expand_as(x))
    return torch.where(inside, dy, torch.zeros_like(dy)), dy * ds, dy * dz


def group_view(p, group_size):
    return p.repeat_interleave(group_size, dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bounds", [(-8, 7), (0, 255)])
def test_per_group_formulas(dtype, bounds, device):
    qmin, qmax = bounds
    x = sample((3, 5, 12), 1, dtype).to(device).requires_grad_()
    g = torch.Generator().manual_seed(2)
    s = (torch.rand(3, 5, 3, generator=g, dtype=torch.float64) * 0.2 + 0.02).to(dtype).to(device).requires_grad_()
    z = torch.randint(qmin, qmax + 1, (3, 5, 3), generator=g).to(dtype).to(device).requires_grad_()
    y = fake_quant_uniform(x, s, z, qmin, qmax, -1, 4, grad_factor=0.5)
    dy = sample(y.shape, 3, dtype).to(device)
    dx, ds, dz = torch.autograd.grad(y, (x, s, z), dy)
    with torch.no_grad():
        dx_ref, ds_el, dz_el = lsq_reference(dy.double(), x.double(), group_view(s.double(), 4),
                                             group_view(z.double(), 4), qmin, qmax)
    assert torch.equal(dx, dx_ref.to(dtype))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ds.double(), 0.5 * ds_el.reshape(3, 5, 3, 4).sum(-1), **tol)
    torch.testing.assert_close(dz.double(), 0.5 * dz_el.reshape(3, 5, 3, 4).sum(-1), **tol)


@pytest.mark.parametrize("axis,group_size", [(None, 0), (1, 0), (1, 2), (-1, 3)])
def test_gradcheck_float64(axis, group_size, device):
    # Inside the range the STE is not the derivative of a step function; in the
    # clipped region it is for the scale (y = (bound - round(z)) * s):
    # gradcheck the scale gradient and its reductions there, in float64. (The
    # zero point's -s is itself a straight-through estimate through round(z).)
    g = torch.Generator().manual_seed(0)
    shape = (2, 4, 6)
    x = ((3 + torch.rand(shape, generator=g, dtype=torch.float64)) *
         torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)).requires_grad_()
    if axis is None:
        pshape = ()
    elif group_size == 0:
        pshape = (shape[axis],)
    else:
        pshape = list(shape)
        pshape[axis] //= group_size
    s = (torch.rand(pshape, generator=g, dtype=torch.float64) * 0.05 + 0.1).requires_grad_()
    z = torch.full(pshape, 1.0, dtype=torch.float64)
    x, s, z = (t.detach().to(device).requires_grad_(t.requires_grad) for t in (x, s, z))
    torch.autograd.gradcheck(lambda x, s: fake_quant_uniform(x, s, z, -8, 7, axis, group_size), (x, s))


def test_integer_zero_point_gets_no_gradient():
    x = sample((10,), 0).requires_grad_()
    s = torch.tensor(0.1, requires_grad=True)
    y = fake_quant_uniform(x, s, torch.tensor(0, dtype=torch.int32), -8, 7)
    y.sum().backward()
    assert s.grad is not None and x.grad is not None


@pytest.mark.parametrize("granularity,axis,pshape,n", [("tensor", None, (), 240), ("channel", 1, (4,), 60),
                                                       ("group", 2, (3, 4, 2), 10)])
def test_spec_learnable_grad_factor(granularity, axis, pshape, n):
    # qx.fake_quant scales the LSQ gradient by 1/sqrt(n * qmax), n = elements per scale.
    group = 10 if granularity == "group" else 0
    spec = QuantSpec(bits=4, granularity=granularity, axis=axis or 0, learnable=True, group_size=group or None)
    x = sample((3, 4, 20), 4).requires_grad_()
    s = torch.full(pshape, 0.3, requires_grad=True)
    (ds,) = torch.autograd.grad(qx.fake_quant(x, spec, scale=s).sum(), s)
    z = torch.zeros(pshape, dtype=torch.int32)
    (ds_plain,) = torch.autograd.grad(fake_quant_uniform(x, s, z, -8, 7, axis, group).sum(), s)
    assert lsq_grad_factor(n, 7) == pytest.approx(1 / math.sqrt(n * 7))
    torch.testing.assert_close(ds, ds_plain * lsq_grad_factor(n, 7))
