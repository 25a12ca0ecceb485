"""Per-group MSE initialization (issue 19, item 2): the clip of least squared
error per group, against a brute-force search written with ATen's fake-quant
op, never worse than the group's max, through QConfig.weight_only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import quantext as qx
from quantext import QConfig, QuantSpec
from quantext.calibration.group_mse import RATIOS


def brute_force_scales(w: torch.Tensor, group_size: int, qmin: int, qmax: int) -> torch.Tensor:
    """Per group of a [out, in] weight (groups along dim 1), the symmetric scale of least error
    among the candidate clips, the largest clip on ties."""
    groups = w.reshape(-1, group_size)
    amax = groups.abs().amax(1)
    best = torch.empty_like(amax)
    for g in range(groups.shape[0]):
        errors, scales = [], []
        for r in RATIOS:
            s = float((amax[g] * r / qmax).clamp_min(1e-8))  # float32 arithmetic, as the quantizer's
            y = torch.fake_quantize_per_tensor_affine(groups[g], s, 0, qmin, qmax)
            errors.append(float((y - groups[g]).double().pow(2).sum()))
            scales.append(s)
        least = min(errors)
        best[g] = max(s for s, e in zip(scales, errors) if e == least)
    return best.reshape(w.shape[0], -1)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_scales_match_a_brute_force_search(bits):
    torch.manual_seed(bits)
    w = torch.randn(6, 64) * torch.rand(6, 1) + torch.distributions.StudentT(2.0).sample((6, 64)) * 0.05
    spec = QuantSpec(bits=bits, granularity="group", axis=1, group_size=16, calibration="mse")
    q = qx.nn.Quantizer(spec, w.shape, role="weight")
    q.observe(True)(w)
    q.compute_qparams()
    qmin, qmax = spec.bounds
    torch.testing.assert_close(q.scale, brute_force_scales(w, 16, qmin, qmax), rtol=0, atol=0)


def _error(qconfig: QConfig, layer: nn.Linear, x: torch.Tensor) -> float:
    model = qx.calibrate(qx.prepare_qat(nn.Sequential(layer), qconfig, example_inputs=(x,), first_last_bits=None),
                         [(x,)], progress=False)
    fc = model.get_submodule("0")
    w = fc.weight_quantizer(fc.weight)
    return float((w - layer.weight).detach().pow(2).sum())


@pytest.mark.parametrize("bits", [3, 4])
def test_weight_only_mse_is_never_worse_than_max(bits):
    torch.manual_seed(0)
    layer = nn.Linear(128, 32)
    with torch.no_grad():
        layer.weight.mul_(torch.distributions.StudentT(1.5).sample(layer.weight.shape).abs().clamp(max=50))
    x = torch.randn(4, 128)
    by_max = _error(QConfig.weight_only(bits, 32), layer, x)
    by_mse = _error(QConfig.weight_only(bits, 32, calibration="mse"), layer, x)
    assert by_mse < 0.9 * by_max  # heavy tails: clipping the outliers pays


def test_a_loaded_observer_cannot_search_and_says_why():
    spec = QuantSpec(bits=4, granularity="group", axis=1, group_size=8, calibration="mse")
    w = torch.randn(2, 16)
    a = qx.nn.Quantizer(spec, w.shape, role="weight")
    a.observe(True)(w)
    b = qx.nn.Quantizer(spec, w.shape, role="weight")
    b.load_state_dict(a.state_dict())
    with pytest.raises(RuntimeError, match="needs the observed tensor"):
        b.compute_qparams()


def test_calibration_method_of_the_preset_is_checked():
    with pytest.raises(ValueError, match="calibration must be one of"):
        QConfig.weight_only(4, 32, calibration="entropy")
