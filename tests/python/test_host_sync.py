"""Host synchronizations of the CUDA ops, seen through PyTorch's sync debug
mode: the value checks of a forward read the parameters, its backward does
not read them again, and with qx.set_value_checks(False) a training step
never synchronizes."""

import pytest
import torch

import quantext as qx
from quantext.functional import fake_quant_levels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
ops = torch.ops.quantext


def assert_no_sync(fn) -> None:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any sync raises
    try:
        fn()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def uniform_lsq_plus(axis):
    x = torch.randn(64, 32, device="cuda", requires_grad=True)
    shape = (64,) if axis == 0 else (1,)
    s = torch.full(shape, 0.05, device="cuda", requires_grad=True)
    z = torch.full(shape, 3.0, device="cuda", requires_grad=True)
    return lambda: qx.fake_quant_uniform(x, s, z, 0, 255, axis, grad_factor=0.01)


def levels_learned_alpha(axis):
    x = torch.randn(64, 32, device="cuda", requires_grad=True)
    a = torch.full((64,) if axis == 0 else (), 1.5, device="cuda", requires_grad=True)
    return lambda: fake_quant_levels(x, a, "apot", 4, True, axis=axis)


CASES = {"uniform": uniform_lsq_plus, "levels": levels_learned_alpha}


@pytest.fixture
def value_checks():
    yield qx.set_value_checks
    qx.set_value_checks(True)


@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_forward_checks_values_and_backward_never_syncs(case, axis):
    forward = CASES[case](axis)
    with pytest.raises(RuntimeError, match="synchronizing"):
        assert_no_sync(forward)  # the value checks read the parameters
    y = forward()
    dy = torch.randn_like(y)
    assert_no_sync(lambda: y.backward(dy))


@pytest.mark.parametrize("axis", [None, 0])
@pytest.mark.parametrize("case", list(CASES))
def test_cuda_step_without_value_checks_never_syncs(case, axis, value_checks):
    value_checks(False)
    forward = CASES[case](axis)
    assert_no_sync(lambda: forward().sum().backward())


def test_cuda_backward_op_called_directly_still_checks():
    x = torch.randn(8, device="cuda")
    bad = torch.tensor([-0.1], device="cuda")
    zero = torch.zeros(1, dtype=torch.int32, device="cuda")
    with pytest.raises(ValueError, match="scale must be positive and finite, got -0.1"):
        ops.fake_quant_uniform_backward(torch.ones_like(x), x, bad, zero, 0, 15, None, 0, 1.0, True)
    with pytest.raises(ValueError, match="alpha must be positive and finite, got -0.1"):
        ops.fake_quant_levels_backward(torch.ones_like(x), x, bad.squeeze(), "pot", 4, True, 2, "nearest", None, 1.0,
                                       True)


def test_cuda_one_sync_reports_the_first_broken_rule():
    x = torch.randn(8, device="cuda")
    with pytest.raises(ValueError, match=r"zero_point must lie in \[qmin, qmax\] = \[0, 15\], got 16"):
        qx.fake_quant_uniform(x, torch.tensor([0.1], device="cuda"), torch.tensor([16], device="cuda"), 0, 15)
    with pytest.raises(ValueError, match="scale must be positive and finite, got inf"):
        qx.fake_quant_uniform(x, torch.tensor([float("inf")], device="cuda"), torch.tensor([16], device="cuda"), 0, 15)
