"""Arguments the C++ ops check themselves, whoever calls them (the autograd
functions, torch.ops directly, LibTorch): the factor of the parameter
gradients, the gradient's dtype and the integer range of the MSE search. The
fake (meta) kernels agree."""

import math

import pytest
import torch

ops = torch.ops.quantext
X = torch.linspace(-3, 3, 64)
S, Z, A = torch.tensor([0.05]), torch.tensor([0.0]), torch.tensor([2.0])


def uniform_backward(grad, factor):
    return ops.fake_quant_uniform_backward(grad, X.to(grad.device), S.to(grad.device), Z.to(grad.device), -128, 127,
                                           None, 0, factor, True)


def levels_backward(grad, factor):
    return ops.fake_quant_levels_backward(grad, X.to(grad.device), A.to(grad.device), "apot", 4, True, 2, "nearest",
                                          None, factor, True)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("backward", [uniform_backward, levels_backward])
@pytest.mark.parametrize("factor", [math.nan, math.inf, -math.inf])
def test_backward_rejects_non_finite_grad_factor(backward, factor, device):
    with pytest.raises(ValueError, match="grad_factor must be finite"):
        backward(torch.ones(64, device=device), factor)


@pytest.mark.parametrize("factor", [math.nan, math.inf])
def test_forward_rejects_non_finite_grad_factor(factor):
    with pytest.raises(ValueError, match="grad_factor must be finite"):
        ops.fake_quant_uniform(X, S, Z, -128, 127, None, 0, factor)
    with pytest.raises(ValueError, match="grad_factor must be finite"):
        ops.fake_quant_levels(X, A, "pot", 4, True, 2, "nearest", None, factor)


@pytest.mark.parametrize("backward", [uniform_backward, levels_backward])
def test_backward_rejects_complex_grad(backward):
    with pytest.raises(TypeError, match="grad must be a floating point tensor.*ComplexFloat"):
        backward(torch.ones(64, dtype=torch.complex64), 1.0)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("qmin, qmax", [(-2**63, 2**63 - 1), (-70000, 0), (0, 70000), (-40000, 40000), (3, 3)])
def test_mse_affine_rejects_wide_or_empty_ranges(qmin, qmax, device):
    hist = torch.ones(1, 64, dtype=torch.float64, device=device)
    lo, hi = torch.tensor([-1.0], device=device), torch.tensor([1.0], device=device)
    with pytest.raises(ValueError, match="qmin|integer range"):
        ops.calib_mse_affine(hist, lo, hi, qmin, qmax)


def test_mse_affine_takes_16_bits():
    hist = torch.ones(1, 64, dtype=torch.float64)
    lo, hi = ops.calib_mse_affine(hist, torch.tensor([-1.0]), torch.tensor([1.0]), -32768, 32767)
    assert bool(lo < 0) and bool(hi > 0)
