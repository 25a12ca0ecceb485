"""qx.export_onnx, uniform quantizers: integer types and zero points, opset-21
features, dynamic batch, errors, merged quantizers and what verification
catches. (The per-model structure, weight codes and int8 fusion are in
test_export_qat_models.py.)"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from export_models import Net, assert_qdq_structure, constants, qat_model, weight_dqs
from onnx import numpy_helper
from torch import nn

import quantext as qx
from quantext.export import VerificationError, verify_onnx
from quantext.export.graph import module_path
from quantext.spec import QuantSpec

INT8_ACT = QuantSpec(bits=8, signed=True)


def export(tmp_path, name: str, qconfig: qx.QConfig, opset: int = 18, **prepare_options):
    model, x = qat_model(name, qconfig, steps=1, **prepare_options)
    path = qx.export_onnx(model, (x,), tmp_path / f"{name}.onnx", opset=opset)  # verify=True
    return model, x, onnx.load(path), path


@pytest.mark.parametrize("act,dtype", [(QuantSpec(bits=8, signed=False), np.uint8),
                                       (QuantSpec(bits=8, signed=True, symmetric=False), np.int8)])
def test_unsigned_and_asymmetric_activations(tmp_path, act, dtype):
    model, _, proto, _ = export(tmp_path, "cnn", qx.QConfig(activation=act))
    consts = constants(proto)
    zps = {module_path(n): consts[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert zps.pop("0.conv.input_quantizer").dtype == np.int8  # the image: prepare_qat keeps it signed
    assert sorted(zps) == ["3.conv.input_quantizer", "7.input_quantizer"]  # after ReLU
    assert all(z.dtype == dtype for z in zps.values())
    if not act.symmetric:  # the calibrated range starts at 0: the zero point sits at qmin
        assert all(int(z) == -128 for z in zps.values())


def test_per_group_and_16_bit_need_opset_21(tmp_path):
    # (not "mlp3d": ONNX Runtime 1.31 fails to load MatMul on 3-D QDQ inputs at opset 21, see docs/export.md)
    group = qx.QConfig(weight=QuantSpec(bits=8, narrow_range=True, granularity="group", axis=1, group_size=2))
    a16 = qx.QConfig(activation=QuantSpec(bits=16, signed=True))
    with pytest.raises(ValueError, match=r"per-group .* opset >= 21"):
        export(tmp_path, "mlp", group)
    with pytest.raises(ValueError, match=r"16-bit QuantizeLinear needs opset >= 21"):
        export(tmp_path, "cnn", a16, first_last_bits=None)
    _, _, proto, _ = export(tmp_path, "mlp", group, opset=21)
    assert all(any(a.name == "block_size" and a.i == 2 for a in dq.attribute) for dq, _, _ in weight_dqs(proto))
    _, _, proto, _ = export(tmp_path, "cnn", a16, opset=21, first_last_bits=None)
    consts = constants(proto)
    assert {consts[n.input[2]].dtype for n in proto.graph.node if n.op_type == "QuantizeLinear"} == {np.dtype(np.int16)}


def test_dynamic_batch(tmp_path):
    model, x = qat_model("cnn", qx.QConfig.uniform(8), steps=1)
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


# A fake-quant op quantext does not know (a custom op of the user's): the exporter must name its module.
torch.library.define("quantext_test::my_quant", "(Tensor x) -> Tensor")
torch.library.impl("quantext_test::my_quant", "CompositeExplicitAutograd", lambda x: x.round())
torch.library.register_fake("quantext_test::my_quant")(lambda x: torch.empty_like(x))


class MyQuant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantext_test.my_quant(x)


def test_errors_name_the_module(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    out = tmp_path / "m.onnx"
    conv_bn = qx.nn.QuantConvBn2d.from_float(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)),
                                            qx.QConfig(weight=None, activation=None))
    with pytest.raises(ValueError, match=r"module 'body\.0' \(QuantConvBn2d\) still computes BatchNorm "
                                         r"\('body\.0\.bn'\): call qx\.convert"):
        qx.export_onnx(Net(conv_bn), x, out)
    with pytest.raises(ValueError, match=r"module 'body\.1' \(BatchNorm2d\) is not folded: call qx\.convert"):
        qx.export_onnx(Net(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), x, out)
    with pytest.raises(NotImplementedError, match=r"module 'body\.1' \(MyQuant\) calls quantext_test::my_quant, "
                                                  r"which has no ONNX export rule"):
        qx.export_onnx(Net(nn.Conv2d(3, 4, 3), MyQuant()), x, out)
    with pytest.raises(ValueError, match=r"opset must be an int in \[18, 23\]"):
        qx.export_onnx(Net(nn.Conv2d(3, 4, 3)), x, out, opset=13)


def test_invalid_quantizer_parameters_are_refused(tmp_path):
    model, x = qat_model("cnn", qx.QConfig.uniform(8), steps=0)
    model.get_submodule("3.conv.weight_quantizer").scale[3] = float("nan")
    with pytest.raises(ValueError, match=r"module '3\.conv\.weight_quantizer': quantizer scale = .*nan.* is not "
                                         r"positive and finite"):
        qx.export_onnx(model, x, tmp_path / "u.onnx")
    model, x = qat_model("cnn", qx.QConfig.uniform(8), steps=0)
    model.get_submodule("7.input_quantizer").scale.zero_()
    with pytest.raises(ValueError, match=r"module '7\.input_quantizer': quantizer scale = \[0\.0\] is not positive"):
        qx.export_onnx(model, x, tmp_path / "u.onnx")


def test_non_float32_models_are_refused(tmp_path):
    model, x = qat_model("cnn", qx.QConfig.uniform(8), steps=0)
    with pytest.raises(ValueError, match=r"module '0\.conv\.input_quantizer': the quantizer's input is double; "
                                         r"export takes float32 models"):
        qx.export_onnx(model.double(), x.double(), tmp_path / "d.onnx")


class RepeatedQuantizers(nn.Module):
    """The same quantization applied twice in a row and twice side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.ModuleList(qx.nn.Quantizer(INT8_ACT).set_qparams(scale=torch.tensor(0.05)) for _ in range(4))
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.q[1](self.q[0](x))) + self.q[2](x) * self.q[3](x)


