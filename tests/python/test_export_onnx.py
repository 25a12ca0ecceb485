"""qx.export_onnx, uniform quantizers: QDQ structure, weights as int8 codes,
ONNX Runtime agreement (teacher-forced verification) and int8 fusion, errors."""

from __future__ import annotations

import atexit
import functools
import pathlib
import shutil
import tempfile
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_standins import INT8_ACT, QuantConv2d, Quantizer, calibrate, quantize
from onnx import numpy_helper
from torch import nn
from torchvision.models import mobilenet_v2, resnet18

import quantext as qx
from quantext.export import VerificationError, verify_onnx
from quantext.export.graph import consumers, module_path, producers
from quantext.spec import QuantSpec

U8_ACT = QuantSpec(bits=8, signed=False)
W4 = QuantSpec(bits=4, signed=True, narrow_range=True, granularity="channel", axis=0)
A4 = QuantSpec(bits=4, signed=True)
ASYM = QuantSpec(bits=8, signed=True, symmetric=False)


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


class MLP(nn.Module):
    """Linear layers: Gemm on a [batch, features] input, MatMul on [batch, tokens, features]."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(12, 32), nn.Linear(32, 32), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


MODELS = {
    "cnn": (cnn, (2, 3, 16, 16)),
    "mlp": (MLP, (4, 12)),
    "mlp3d": (MLP, (2, 7, 12)),
    "resnet18": (lambda: resnet18(num_classes=10), (2, 3, 32, 32)),
    "mobilenet_v2": (lambda: mobilenet_v2(num_classes=10), (2, 3, 32, 32)),
}


def build(name: str, **specs) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    ctor, shape = MODELS[name]
    x = torch.randn(shape)
    return calibrate(quantize(ctor(), **specs), x), x


def export(tmp_path, name: str, opset: int = 18, verify: bool = True, **specs):
    model, x = build(name, **specs)
    path = qx.export_onnx(model, (x,), tmp_path / f"{name}.onnx", opset=opset, verify=verify)
    return model, x, onnx.load(path), path


def assert_qdq_structure(model: onnx.ModelProto) -> None:
    """Every Q feeds DQ (directly or through one Clip), every DQ reads a Q, a
    Clip of a Q or a constant, a Q and its DQ share parameters, and no tensor
    is quantized twice with the same parameters (in parallel or in a chain)."""
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    prod, users, outputs = producers(graph), consumers(graph), {o.name for o in graph.output}
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)
    assert [o.domain for o in model.opset_import if o.domain not in ("", "ai.onnx")] == []

    def params(node):
        return [consts[i].tobytes() for i in node.input[1:]], sorted(str(a) for a in node.attribute)

    seen = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            assert node.input[1] in consts and node.input[2] in consts, "Q parameters must be constants"
            nxt = users.get(node.output[0], [])
            assert nxt, f"dangling QuantizeLinear {node.name}"
            dqs = [d for n in nxt for d in ([n] if n.op_type == "DequantizeLinear" else users[n.output[0]])]
            assert all(n.op_type in ("DequantizeLinear", "Clip") for n in nxt)
            assert all(d.op_type == "DequantizeLinear" and params(d) == params(node) for d in dqs)
            key = (node.input[0], repr(params(node)))
            assert key not in seen, f"duplicated Q/DQ pair on {node.input[0]}"
            seen.add(key)
            src = prod.get(node.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                assert params(src) != params(node), f"{node.name} re-quantizes a DQ with the same parameters"
        if node.op_type == "DequantizeLinear":
            assert users.get(node.output[0]) or node.output[0] in outputs, f"dangling DequantizeLinear {node.name}"
            src = node.input[0]
            if src not in consts:
                p = prod[src]
                assert p.op_type == "QuantizeLinear" or (p.op_type == "Clip"
                                                         and prod[p.input[0]].op_type == "QuantizeLinear")


def weight_dqs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto, np.ndarray]]:
    """(DQ of a constant, its consumer, codes) for every quantized weight."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    users = consumers(model.graph)
    return [(n, u, consts[n.input[0]]) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in consts for u in users[n.output[0]]]


