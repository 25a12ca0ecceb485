"""Uniform fake quantization against ATen's own fake-quant ops (bit-exact),
a slow reference for per-group, and the layout/dtype/edge-case rules."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import quantext as qx

ops = torch.ops.quantext


def random_qparams(n, qmin, qmax, symmetric=False):
    scale = torch.rand(n) * 0.2 + 1e-3
    if symmetric:
        zero = torch.zeros(n, dtype=torch.int32)
    else:
        zero = torch.randint(qmin, qmax + 1, (n,), dtype=torch.int32)
    return scale, zero


def with_ties(x, scale):
    """Replace a third of x by exact rounding ties (k + 0.5) * scale."""
    k = torch.randint(-300, 300, x.shape).float() + 0.5
    ties = k * scale
    pick = torch.rand(x.shape) < 0.33
    return torch.where(pick, ties, x)


@pytest.mark.parametrize("bits,signed,narrow", [(8, True, False), (8, False, False), (4, True, True), (2, False, False),
                                                (16, True, False), (3, True, False)])
def test_per_tensor_bit_exact_with_aten(device, bits, signed, narrow):
    qmin, qmax = qx.uniform_bounds(bits, signed, narrow)
    scale, zero = random_qparams(1, qmin, qmax)
    x = with_ties(torch.randn(33, 65) * 2, scale).to(device).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = qx.fake_quant_uniform(x, scale.to(device), zero.to(device), qmin, qmax)
    y_ref = torch.fake_quantize_per_tensor_affine(x_ref, scale.item(), int(zero), qmin, qmax)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert torch.equal(x.grad, x_ref.grad)


@pytest.mark.parametrize("shape,axis", [((8, 3, 5, 5), 0), ((8, 3, 5, 5), 1), ((4, 6, 7), 2), ((16, 9), -1),
                                        ((1, 5), 0), ((7,), 0)])
def test_per_channel_bit_exact_with_aten(device, shape, axis):
    qmin, qmax = 0, 255
    channels = shape[axis]
    scale, zero = random_qparams(channels, qmin, qmax)
    x = (torch.randn(shape) * 3).to(device).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y = qx.fake_quant_uniform(x, scale.to(device), zero.to(device), qmin, qmax, axis=axis)
    y_ref = torch.fake_quantize_per_channel_affine(x_ref, scale.to(device), zero.to(device), axis % len(shape),
                                                   qmin, qmax)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert torch.equal(x.grad, x_ref.grad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_reduced_and_double_precision_match_aten(device, dtype):
    scale, zero = random_qparams(1, -128, 127)
    x = (torch.randn(1000) * 4).to(device, dtype)
    y = qx.fake_quant_uniform(x, scale.to(device), zero.to(device), -128, 127)
    assert y.dtype == dtype
    ref = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zero), -128, 127)
    if dtype == torch.float64:
        # ATen rounds its float64 per-tensor output through float32; quantext
        # keeps float64 (the codes are identical).
        assert torch.equal(y.float(), ref.float())
    else:
        assert torch.equal(y, ref)
    if dtype != torch.bfloat16:  # ATen's per-channel kernel has no bfloat16 path
        sc, zc = random_qparams(10, -128, 127)
        xc = x[:1000].view(10, 100)
        yc = qx.fake_quant_uniform(xc, sc.to(device), zc.to(device), -128, 127, axis=0)
        ref_c = torch.fake_quantize_per_channel_affine(xc, sc.to(device), zc.to(device), 0, -128, 127)
        if dtype == torch.float64 and device == "cuda":
            # ATen's CUDA per-channel kernel clamps with fminf/fmaxf, so it too rounds float64 through float32.
            assert torch.equal(yc.float(), ref_c.float())
        else:
            assert torch.equal(yc, ref_c)


def test_layouts_preserved_and_equal(device):
    scale, zero = random_qparams(6, 0, 15)
    x = torch.randn(2, 6, 5, 7, device=device)
    ref = qx.fake_quant_uniform(x, scale.to(device), zero.to(device), 0, 15, axis=1)
    cl = x.to(memory_format=torch.channels_last)
    y = qx.fake_quant_uniform(cl, scale.to(device), zero.to(device), 0, 15, axis=1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, ref)
    # non-dense views: transposed + sliced
    big = torch.randn(6, 2, 9, 14, device=device)
    view = big.permute(1, 0, 2, 3)[:, :, ::2, 1::2][:, :, :5, :7]
    assert not view.is_contiguous()
    y = qx.fake_quant_uniform(view, scale.to(device), zero.to(device), 0, 15, axis=1)
    assert torch.equal(y, qx.fake_quant_uniform(view.contiguous(), scale.to(device), zero.to(device), 0, 15, axis=1))


def reference_per_group(x, scale, zero, qmin, qmax, axis, group):
    """Slow reference: expand the group parameters to x's shape."""
    s = scale.repeat_interleave(group, dim=axis)
    z = zero.repeat_interleave(group, dim=axis).float()
    q = torch.clamp(torch.round(x * (1.0 / s)) + z, qmin, qmax)
    return (q - z) * s