def test_repeated_quantizers_export_one_qdq_pair(tmp_path):
    model, x = RepeatedQuantizers(), torch.randn(2, 3, 4, 4)
    proto = onnx.load(qx.export_onnx(model, x, tmp_path / "r.onnx"))
    assert_qdq_structure(proto)
    assert [module_path(n) for n in proto.graph.node if n.op_type == "QuantizeLinear"] == ["q.0"]


def _tampered(path, tmp_path, name: str, change) -> str:
    proto = onnx.load(path)
    init = next(t for t in proto.graph.initializer if t.name == name)
    init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)), name))
    out = tmp_path / "tampered.onnx"
    onnx.save(proto, out)
    return str(out)


def test_verification_catches_wrong_exports(tmp_path):
    model, x, proto, path = export(tmp_path, "cnn", qx.QConfig.uniform(8))
    q = next(n for n in proto.graph.node
             if n.op_type == "QuantizeLinear" and module_path(n) == "3.conv.input_quantizer")
    dq = next(n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    # a scale 3% off: values leave the PyTorch grid
    bad = _tampered(path, tmp_path, q.input[1], lambda s: (s * 1.03).astype(np.float32))
    with pytest.raises(VerificationError, match=r"module '3\.conv\.input_quantizer'.* elements (lie off the "
                                                r"PyTorch quantizer's grid|differ by more than one quantization "
                                                r"step); largest difference .* at index \("):
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



class PositionalEmbedding(nn.Module):
    """Parameters read directly by the graph (get_attr), one of them 0-dim: the
    residual-add quantizers of ``prepare_qat`` quantize them as constant inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(5, 8))
        self.shift = nn.Parameter(torch.tensor(0.25))
        self.lin = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x + self.pos) + self.shift


APOT4 = qx.QConfig(weight=QuantSpec(scheme="apot", bits=4, granularity="channel", axis=0),
                  activation=QuantSpec(scheme="apot", bits=4, signed=True))


@pytest.mark.parametrize("qconfig", [qx.QConfig.uniform(8), qx.QConfig.uniform(8, backend="onnxruntime"), APOT4],
                         ids=["tensorrt", "onnxruntime", "apot4"])
def test_parameters_used_in_the_graph_export_as_codes(tmp_path, qconfig):
    x = torch.randn(2, 5, 8)
    prepared = qx.prepare_qat(PositionalEmbedding(), qconfig, example_inputs=(x,))
    qx.calibrate(prepared, [torch.randn(2, 5, 8) for _ in range(2)], progress=False)
    model = qx.convert(prepared)
    proto = onnx.load(qx.export_onnx(model, (x,), tmp_path / "pos.onnx"))  # verify=True
    assert_qdq_structure(proto)
    consts = constants(proto)
    if qconfig is APOT4:  # constant codes, Cast to the indices of a codebook (verified against PyTorch above)
        decoded = {module_path(n) for n in proto.graph.node if n.op_type == "Cast" and n.input[0] in consts}
        assert {"add_input1_quantizer", "add_1_input1_quantizer"} <= decoded
        return
    dqs = {module_path(n): n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts}
    for path, param in [("add_input1_quantizer", model.pos), ("add_1_input1_quantizer", model.shift)]:
        quantizer, dq = model.get_submodule(path), dqs[path]
        qmin, qmax = quantizer.bounds
        scale, zp = (quantizer.qparams()[k] for k in ("scale", "zero_point"))
        # independent reference: ATen's fake quantization, read back as codes
        ref = torch.fake_quantize_per_tensor_affine(param.detach(), float(scale), int(zp), qmin, qmax)
        codes = consts[dq.input[0]]
        assert codes.shape == tuple(param.shape) and codes.dtype == (np.int8 if qmin < 0 else np.uint8)
        np.testing.assert_array_equal((codes.astype(np.float32) - consts[dq.input[2]]) * consts[dq.input[1]],
                                      ref.numpy())


class TinyChannel(nn.Module):
    """A per-channel weight quantizer whose channels' scales are 1e8 apart (a
    layer scale of 1e-6 folded into one output channel)."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.randn(2, 4)
        w[1] *= 1e-7
        self.weight = nn.Parameter(w)
        spec = QuantSpec(bits=8, narrow_range=True, granularity="channel", axis=0)
        self.q = qx.nn.Quantizer(spec, shape=(2,), role="weight")
        self.q.set_qparams(scale=torch.tensor([w[0].abs().max() / 127, 1e-9]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.q(self.weight).t()


def test_verification_compares_codes_at_any_scale(tmp_path):
    model, x = TinyChannel(), torch.randn(3, 4)
    path = qx.export_onnx(model, x, tmp_path / "tiny.onnx")  # verify=True
    codes = next(t.name for t in onnx.load(path).graph.initializer if numpy_helper.to_array(t).dtype == np.int8
                 and numpy_helper.to_array(t).ndim == 2)

    def plant(c: np.ndarray) -> np.ndarray:  # five steps (5e-9) off in the tiny channel: far below the float
        assert c.shape == (4, 2)             # tolerance of the large one, but five codes apart
        c = c.copy()                         # (MatMul layout [in, out]: the output channel is axis 1)
        c[0, 1] += 5 if c[0, 1] < 100 else -5
        return c

    bad = _tampered(path, tmp_path, codes, plant)
    with pytest.raises(VerificationError, match=r"module 'q'.*: 1 of 8 elements differ by more than one "
                                                r"quantization step; .* = code -?\d+, PyTorch .* = code -?\d+\)"):
        verify_onnx(bad, model, x)
