"""qx.export.check_tensorrt_rules: the int8 symmetric export passes; one
failing model per rule."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import torch
from export_models import QAT_MODELS, Net, exported
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import quantext as qx
from quantext.export import check_tensorrt_rules
from quantext.spec import QuantSpec


def exported_with(tmp_path, model: nn.Module, x: torch.Tensor) -> str:
    """``model`` with its quantizers calibrated on ``x``, exported."""
    qx.calibrate(model, [x], progress=False)
    return qx.export_onnx(model, x, tmp_path / "m.onnx", verify=False)


@pytest.mark.parametrize("name", QAT_MODELS)
def test_int8_symmetric_exports_pass(name):
    assert check_tensorrt_rules(exported(name, 8)[3]) == []


@pytest.mark.parametrize("bits,backend,message", [
    (8, "onnxruntime", r"QuantizeLinear .* of module '3\.conv\.input_quantizer': integer type uint8"),
    (8, "onnxruntime", r"QuantizeLinear .* of module '0\.conv\.input_quantizer': zero point \[\d+\] != 0"),
    (4, "tensorrt", r"DequantizeLinear .* of module '3\.conv\.input_quantizer': reads a Clip of a QuantizeLinear"),
])
def test_types_zero_points_and_narrow_ranges_are_flagged(bits, backend, message):
    issues = check_tensorrt_rules(exported("cnn", bits, backend)[3])
    assert any(re.search(message, i) for i in issues), issues


def test_per_channel_activation_is_flagged(tmp_path):
    q = qx.nn.Quantizer(QuantSpec(bits=8, granularity="channel", axis=1, calibration="max"))
    model = Net(nn.Conv2d(3, 4, 3), q, nn.Conv2d(4, 4, 1))
    issues = check_tensorrt_rules(exported_with(tmp_path, model, torch.randn(2, 3, 8, 8)))
    assert len(issues) == 2 and all("'body.1': per-channel quantization of an activation" in i for i in issues)


def test_qdq_between_conv_and_relu_is_flagged(tmp_path):
    model = Net(nn.Conv2d(3, 4, 3), qx.nn.Quantizer(QuantSpec(bits=8)), nn.ReLU())
    issues = check_tensorrt_rules(exported_with(tmp_path, model, torch.randn(2, 3, 8, 8)))
    assert len(issues) == 1 and "of module 'body.1': Q/DQ between Conv and its activation blocks" in issues[0]


class Residual(nn.Module):
    """conv(x) + x with only the conv branch quantized before the add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.add_quantizer = qx.nn.Quantizer(QuantSpec(bits=8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_quantizer(self.conv(x)) + x


def test_residual_add_with_one_unquantized_input_is_flagged(tmp_path):
    issues = check_tensorrt_rules(exported_with(tmp_path, Net(Residual()), torch.randn(2, 3, 8, 8)))
    assert len(issues) == 1 and re.search(r"Add .* of module 'body\.0': input\(s\) \['.*'\] not quantized", issues[0])


def _conv_graph(tmp_path, weight_axis: int, batchnorm: bool) -> str:
    """A hand-built int8 QDQ Conv (the exporter itself refuses BatchNorm)."""
    channels = 4 if weight_axis == 0 else 3
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "s": np.array(0.1, np.float32), "z": np.array(0, np.int8), "w": np.ones((4, 3, 3, 3), np.int8),
        "ws": np.full(channels, 0.01, np.float32), "wz": np.zeros(channels, np.int8),
        "g": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}.items()]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=weight_axis),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv")]
    out = "c"
    if batchnorm:
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "b", "b", "g"], ["y"], name="bn"))
        out = "y"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 4, 3, 3])], inits)
    path = str(tmp_path / "conv.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_batchnorm_and_wrong_weight_axis_are_flagged(tmp_path):
    assert check_tensorrt_rules(_conv_graph(tmp_path, 0, batchnorm=False)) == []
    issues = check_tensorrt_rules(_conv_graph(tmp_path, 0, batchnorm=True))
    assert len(issues) == 1 and "BatchNormalization 'bn'" in issues[0]
    issues = check_tensorrt_rules(_conv_graph(tmp_path, 1, batchnorm=False))
    assert len(issues) == 1
    assert "weight quantized along axis 1, but Conv 'conv' has its output channels on axis 0" in issues[0]
