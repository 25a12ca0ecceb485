"""qx.export_onnx on models made by quantext's own QAT pipeline (prepare_qat ->
calibrate -> SGD steps -> freeze_bn -> convert): torchvision ResNet-18 and
MobileNetV2, a Conv-BN-ReLU CNN and an MLP, at 8 and 4 bits, for TensorRT and
ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from export_models import MODELS, assert_qdq_structure, constants, exported, optimized_ops, qat_model, weight_dqs
from torch import nn

import quantext as qx
from quantext.export import check_tensorrt_rules
from quantext.export.graph import consumers, module_path

CASES = [(name, 8, "tensorrt") for name in MODELS] + [(name, 4, "tensorrt") for name in MODELS] + \
    [(name, 8, "onnxruntime") for name in ("cnn", "mlp", "resnet18")]


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (qx.nn.QuantConv2d, qx.nn.QuantLinear))}


@pytest.mark.parametrize("name,bits,backend", CASES)
def test_qat_model_exports_and_verifies(name, bits, backend):
    model, _, proto, _ = exported(name, bits, backend)  # verify=True: ONNX Runtime agrees, teacher-forced
    onnx.checker.check_model(proto, full_check=True)
    assert_qdq_structure(proto)  # also: no BatchNormalization node
    modules, layers, consts = dict(model.named_modules()), _layers(model), constants(proto)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules.values())
    first, last = MODELS[name][2]
    for path, layer in layers.items():  # prepare_qat's rule: first and last layers at 8 bits
        want = 8 if path in (first, last) else bits
        assert layer.weight_quantizer.spec.bits == layer.input_quantizer.spec.bits == want, path

    dqs = {module_path(dq): (dq, user, codes) for dq, user, codes in weight_dqs(proto)}
    assert set(dqs) == {f"{path}.weight_quantizer" for path in layers}
    for path, layer in layers.items():
        dq, user, codes = dqs[f"{path}.weight_quantizer"]
        qmin, qmax = layer.weight_quantizer.bounds
        assert qmin == -qmax == 1 - 2 ** (layer.weight_quantizer.spec.bits - 1)  # narrow range
        scale, zp = consts[dq.input[1]], consts[dq.input[2]]
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        # output channels: Conv KCRS and Gemm(transB=1) [out, in] on axis 0, MatMul [in, out] on axis 1
        out_axis = 1 if user.op_type == "MatMul" else 0
        assert user.op_type in ("Conv", "Gemm", "MatMul") and axis == out_axis and module_path(user) == path
        assert codes.dtype == np.int8 and zp.dtype == np.int8 and not zp.any()
        assert codes.min() >= qmin and codes.max() <= qmax
        assert scale.shape == (codes.shape[out_axis],)
        np.testing.assert_array_equal(scale, layer.weight_quantizer.qparams()["scale"].numpy())
        # independent reference: ATen's per-channel fake quantization of the converted (BN-folded) weight
        ref = torch.fake_quantize_per_channel_affine(layer.weight.detach(), torch.tensor(scale),
                                                     torch.zeros(len(scale), dtype=torch.int32), 0, qmin, qmax)
        decoded = codes.astype(np.float32) * np.expand_dims(scale, [d for d in range(codes.ndim) if d != out_axis])
        np.testing.assert_array_equal(decoded, ref.numpy() if out_axis == 0 else ref.numpy().T)

    users = consumers(proto.graph)
    qs = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert qs
    for q in qs:  # activations: per tensor, the quantizer's own scale, zero point and range
        quantizer = modules[module_path(q)]
        assert isinstance(quantizer, qx.nn.Quantizer) and quantizer.role == "activation"
        qmin, qmax = quantizer.bounds
        params = quantizer.qparams()
        scale, zp = consts[q.input[1]], consts[q.input[2]]
        assert scale.shape == zp.shape == () and scale == params["scale"].numpy()
        assert zp.dtype == (np.int8 if qmin < 0 else np.uint8) and zp == params["zero_point"].numpy()
        (nxt,) = users[q.output[0]]
        full = np.iinfo(zp.dtype)
        if (qmin, qmax) == (full.min, full.max):
            assert nxt.op_type == "DequantizeLinear"
        else:  # QCDQ
            assert nxt.op_type == "Clip" and (consts[nxt.input[1]], consts[nxt.input[2]]) == (qmin, qmax)
    clipped = {module_path(q) for q in qs if users[q.output[0]][0].op_type == "Clip"}
    assert bool(clipped) == (bits < 8) and f"{first}.input_quantizer" not in clipped


@pytest.mark.parametrize("name", list(MODELS))
def test_int8_tensorrt_export_passes_tensorrt_rules(name):
    assert check_tensorrt_rules(exported(name, 8)[3]) == []


def test_onnxruntime_runs_the_tensorrt_form_partly_as_int8(tmp_path):
    # int8 symmetric after ReLU: ORT cannot absorb the ReLU into the quantizer, so
    # only the convolutions whose output is quantized directly (residual-add inputs)
    # become QLinearConv.
    ops = optimized_ops(exported("resnet18", 8)[3], tmp_path)
    assert ops["QLinearConv"] >= 8, ops


@pytest.mark.parametrize("name,fused", [("cnn", {"QLinearConv": 2}), ("mlp", {"QGemm": 2}),
                                        ("resnet18", {"QLinearConv": 20, "QLinearAdd": 7})])
def test_onnxruntime_backend_runs_as_int8(tmp_path, name, fused):
    # uint8 asymmetric activations: every layer whose output is quantized fuses
    # (with its ReLU) into an integer kernel; only the float heads stay float.
    _, _, proto, path = exported(name, 8, "onnxruntime")
    ops = optimized_ops(path, tmp_path)
    assert {op: ops[op] for op in fused} == fused, ops
    assert ops["Conv"] == ops["FusedConv"] == 0, ops
    assert any("integer type uint8" in issue for issue in check_tensorrt_rules(proto))


def test_unconverted_and_uncalibrated_models_are_refused(tmp_path):
    x = torch.randn(MODELS["cnn"][1])
    prepared = qx.prepare_qat(MODELS["cnn"][0](), qx.QConfig.uniform(8), example_inputs=(x,))
    with pytest.raises(ValueError, match=r"quantizer '0\.conv\.weight_quantizer' was never calibrated: "
                                         r"run qx\.calibrate"):
        qx.export_onnx(qx.convert(prepared), x, tmp_path / "m.onnx")
    qx.calibrate(prepared, [x], progress=False)
    with pytest.raises(ValueError, match=r"module '0' \(QuantConvBnReLU2d\) still computes BatchNorm \('0\.bn'\): "
                                         r"call qx\.convert\(model\)"):
        qx.export_onnx(prepared, x, tmp_path / "m.onnx")
    qx.freeze_bn(prepared)  # frozen is not folded
    with pytest.raises(ValueError, match=r"module '0' \(QuantConvBnReLU2d\) still computes BatchNorm"):
        qx.export_onnx(prepared, x, tmp_path / "m.onnx")
    qx.export_onnx(qx.convert(prepared), x, tmp_path / "m.onnx")
