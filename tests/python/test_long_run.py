"""Numerical safety over a long QAT run: a learning rate high enough to drive
learned scales (LSQ) and clipping values (PoT/APoT alpha) below
``min_scale`` and LSQ+ zero points out of ``[qmin, qmax]`` must never produce
a NaN/inf parameter, gradient, statistic or output, and the parameters the
forward pass uses stay within the documented bounds (scales and alpha
``>= Quantizer.min_scale``, zero points in ``[qmin, qmax]``). Checked after
every step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import quantext as qx
from qat_models import INPUT_SHAPE, ResidualCNN, batches, prepared_cnn
from quantext import QConfig, QuantSpec

STEPS = 400
FREEZE_BN_AT = 250


def non_finite(named_tensors) -> list[str]:
    return [name for name, t in named_tensors if t is not None and t.is_floating_point() and not bool(t.isfinite().all())]


def check_step(model: nn.Module, step: int, loss: torch.Tensor, seen: dict[str, bool]) -> None:
    where = f"step {step}"
    assert math.isfinite(loss.item()), f"{where}: loss {loss.item()}"
    bad = non_finite(model.named_parameters()) + non_finite(model.named_buffers())
    bad += non_finite((f"{n}.grad", p.grad) for n, p in model.named_parameters())
    assert not bad, f"{where}: non-finite {bad}"
    for name, q in qx.quantizers(model):
        used = q.qparams()
        if q.spec.scheme == "uniform":
            scale, zero = used["scale"], used["zero_point"]
            qmin, qmax = q.bounds
            assert bool((scale >= q.min_scale).all()) and bool(scale.isfinite().all()), f"{where}: {name} scale {scale}"
            assert bool(((zero >= qmin) & (zero <= qmax)).all()), f"{where}: {name} zero point {zero} outside"
            if q.spec.learnable:
                seen["scale below min_scale"] |= bool((q.scale < q.min_scale).any())
                if q.zero_point.is_floating_point():
                    seen["zero point outside"] |= bool(((q.zero_point < qmin) | (q.zero_point > qmax)).any())
        else:
            alpha = used["alpha"]
            assert bool((alpha >= q.min_scale).all()) and bool(alpha.isfinite().all()), f"{where}: {name} alpha {alpha}"
            if q.spec.learnable:
                seen["alpha below min_scale"] |= bool((q.alpha < q.min_scale).any())
    for name, m in model.named_modules():
        if isinstance(m, qx.nn.QuantConvBn2d):
            assert bool(m.folded_weight().isfinite().all()), f"{where}: {name} folded weight"


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """Adam bounds every step by about the learning rate: the weights move fast
    but stay finite, the quantizer parameters jump past their bounds."""
    quant = [p for n, p in model.named_parameters() if "quantizer" in n]
    quant_ids = {id(p) for p in quant}
    rest = [p for p in model.parameters() if id(p) not in quant_ids]
    return torch.optim.Adam([{"params": rest, "lr": 0.05}, {"params": quant, "lr": 0.5}])


@pytest.fixture
def one_thread():
    """The model is tiny: OpenMP threads would only spin (and slow down a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LEVELS_QCONFIG = QConfig(weight=QuantSpec(scheme="pot", bits=4, granularity="channel", learnable=True),
                         activation=QuantSpec(scheme="apot", bits=4, learnable=True))


@pytest.mark.parametrize("scheme", ["uniform", "levels"])
def test_long_qat_run_stays_finite_and_within_bounds(one_thread, scheme):
    if scheme == "uniform":  # LSQ weights, LSQ+ activations
        model = prepared_cnn(0, freeze_bn_after=FREEZE_BN_AT)
        seen = {"scale below min_scale": False, "zero point outside": False}
    else:  # learned clipping values of PoT weights and APoT activations
        torch.manual_seed(0)
        model = qx.prepare_qat(ResidualCNN(), LEVELS_QCONFIG, example_inputs=(torch.randn(INPUT_SHAPE),),
                               first_last_bits=None, freeze_bn_after=FREEZE_BN_AT)
        seen = {"alpha below min_scale": False}
    # Ranges from the untrained BNs' eval-mode statistics: the first steps clip
    # hard and the gradients are large, the stress this run is for.
    qx.calibrate(model, batches(1, 2), progress=False, bn="running")
    opt = optimizer(model)
    data = batches(2, 16)
    extremes = [torch.zeros(INPUT_SHAPE), torch.full(INPUT_SHAPE, 1e4), torch.randn(INPUT_SHAPE) * 1e-6]
    model.train()
    for step in range(STEPS):
        x, y = data[step % len(data)]
        if step % 50 == 49:  # now and then a degenerate batch: constant, huge, tiny
            x = extremes[(step // 50) % len(extremes)]
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        check_step(model, step, loss, seen)
    # The run must have exercised the bounds it checks.
    assert all(seen.values()), seen
    assert model.get_submodule("stem.0").is_bn_frozen
