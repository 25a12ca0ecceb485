"""Export of minifloat quantizers (issue 20, item 6): FP8 E4M3FN/E5M2 as QDQ with
a float8 zero point (opset 19), weights as float8 initializers (blocked at
opset 21), verified teacher-forced in ONNX Runtime; FP4 E2M1 (opset 23), which
ONNX Runtime 1.31 does not run, checked with onnx's reference evaluator;
formats without an ONNX type and runtime-computed (MX) scales are errors."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from torch import nn

import quantext as qx
from quantext.spec import fp_spec

pytest.importorskip("onnxruntime")


def converted(weight, activation, x):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 10))
    prepared = qx.prepare_qat(model, qx.QConfig(weight=weight, activation=activation), example_inputs=(x,),
                              first_last_bits=None)
    return qx.convert(qx.calibrate(prepared, [(x,)], progress=False))


def initializer_types(path) -> set[int]:
    return {i.data_type for i in onnx.load(str(path)).graph.initializer if "_codes_" in i.name}


@pytest.mark.parametrize("name,onnx_type", [("e4m3", onnx.TensorProto.FLOAT8E4M3FN),
                                            ("e5m2", onnx.TensorProto.FLOAT8E5M2)])
def test_fp8_verifies_in_onnx_runtime(name, onnx_type, tmp_path):
    x = torch.randn(8, 64)
    model = converted(fp_spec(name, granularity="channel", axis=0), fp_spec(name), x)
    # ORT 1.31's extended optimizations fuse float8 Q/DQ into QGemm, which it then refuses: reported, not fatal
    with pytest.warns(UserWarning, match="cannot load or run this model"):
        path = qx.export_onnx(model, (x,), tmp_path / "m.onnx", opset=19, verify=True)
    report = path.verification
    assert report.quantizers == 4 and report.top1 == 1.0 and report.optimized_error is not None
    assert initializer_types(path) == {onnx_type}


def test_fp8_per_group_weights_are_blocked(tmp_path):
    x = torch.randn(8, 64)
    model = converted(fp_spec("e4m3", granularity="group", axis=1, group_size=32), fp_spec("e4m3"), x)
    # ORT 1.31's extended optimizations compute blocked float8 weights wrongly (basic ones do not): warned
    with pytest.warns(UserWarning, match="changes the top-1 class"):
        path = qx.export_onnx(model, (x,), tmp_path / "m.onnx", opset=21, verify=True)
    assert path.verification.quantizers == 4 and path.verification.max_diff < 1e-5
    blocked = [n for n in onnx.load(str(path)).graph.node if n.op_type == "DequantizeLinear"
               and any(a.name == "block_size" and a.i == 32 for a in n.attribute)]
    assert len(blocked) == 2


def test_fp4_exports_and_the_reference_evaluator_agrees(tmp_path):
    x = torch.randn(8, 64)
    model = converted(fp_spec("e2m1", granularity="channel", axis=0), fp_spec("e2m1"), x)
    path = qx.export_onnx(model, (x,), tmp_path / "m.onnx", opset=23, verify=False)
    assert initializer_types(path) == {onnx.TensorProto.FLOAT4E2M1}
    evaluator = ReferenceEvaluator(onnx.load(str(path)))
    (out,) = evaluator.run(None, {evaluator.input_names[0]: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weight,activation,opset,match", [
    (fp_spec("e2m3"), fp_spec("e2m3"), 23, "has no ONNX type"),
    (fp_spec("e4m3"), fp_spec("e4m3"), 18, "opset >= 19"),
    (fp_spec("e2m1"), fp_spec("e2m1"), 21, "opset >= 23"),
    (fp_spec("mxfp4"), fp_spec("mxfp8"), 23, "do not export yet"),
])
def test_what_does_not_export_says_why(weight, activation, opset, match, tmp_path):
    x = torch.randn(8, 64)
    with pytest.raises(ValueError, match=match):
        qx.export_onnx(converted(weight, activation, x), (x,), tmp_path / "m.onnx", opset=opset, verify=False)
