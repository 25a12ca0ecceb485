"""QConfig.int32_bias: layer biases rounded onto the int32 grid of step
``input scale * weight scale``, as integer kernels and ONNX Runtime's QDQ
rewrite store them."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantext as qx
from quantext.nn import QuantConv2d, QuantLinear
from quantext.nn.layers import layer_bias
from quantext.spec import QConfig, QuantSpec
from qat_models import INPUT_SHAPE, ResidualCNN


def config(bits: int, int32_bias: bool = True, scheme: str = "uniform") -> QConfig:
    return QConfig(weight=QuantSpec(scheme=scheme, bits=bits, narrow_range=scheme == "uniform", granularity="channel"),
                   activation=QuantSpec(scheme=scheme, bits=bits, signed=False, calibration="max"),
                   int32_bias=int32_bias)


LAYERS = {
    "conv": (lambda c: QuantConv2d(3, 5, 3, qconfig=c), (2, 3, 6, 6),
             lambda x, w, b: F.conv2d(x, w, b)),
    "linear": (lambda c: QuantLinear(7, 5, qconfig=c), (4, 7), F.linear),
}


@pytest.mark.parametrize("kind", LAYERS)
def test_bias_on_the_int32_grid_with_straight_through_gradient(kind):
    make, shape, op = LAYERS[kind]
    layer = make(config(3))
    with torch.no_grad():
        layer.bias.copy_(torch.randn(5))
    qx.calibrate(layer, [torch.rand(shape)], progress=False)
    x = torch.rand(shape)
    s_in, s_w = layer.input_quantizer.scale, layer.weight_quantizer.scale
    xq = torch.fake_quantize_per_tensor_affine(x, s_in.item(), 0, 0, 7)
    wq = torch.fake_quantize_per_channel_affine(layer.weight.detach(), s_w, torch.zeros(5, dtype=torch.int32), 0,
                                                -3, 3)
    step = s_in * s_w
    grid_bias = torch.round(layer.bias.detach() / step) * step
    assert not torch.equal(grid_bias, layer.bias.detach())  # 3 bits: the grid is coarse enough to move it
    out = layer(x)
    assert torch.equal(out, op(xq, wq, grid_bias))
    out.sum().backward()
    b = layer.bias.detach().clone().requires_grad_()
    op(xq, wq, b).sum().backward()
    assert torch.equal(layer.bias.grad, b.grad)


def test_bias_beyond_the_int32_range_saturates():
    layer = QuantConv2d(3, 2, 1, qconfig=config(8))
    layer.input_quantizer.set_qparams(scale=torch.tensor(1e-4))
    layer.weight_quantizer.set_qparams(scale=torch.tensor([1e-8, 1e-2]))
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([-1.0, 0.5]))
        step = torch.tensor(1e-4) * torch.tensor([1e-8, 1e-2])
        expected = torch.stack([-(2.0**31) * step[0], torch.round(0.5 / step[1]) * step[1]])
        assert torch.equal(layer_bias(layer, layer.bias), expected)


def test_non_uniform_layers_keep_a_float_bias():
    layer = QuantConv2d(3, 5, 3, qconfig=config(3, scheme="apot"))
    qx.calibrate(layer, [torch.rand(2, 3, 6, 6)], progress=False)
    x = torch.rand(2, 3, 6, 6)
    with torch.no_grad():
        expected = F.conv2d(layer.input_quantizer(x), layer.weight_quantizer(layer.weight), layer.bias)
        assert torch.equal(layer(x), expected)


def test_disabled_quantizers_keep_a_float_bias():
    layer = QuantConv2d(3, 5, 3, qconfig=config(3))
    qx.calibrate(layer, [torch.rand(2, 3, 6, 6)], progress=False)
    qx.disable_quant(layer)
    x = torch.rand(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(layer(x), F.conv2d(x, layer.weight, layer.bias))


def prepared(int32_bias: bool, bits: int = 3) -> nn.Module:
    model = qx.prepare_qat(ResidualCNN(), config(bits, int32_bias), example_inputs=(torch.randn(INPUT_SHAPE),),
                           first_last_bits=8)
    qx.calibrate(model, [torch.randn(INPUT_SHAPE) for _ in range(2)], progress=False)
    return model


def test_prepare_keeps_the_flag_and_frozen_bn_equals_converted():
    model = prepared(True)
    assert all(m.qconfig.int32_bias for m in model.modules() if hasattr(m, "qconfig"))
    model.train()
    model(torch.randn(INPUT_SHAPE))  # one step with batch statistics
    qx.freeze_bn(model)
    x = torch.randn(INPUT_SHAPE)
    with torch.no_grad():
        assert torch.equal(qx.convert(model)(x), model(x))


@pytest.mark.parametrize("int32_bias", [True, False])
def test_onnxruntime_bias_rewrite_is_exact_only_with_the_flag(tmp_path, int32_bias):
    """ONNX Runtime's basic optimizations round every Conv/Gemm bias between Q/DQ
    pairs to int32: a no-op with the flag, a visible change without."""
    converted = qx.convert(prepared(int32_bias))
    x = torch.randn(INPUT_SHAPE)
    path = qx.export_onnx(converted, (x,), tmp_path / "m.onnx", verify=True)
    outputs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    difference = np.abs(outputs[0] - outputs[1]).max()
    assert (difference == 0) if int32_bias else (difference > 1e-4)