@pytest.mark.parametrize("shape,axis,group", [((4, 64), 1, 16), ((4, 64), 0, 2), ((3, 8, 6), 1, 4), ((12,), 0, 12)])
def test_per_group_matches_reference(device, shape, axis, group):
    pshape = list(shape)
    pshape[axis] //= group
    scale = torch.rand(pshape) * 0.1 + 0.01
    zero = torch.randint(-8, 8, pshape, dtype=torch.int32)
    x = (torch.randn(shape) * 0.5).to(device).requires_grad_()
    y = qx.fake_quant_uniform(x, scale.to(device), zero.to(device), -8, 7, axis=axis, group_size=group)
    ref = reference_per_group(x.detach().cpu(), scale, zero, -8, 7, axis, group)
    assert torch.equal(y.detach().cpu(), ref)
    y.sum().backward()
    q = torch.round(x.detach().cpu() / scale.repeat_interleave(group, dim=axis)) + \
        zero.repeat_interleave(group, dim=axis)
    assert torch.equal(x.grad.cpu(), ((q >= -8) & (q <= 7)).float())


def test_nan_and_inf(device):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.3], device=device, requires_grad=True)
    y = qx.fake_quant_uniform(x, torch.tensor([0.1], device=device), torch.tensor([0], device=device, dtype=torch.int32),
                              -128, 127)
    assert torch.isnan(y[0])
    assert y[1].item() == pytest.approx(12.7) and y[2].item() == pytest.approx(-12.8)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_empty_input(device):
    x = torch.empty(0, 4, device=device, requires_grad=True)
    y = qx.fake_quant_uniform(x, torch.ones(4, device=device), torch.zeros(4, device=device, dtype=torch.int32), 0, 7,
                              axis=1)
    assert y.shape == (0, 4)
    y.sum().backward()
    assert x.grad.shape == (0, 4)


@pytest.mark.parametrize("kwargs,match,exc", [
    (dict(scale=torch.tensor([0.0])), "scale must be positive and finite, got 0", ValueError),
    (dict(scale=torch.tensor([float("inf")])), "scale must be positive and finite, got inf", ValueError),
    (dict(zero_point=torch.tensor([300], dtype=torch.int32)), r"zero_point must lie in \[qmin, qmax\] = \[0, 255\], got 300",
     ValueError),
    (dict(qmin=10, qmax=5), "qmin must be <= qmax, got qmin=10, qmax=5", ValueError),
    (dict(scale=torch.tensor([0.1], dtype=torch.float16)), "scale must be float32", TypeError),
    (dict(x=torch.ones(3, dtype=torch.int32)), "input must be a floating point tensor, got dtype Int", TypeError),
    (dict(scale=torch.ones(2), zero_point=torch.zeros(2, dtype=torch.int32)), "per-tensor scale must have one element",
     ValueError),
    (dict(scale=torch.ones(4), zero_point=torch.zeros(4, dtype=torch.int32), axis=1),
     r"per-channel scale must have shape \[3\]", ValueError),
    (dict(axis=5, scale=torch.ones(3), zero_point=torch.zeros(3, dtype=torch.int32)), "axis=5 is out of range",
     ValueError),
    (dict(axis=1, group_size=2, scale=torch.ones(2, 1), zero_point=torch.zeros(2, 1, dtype=torch.int32)),
     "group_size=2 does not divide size 3 of axis 1", ValueError),
])
def test_bad_input_names_argument(kwargs, match, exc):
    args = dict(x=torch.randn(2, 3), scale=torch.tensor([0.1]), zero_point=torch.tensor([0], dtype=torch.int32),
                qmin=0, qmax=255)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        qx.fake_quant_uniform(**args)


def test_uniform_bounds():
    assert qx.uniform_bounds(8, True) == (-128, 127)
    assert qx.uniform_bounds(8, True, narrow_range=True) == (-127, 127)
    assert qx.uniform_bounds(2, False) == (0, 3)
    assert qx.uniform_bounds(16, True) == (-32768, 32767)
    with pytest.raises(ValueError, match="bits must be in \\[2, 16\\], got 1"):
        qx.uniform_bounds(1, True)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(rows=st.integers(1, 9), cols=st.integers(1, 70), bits=st.integers(2, 16), signed=st.booleans(),
       per_channel=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_random_cases_bit_exact_with_aten(rows, cols, bits, signed, per_channel, seed):
    gen = torch.Generator().manual_seed(seed)
    qmin, qmax = qx.uniform_bounds(bits, signed)
    n = rows if per_channel else 1
    scale = torch.rand(n, generator=gen) * 0.5 + 1e-4
    zero = torch.randint(qmin, qmax + 1, (n,), generator=gen, dtype=torch.int32)
    x = torch.randn(rows, cols, generator=gen) * float(scale.max()) * (qmax - qmin) * 0.7
    if per_channel:
        y = qx.fake_quant_uniform(x, scale, zero, qmin, qmax, axis=0)
        ref = torch.fake_quantize_per_channel_affine(x, scale, zero, 0, qmin, qmax)
    else:
        y = qx.fake_quant_uniform(x, scale, zero, qmin, qmax)
        ref = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zero), qmin, qmax)
    assert torch.equal(y, ref), (rows, cols, bits, signed, per_channel, seed)