@functools.cache
def int8_export(name: str):
    """The default int8 export of a model (verify=True: ORT agrees with PyTorch),
    made once per test session (test_tensorrt_rules reads it too)."""
    folder = tempfile.mkdtemp(prefix=f"qx_export_{name}_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return export(pathlib.Path(folder), name)


@pytest.mark.parametrize("name", list(MODELS))
def test_int8_export_verifies_and_has_int8_weights(name):
    model, x, proto, path = int8_export(name)
    onnx.checker.check_model(proto, full_check=True)
    assert_qdq_structure(proto)
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["BatchNormalization"] == 0 and ops["QuantizeLinear"] > 0
    modules = dict(model.named_modules())
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    dqs = weight_dqs(proto)
    assert len(dqs) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in modules.values())
    for dq, user, codes in dqs:
        scale, zp = consts[dq.input[1]], consts[dq.input[2]]
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        assert codes.dtype == np.int8 and zp.dtype == np.int8 and not zp.any()
        assert codes.min() >= -127 and codes.max() <= 127
        # output channels: Conv KCRS and Gemm(transB=1) [out, in] on axis 0, MatMul [in, out] on axis 1
        out_axis = 1 if user.op_type == "MatMul" else 0
        assert user.op_type in ("Conv", "Gemm", "MatMul") and axis == out_axis
        assert scale.shape == (codes.shape[out_axis],)
        # independent reference: ATen's per-channel fake quantization of the module's weight
        layer = modules[module_path(dq).rsplit(".", 1)[0]]
        w = layer.weight.detach()
        ref = torch.fake_quantize_per_channel_affine(w, torch.tensor(scale), torch.zeros(len(scale),
                                                     dtype=torch.int32), 0, -127, 127)
        decoded = codes.astype(np.float32) * np.expand_dims(scale, [d for d in range(codes.ndim) if d != out_axis])
        assert np.array_equal(decoded, ref.numpy() if out_axis == 0 else ref.numpy().T)


