"""The spec-driven API: qx.fake_quant / quantize / dequantize dispatch, parameter
handling, and the APoT weight normalization."""

import pytest
import torch

import quantext as qx
from quantext.functional import fake_quant_levels, weight_normalize
from quantext.spec import QuantSpec


def sample(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def test_uniform_spec_matches_aten():
    x = sample((4, 50), 0)
    spec = QuantSpec(bits=4, narrow_range=True)
    y = qx.fake_quant(x, spec, scale=0.2)
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, 0.2, 0, -7, 7))
    spec = QuantSpec(bits=8, signed=False, symmetric=False, granularity="channel", axis=0)
    s, z = torch.tensor([0.01, 0.02, 0.03, 0.04]), torch.tensor([0, 10, 128, 255], dtype=torch.int32)
    assert torch.equal(qx.fake_quant(x, spec, scale=s, zero_point=z),
                       torch.fake_quantize_per_channel_affine(x, s, z, 0, 0, 255))


@pytest.mark.parametrize("scheme", ["pot", "apot"])
def test_level_spec_dispatch(scheme):
    x = sample((3, 40), 1)
    spec = QuantSpec(scheme=scheme, bits=5, signed=True, granularity="channel", axis=0, k=2)
    alpha = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(qx.fake_quant(x, spec, alpha=alpha), fake_quant_levels(x, alpha, scheme, 5, True, 2, axis=0))
    assert torch.equal(qx.fake_quant(x, QuantSpec(scheme=scheme, bits=3, signed=False), alpha=1.5),
                       fake_quant_levels(x, torch.tensor(1.5), scheme, 3, False))
    if scheme == "pot":
        log_spec = QuantSpec(scheme="pot", bits=4, rounding="log")
        assert torch.equal(qx.fake_quant(x, log_spec, alpha=2.0),
                           fake_quant_levels(x, torch.tensor(2.0), "pot", 4, True, rounding="log"))


@pytest.mark.parametrize("call,error,match", [
    (lambda x: qx.fake_quant(x, QuantSpec(scheme="apot", bits=4)), ValueError, "alpha is required for scheme='apot'"),
    (lambda x: qx.fake_quant(x, QuantSpec(bits=4)), ValueError, "scale is required for scheme='uniform'"),
    (lambda x: qx.fake_quant(x, QuantSpec(scheme="pot", bits=4), scale=1.0, alpha=1.0), ValueError,
     "scale is not a parameter of scheme='pot'"),
    (lambda x: qx.fake_quant(x, QuantSpec(bits=4), scale=1.0, alpha=1.0), ValueError,
     "alpha is not a parameter of scheme='uniform'"),
    (lambda x: qx.fake_quant(x, QuantSpec(bits=4, signed=False, symmetric=False), scale=1.0), ValueError,
     r"zero_point is required for an asymmetric spec"),
    (lambda x: qx.quantize(x, QuantSpec(scheme="pot", bits=4), alpha="1"), TypeError,
     "alpha must be a tensor or a number, got str"),
])
def test_parameter_errors(call, error, match):
    with pytest.raises(error, match=match):
        call(sample((5,), 0))


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_weight_normalize_reference(axis):
    w = sample((6, 3, 4), 2) * 0.05 + 0.01
    dims = None if axis is None else [d for d in range(3) if d != axis]
    w64 = w.double()
    mean = w64.mean(dim=dims, keepdim=True) if dims else w64.mean()
    var = ((w64 - mean) ** 2).mean(dim=dims, keepdim=True) if dims else ((w64 - mean) ** 2).mean()
    expected = (w64 - mean) / torch.sqrt(var + 1e-12)
    torch.testing.assert_close(weight_normalize(w, axis=axis).double(), expected, rtol=1e-5, atol=1e-5)


def test_weight_normalize_gradcheck_and_dtypes():
    w = sample((4, 5), 3, torch.float64).requires_grad_()
    torch.autograd.gradcheck(lambda w: weight_normalize(w, axis=0), (w,))
    torch.autograd.gradcheck(lambda w: weight_normalize(w), (w,))
    h = sample((4, 5), 3, torch.float16)
    out = weight_normalize(h, axis=1)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), weight_normalize(h.float(), axis=1), rtol=2e-3, atol=2e-3)


def test_weight_norm_spec():
    w = (sample((8, 3, 3, 3), 4) * 0.02).requires_grad_()
    spec = QuantSpec(scheme="apot", bits=4, granularity="channel", axis=0, weight_norm=True)
    alpha = torch.full((8,), 2.0)
    y = qx.fake_quant(w, spec, alpha=alpha)
    assert torch.equal(y, fake_quant_levels(weight_normalize(w, axis=0), alpha, "apot", 4, True, axis=0))
    y.sum().backward()  # autograd flows through the normalization into w
    assert w.grad is not None and torch.isfinite(w.grad).all()
    codes = qx.quantize(w.detach(), spec, alpha=alpha)
    assert torch.equal(qx.dequantize(codes, spec, alpha=alpha), y.detach())
