"""PoT/APoT through the whole pipeline with the real ops: prepare_qat,
calibrate, a training step that reaches the learned clipping values, convert,
and the ONNX export verified in ONNX Runtime (weight codes + codebook,
activation composition)."""

import onnx
import pytest
import torch
from torch import nn

import quantext as qx
from quantext.spec import QConfig, QuantSpec


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


@pytest.mark.parametrize("weight,activation", [("pot", "apot"), ("apot", "pot")])
def test_qat_convert_export(tmp_path, weight, activation):
    torch.manual_seed(0)
    qconfig = QConfig(weight=QuantSpec(scheme=weight, bits=4, granularity="channel", learnable=True),
                      activation=QuantSpec(scheme=activation, bits=4, signed=False, learnable=True,
                                           calibration="max"))
    x = torch.randn(4, 3, 16, 16)
    model = qx.prepare_qat(cnn(), qconfig, example_inputs=(x,))
    qx.calibrate(model, [x], progress=False)
    model(x).square().mean().backward()
    alphas = [p for name, p in model.named_parameters() if name.endswith("alpha")]
    assert alphas and all(p.grad is not None and torch.isfinite(p.grad).all() for p in alphas)
    assert any(p.grad.abs().sum() > 0 for p in alphas)

    folded = qx.convert(model.eval())
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    path = qx.export_onnx(folded, x, tmp_path / "m.onnx")  # verify=True: ONNX Runtime vs PyTorch
    proto = onnx.load(path)
    codes = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert codes, "PoT/APoT weights are exported as int8 codes"