def _optimized_ops(tmp_path, path) -> Counter:
    """Op counts of the graph ONNX Runtime (CPU, extended optimizations) runs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def test_ort_runs_unsigned_relu_activations_as_qlinearconv(tmp_path):
    # uint8 activations with zero point 0 after ReLU: ORT drops the ReLU into the
    # Q and fuses DQ -> Conv -> Q into QLinearConv (int8 weights, uint8 activations).
    _, _, proto, path = export(tmp_path, "cnn", act=U8_ACT, first_act=INT8_ACT)
    ops = _optimized_ops(tmp_path, path)
    assert ops["QLinearConv"] == 2 and ops["Conv"] == ops["FusedConv"] == 0


def test_ort_runs_symmetric_int8_resnet_with_qlinearconv(tmp_path):
    # TensorRT's form (int8, zero point 0 everywhere): the convolutions whose output
    # is quantized directly (residual-add inputs) become QLinearConv.
    _, _, proto, path = int8_export("resnet18")
    ops = _optimized_ops(tmp_path, path)
    assert ops["QLinearConv"] >= 8, ops


def test_below_8_bits_exports_qcdq(tmp_path):
    _, _, proto, _ = export(tmp_path, "cnn", weight=W4, act=A4)
    assert_qdq_structure(proto)
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    prod = producers(proto.graph)
    clips = [n for n in proto.graph.node if n.op_type == "Clip"]
    assert len(clips) == 3 and all(prod[c.input[0]].op_type == "QuantizeLinear" for c in clips)
    assert all((consts[c.input[1]], consts[c.input[2]]) == (-8, 7) for c in clips)
    assert all(codes.min() >= -7 and codes.max() <= 7 for _, _, codes in weight_dqs(proto))


@pytest.mark.parametrize("act,dtype", [(U8_ACT, np.uint8), (ASYM, np.int8)])
def test_unsigned_and_asymmetric_activations(tmp_path, act, dtype):
    _, _, proto, _ = export(tmp_path, "cnn", act=act, first_act=INT8_ACT)
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    zps = [consts[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"][1:]
    assert all(z.dtype == dtype for z in zps)
    if act is ASYM:  # after ReLU the calibrated range starts at 0: the zero point sits at qmin
        assert all(int(z) == -128 for z in zps)


def test_per_group_and_16_bit_need_opset_21(tmp_path):
    # (not "mlp3d": ONNX Runtime 1.31 fails to load MatMul on 3-D QDQ inputs at opset 21, see docs/export.md)
    group = QuantSpec(bits=8, signed=True, narrow_range=True, granularity="group", axis=1, group_size=2)
    with pytest.raises(ValueError, match=r"per-group .* opset >= 21"):
        export(tmp_path, "mlp", weight=group)
    with pytest.raises(ValueError, match=r"16-bit QuantizeLinear needs opset >= 21"):
        export(tmp_path, "cnn", act=QuantSpec(bits=16, signed=True))
    _, _, proto, _ = export(tmp_path, "mlp", opset=21, weight=group)
    assert all(any(a.name == "block_size" and a.i == 2 for a in dq.attribute) for dq, _, _ in weight_dqs(proto))
    _, _, proto, _ = export(tmp_path, "cnn", opset=21, act=QuantSpec(bits=16, signed=True))
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert {consts[n.input[2]].dtype for n in proto.graph.node if n.op_type == "QuantizeLinear"} == {np.dtype(np.int16)}


def test_dynamic_batch(tmp_path):
    model, x = build("cnn")
    path = qx.export_onnx(model, (x,), tmp_path / "dyn.onnx", dynamic_batch=True, input_names=["image"],
                          output_names=["logits"])
    proto = onnx.load(path)
    assert [i.name for i in proto.graph.input] == ["image"] and proto.graph.output[0].name == "logits"
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    verify_onnx(path, model, torch.randn(5, 3, 16, 16))


class FixedBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(2, -1)


def test_dynamic_batch_errors(tmp_path):
    with pytest.raises(ValueError, match="dynamic_batch=True: the model does not trace with a symbolic batch"):
        qx.export_onnx(FixedBatch(), (torch.randn(2, 3),), tmp_path / "f.onnx", dynamic_batch=True)
    with pytest.raises(ValueError, match="batch dimension of size >= 2"):
        qx.export_onnx(FixedBatch(), (torch.randn(1, 3),), tmp_path / "f.onnx", dynamic_batch=True)


class Net(nn.Module):
    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConvBnStandIn(QuantConv2d):
    """A BN-QAT module before qx.convert: it still owns its BatchNorm."""

    def __init__(self) -> None:
        super().__init__(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.weight_quantizer = self.input_quantizer = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(super().forward(x))


torch.library.define("quantext_test::my_quant", "(Tensor x) -> Tensor")
torch.library.impl("quantext_test::my_quant", "CompositeExplicitAutograd", lambda x: x.round())
torch.library.register_fake("quantext_test::my_quant")(lambda x: torch.empty_like(x))


class MyQuant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantext_test.my_quant(x)


def test_errors_name_the_module(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    out = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"module 'body\.0' \(ConvBnStandIn\) still computes BatchNorm "
                                         r"\('body\.0\.bn'\): call qx\.convert"):
        qx.export_onnx(Net(ConvBnStandIn()), x, out)
    with pytest.raises(ValueError, match=r"module 'body\.1' \(BatchNorm2d\) is not folded: call qx\.convert"):
        qx.export_onnx(Net(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), x, out)
    with pytest.raises(NotImplementedError, match=r"module 'body\.1' \(MyQuant\) calls quantext_test::my_quant, "
                                                  r"which has no ONNX export rule"):
        qx.export_onnx(Net(nn.Conv2d(3, 4, 3), MyQuant()), x, out)
    with pytest.raises(ValueError, match=r"opset must be an int in \[18, 23\]"):
        qx.export_onnx(Net(nn.Conv2d(3, 4, 3)), x, out, opset=13)


def test_uncalibrated_quantizers_are_refused(tmp_path):
    model = quantize(cnn())  # scales are still zero
    with pytest.raises(ValueError, match=r"module '0\.input_quantizer': quantizer scale = \[0\.0\] is not positive "
                                         r"and finite: the quantizer was never calibrated"):
        qx.export_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "u.onnx")
    model, x = build("cnn")
    model[2].weight_quantizer.scale[3] = float("nan")
    with pytest.raises(ValueError, match=r"module '2\.weight_quantizer': quantizer scale = .*nan"):
        qx.export_onnx(model, x, tmp_path / "u.onnx")
    model, x = build("cnn")
    model[5].input_quantizer.calibrated = False
    with pytest.raises(ValueError, match=r"quantizer '5\.input_quantizer' was never calibrated"):
        qx.export_onnx(model, x, tmp_path / "u.onnx")


def test_non_float32_models_are_refused(tmp_path):
    model, x = build("cnn")
    with pytest.raises(ValueError, match=r"module '0\.input_quantizer': the quantizer's input is double; export "
                                         r"takes float32 models"):
        qx.export_onnx(model.double(), x.double(), tmp_path / "d.onnx")


class RepeatedQuantizers(nn.Module):
    """The same quantization applied twice in a row and twice side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.ModuleList(Quantizer(INT8_ACT) for _ in range(4))
        for q in self.q:
            q.scale.fill_(0.05)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.q[1](self.q[0](x))) + self.q[2](x) * self.q[3](x)


