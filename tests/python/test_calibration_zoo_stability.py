"""Issue #17 items 4 and 8: QAT is stable from the first step, and scale floors
that calibration hits are reported.

The cause of the first-step gradients of 1e5-1e16: an untrained network's
BatchNorm running statistics (mean 0, variance 1) do not fit its data, so its
eval-mode activations are tiny (down to 1e-7 after a few blocks) while training
normalizes with the batch statistics. Ranges calibrated in eval mode then clip
every training activation, and each BN's division by a batch deviation of
about sqrt(eps) multiplies the gradient. ``calibrate(bn="auto")`` calibrates
such BatchNorms with batch statistics. The reference for the bound is the
float model's own gradient on the same batch.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import quantext as qx
from quantext import QConfig


def _grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.train()
    model.zero_grad()
    loss = F.cross_entropy(model(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    return float(torch.sqrt(sum(p.grad.square().sum() for p in model.parameters() if p.grad is not None)))


def _prepared(name: str, bits: int, bn: str):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 7])
    float_norm = _grad_norm(copy.deepcopy(model), x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # prepare's coverage notes, calibrate's floor report (bn="running")
        prepared = qx.prepare_qat(model, QConfig.uniform(bits), example_inputs=(x,))
        qx.calibrate(prepared, [torch.randn(2, 3, 64, 64) for _ in range(2)], progress=False, bn=bn)
    return prepared, x, y, float_norm


@pytest.mark.parametrize("name,bits", [("mobilenet_v2", 4), pytest.param("efficientnet_b0", 4, marks=pytest.mark.slow),
                                       pytest.param("regnet_y_400mf", 4, marks=pytest.mark.slow)])
def test_first_step_gradients_stay_near_the_float_model(name, bits):
    prepared, x, y, float_norm = _prepared(name, bits, "auto")
    ratio = _grad_norm(prepared, x, y) / float_norm
    assert 0.1 < ratio < 10, f"{name} W{bits}A{bits}: gradient norm {ratio:.3g}x the float model's"
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(prepared(x), y).backward()
        opt.step()
    assert all(torch.isfinite(p).all() for p in prepared.parameters())


def test_eval_mode_calibration_of_an_untrained_network_is_what_explodes():
    # The cause, kept visible: the same model calibrated with running statistics.
    prepared, x, y, float_norm = _prepared("efficientnet_b0", 4, "running")
    assert _grad_norm(prepared, x, y) / float_norm > 30


class _Net(nn.Module):
    """Conv-BN-ReLU (folded by prepare_qat), a BatchNorm after a ReLU (stays standalone), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.bn2 = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.BatchNorm2d(8, momentum=None)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.bn2(F.relu(self.bn(self.conv(x)))).mean((2, 3)))


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers() if "quantizer" not in k}


def _small(trained: bool):
    torch.manual_seed(0)
    net = _Net()
    if trained:
        with torch.no_grad():
            net.train()(torch.randn(4, 3, 8, 8) * 3 + 1)
    prepared = qx.prepare_qat(net, QConfig.uniform(8), example_inputs=(torch.randn(2, 3, 8, 8),))
    return prepared.train()


def test_batch_statistics_calibration_leaves_running_statistics_alone():
    prepared = _small(trained=False)
    before = _buffers(prepared)
    momenta = [m.momentum for m in prepared.modules() if isinstance(m, nn.BatchNorm2d)]
    qx.calibrate(prepared, [torch.randn(2, 3, 8, 8) * 5], progress=False)
    after = _buffers(prepared)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [m.momentum for m in prepared.modules() if isinstance(m, nn.BatchNorm2d)] == momenta
    assert prepared.training and all(m.training for m in prepared.modules())
    assert set(qx.calibration_report(prepared).batch_stats) == {"conv", "bn2"}


def test_batch_statistics_ranges_are_those_training_sees():
    prepared = _small(trained=False)
    x = torch.randn(4, 3, 8, 8) * 5
    qx.calibrate(prepared, [x], method="max", progress=False)
    seen = {}
    hook = prepared.fc.input_quantizer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    qx.disable_quant(prepared)
    with torch.no_grad():
        prepared.train()(x)  # training forward: batch statistics
    hook.remove()
    expected = seen["x"].abs().max() / 127
    assert prepared.fc.input_quantizer.scale.item() == pytest.approx(expected.item(), rel=1e-5)


def test_trained_batchnorm_calibrates_with_running_statistics():
    prepared = _small(trained=True)
    qx.calibrate(prepared, [torch.randn(2, 3, 8, 8)], progress=False)
    assert qx.calibration_report(prepared).batch_stats == ()
    forced = _small(trained=True)
    qx.calibrate(forced, [torch.randn(2, 3, 8, 8)], progress=False, bn="batch")
    assert set(qx.calibration_report(forced).batch_stats) == {"conv", "bn2"}


def test_bn_argument_is_checked_and_batch_statistics_need_two_values():
    prepared = _small(trained=False)
    with pytest.raises(ValueError, match=r"bn must be one of \('auto', 'running', 'batch'\), got 'train'"):
        qx.calibrate(prepared, [torch.randn(2, 3, 8, 8)], bn="train", progress=False)
    with pytest.raises(ValueError, match="use larger batches, or bn='running'"):
        qx.calibrate(prepared, [torch.randn(1, 3, 3, 3)], progress=False)
    assert not any(q.calibrated for _, q in qx.quantizers(prepared))  # nothing half-done
    qx.calibrate(prepared, [torch.randn(1, 3, 3, 3)], bn="running", progress=False)


def test_scale_floor_hits_are_reported_with_names_and_values():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    prepared = qx.prepare_qat(model, QConfig.uniform(8), example_inputs=(torch.randn(2, 16),), first_last_bits=None)
    x = torch.randn(32, 16) * 1e-7  # needs a step of about 3e-7 / 127 = 2e-9, below the floor 1e-8
    with pytest.warns(UserWarning, match=r"1 quantizers hit the scale floor.*0\.input_quantizer \(\d\.\d+e-09\)"):
        qx.calibrate(prepared, [x], method="max", progress=False)
    floored = qx.calibration_report(prepared).floored
    assert list(floored) == ["0.input_quantizer"]
    assert floored["0.input_quantizer"] == pytest.approx(float(x.abs().max()) / 127, rel=1e-6)
    assert prepared.get_submodule("0.input_quantizer").scale.item() == pytest.approx(qx.nn.MIN_SCALE)


def test_quantizer_outside_calibrate_warns_once_about_the_floor():
    q = qx.nn.Quantizer(qx.QuantSpec(bits=8, calibration="max"))
    q.name = "tiny"
    q.observe(True).disable()
    q(torch.full((4,), 1e-9))
    with pytest.warns(UserWarning, match=r"Quantizer 'tiny' hit the scale floor: its data asked for a scale of "
                                         r"7\.87e-12"):
        q.compute_qparams()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q.compute_qparams()
