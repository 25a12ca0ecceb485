"""convert: BN folded into plain quantized convolutions, quantizers frozen, and
the output equal to the frozen QAT model's."""

import torch
import torchvision
from torch import nn

import quantext as qx
from quantext.nn import Quantizer, QuantConv2d, QuantConvBn2d, QuantLinear
from quantext.spec import QConfig, QuantSpec


def qconfig(bits: int, learnable: bool = False) -> QConfig:
    return QConfig(weight=QuantSpec(bits=bits, narrow_range=True, granularity="channel", calibration="max",
                                    learnable=learnable),
                   activation=QuantSpec(bits=bits, signed=False, symmetric=False, calibration="max",
                                        learnable=learnable))


def qat(model: nn.Module, config: QConfig, shape=(4, 3, 32, 32), steps: int = 3) -> nn.Module:
    """Prepares, calibrates, trains a few SGD steps with batch statistics, freezes BN."""
    prepared = qx.prepare_qat(model, config, example_inputs=(torch.randn(shape),))
    qx.calibrate(prepared, [torch.randn(shape) for _ in range(2)], progress=False)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01, momentum=0.9)
    prepared.train()
    for _ in range(steps):
        opt.zero_grad()
        prepared(torch.randn(shape)).square().mean().backward()
        opt.step()
    return qx.freeze_bn(prepared)


def test_resnet18_converted_output_is_bit_exact():
    torch.manual_seed(0)
    model = qat(torchvision.models.resnet18(num_classes=10), qconfig(4))
    converted = qx.convert(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        frozen_train = model(x)  # training mode, frozen BN: running statistics only
        assert torch.equal(converted(x), frozen_train)
        assert torch.equal(converted(x), model.eval()(x))
    assert not any(isinstance(m, (QuantConvBn2d, nn.BatchNorm2d)) for m in converted.modules())
    assert any(isinstance(m, QuantConvBn2d) for m in model.modules())  # convert copies
    convs = [m for m in converted.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 20 and all(isinstance(c.weight_quantizer, Quantizer) for c in convs)
    assert all(isinstance(c.input_quantizer, Quantizer) and c.bias is not None for c in convs)
    assert isinstance(converted.fc, QuantLinear)
    assert isinstance(converted.get_submodule("layer1.0.conv1"), nn.Sequential)  # QuantConv2d, then ReLU


def test_converted_quantizers_are_frozen_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    trained = qat(model, qconfig(8, learnable=True), shape=(4, 3, 12, 12), steps=5)
    converted = qx.convert(trained)
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(converted(x), trained.eval()(x))
    for name, q in qx.quantizers(converted):
        assert not list(q.parameters(recurse=False)) and not q.spec.learnable and not q.observing
        params = q.qparams()
        assert set(params) == {"scale", "zero_point"} and params["zero_point"].dtype == torch.int32
        assert q.name == name
    learned = [q for _, q in qx.quantizers(trained)]
    assert all(isinstance(q.scale, nn.Parameter) for q in learned)  # the QAT model keeps learning
    relu = converted.get_submodule("0")
    assert isinstance(relu.conv, QuantConv2d) and isinstance(relu.relu, nn.ReLU)