def test_repeated_quantizers_export_one_qdq_pair(tmp_path):
    model, x = RepeatedQuantizers(), torch.randn(2, 3, 4, 4)
    proto = onnx.load(qx.export_onnx(model, x, tmp_path / "r.onnx"))
    assert_qdq_structure(proto)
    assert Counter(n.op_type for n in proto.graph.node)["QuantizeLinear"] == 1


def _tampered(path, tmp_path, name: str, change) -> str:
    proto = onnx.load(path)
    init = next(t for t in proto.graph.initializer if t.name == name)
    init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)), name))
    out = tmp_path / "tampered.onnx"
    onnx.save(proto, out)
    return str(out)


def test_verification_catches_wrong_exports(tmp_path):
    model, x, proto, path = export(tmp_path, "cnn")
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and module_path(n) == "2.input_quantizer")
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.output[0] == dq.input[0])
    # a scale 3% off: values leave the PyTorch grid
    bad = _tampered(path, tmp_path, q.input[1], lambda s: (s * 1.03).astype(np.float32))
    with pytest.raises(VerificationError, match=r"module '2\.input_quantizer'.* elements (lie off the PyTorch "
                                                r"quantizer's grid|differ by more than one quantization step); "
                                                r"largest difference .* at index \("):
        verify_onnx(bad, model, x)
    # a zero point moved in the DequantizeLinear only: every element one step off
    proto.graph.initializer.append(numpy_helper.from_array(np.array(1, np.int8), "moved_zp"))
    dq.input[2] = "moved_zp"
    onnx.save(proto, tmp_path / "zp.onnx")
    with pytest.raises(VerificationError, match=r"one step apart, more than the 1%"):
        verify_onnx(tmp_path / "zp.onnx", model, x)
    # the float head: a bias off by 1e-3
    bias = next(n for n in onnx.load(path).graph.node if n.op_type == "Gemm").input[2]
    bad = _tampered(path, tmp_path, bias, lambda b: b + np.float32(1e-3))
    with pytest.raises(VerificationError, match=r"output '.*': 20 of 20 elements differ by more than 1e-05 relative"):
        verify_onnx(bad, model, x)
