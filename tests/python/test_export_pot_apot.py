"""PoT/APoT export: integer weight codes + codebook, the standard-operator
composition for activations, bit-exact against a slow PyTorch reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_standins import APOT_LEVELS, LevelsQuantizer, QuantConv2d, calibrate, levels_reference, pot_levels
from export_standins import quantize
from onnx import numpy_helper
from test_export_onnx import MODELS, assert_qdq_structure, build
from torch import nn

import quantext as qx
from quantext.export import level_table
from quantext.export.graph import producers
from quantext.export.qdq_rules import thresholds

TABLES = {
    "pot4s": (pot_levels(4, True), True),
    "pot4u": (pot_levels(4, False), False),
    "pot8s": (pot_levels(8, True), True),  # 128 magnitudes: 7 search rounds
    "apot2s": (APOT_LEVELS[2], True),
    "apot3u": (APOT_LEVELS[3], False),
    "apot4s": (APOT_LEVELS[4], True),
    "apot4u": (APOT_LEVELS[4], False),
}


def run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


class Only(nn.Module):
    def __init__(self, q: nn.Module) -> None:
        super().__init__()
        self.q = q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x)


def edge_inputs(levels: list[float], alpha: float, rng: np.random.Generator) -> torch.Tensor:
    """Midpoints (exact ties when alpha is a power of two) and their float32
    neighbours, the clip points, infinities, zeros, and random values."""
    t = np.concatenate([thresholds(np.asarray(levels, np.float32)), np.asarray(levels, np.float32)]) * np.float32(alpha)
    near = np.concatenate([t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))])
    special = np.array([0.0, -0.0, np.inf, -np.inf, 3e38, -3e38, 1e-38, alpha * 1.5], np.float32)
    rand = (rng.standard_normal(20000) * alpha * rng.choice([0.01, 0.3, 1.0, 3.0], 20000)).astype(np.float32)
    return torch.from_numpy(np.concatenate([near, -near, special, rand]).astype(np.float32))


@pytest.mark.parametrize("alpha", [0.5, 0.7321])
@pytest.mark.parametrize("table", list(TABLES))
def test_activation_composition_matches_reference_bit_for_bit(tmp_path, table, alpha):
    levels, signed = TABLES[table]
    q = LevelsQuantizer(levels, signed)
    q.alpha.fill_(alpha)
    x = edge_inputs(levels, alpha, np.random.default_rng(0))
    path = qx.export_onnx(Only(q), x, tmp_path / "q.onnx", verify=False)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ops <= {"Div", "Abs", "Greater", "Where", "Add", "Gather", "Mul", "Sign"}
    np.testing.assert_array_equal(run(path, x), levels_reference(x, q.alpha, levels, signed).numpy())


def test_per_channel_activation_alpha(tmp_path):
    levels = APOT_LEVELS[4]
    q = LevelsQuantizer(levels, True, channels=3)
    q.alpha.copy_(torch.tensor([0.5, 1.25, 3.0]))
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1)) * 2
    path = qx.export_onnx(Only(q), x, tmp_path / "q.onnx", verify=False)
    np.testing.assert_array_equal(run(path, x), levels_reference(x, q.alpha, levels, True, 0).numpy())


@pytest.mark.parametrize("table", ["pot4s", "apot4s", "apot3u"])
def test_weights_are_integer_codes_with_a_codebook(tmp_path, table):
    levels, signed = TABLES[table]
    torch.manual_seed(0)
    conv = QuantConv2d(3, 6, 3)
    conv.weight_quantizer, conv.input_quantizer = LevelsQuantizer(levels, signed, channels=6), None
    if not signed:  # an unsigned grid: negative weights go to 0, large ones to the top
        conv.weight.data.add_(0.05)
    conv.weight_quantizer.calibrate_from(conv.weight)
    path = qx.export_onnx(conv, torch.randn(2, 3, 8, 8), tmp_path / "w.onnx")  # verify=True
    graph = onnx.load(path).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    prod = producers(graph)
    mul = prod[next(n for n in graph.node if n.op_type == "Conv").input[1]]
    gather = prod[mul.input[0]]
    cast = prod[gather.input[1]]
    assert (mul.op_type, gather.op_type, cast.op_type) == ("Mul", "Gather", "Cast")
    codes, book, alpha = consts[cast.input[0]], consts[gather.input[0]], consts[mul.input[1]]
    n = len(levels)
    assert codes.dtype == (np.int8 if signed else np.uint8) and codes.shape == tuple(conv.weight.shape)
    assert alpha.shape == (6, 1, 1, 1) and len(book) == (2 * n - 1 if signed else n)
    assert codes.min() >= -(n - 1) and codes.max() <= n - 1
    decoded = book[codes.astype(np.int64)] * alpha  # Gather semantics: negative codes index from the end
    ref = levels_reference(conv.weight.detach(), conv.weight_quantizer.alpha, levels, signed, 0)
    np.testing.assert_array_equal(decoded, ref.numpy())


@pytest.mark.parametrize("name", ["cnn", "mlp3d", "resnet18"])
def test_models_with_pot_and_apot_verify(tmp_path, name):
    specs = dict(weight=TABLES["pot4s"], act=TABLES["apot4u"], first_act=TABLES["apot4s"], add_act=TABLES["pot4s"])
    model, x = build(name, **specs)
    proto = onnx.load(qx.export_onnx(model, x, tmp_path / "m.onnx"))  # verify=True, teacher-forced
    assert_qdq_structure(proto)  # (no Q/DQ at all here)
    onnx.checker.check_model(proto, full_check=True)
    codes = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(codes) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def test_uncalibrated_alpha_is_refused(tmp_path):
    model = quantize(MODELS["cnn"][0](), weight=TABLES["pot4s"], act=TABLES["pot4u"], first_act=TABLES["pot4s"])
    calibrate(model, torch.randn(2, 3, 16, 16))
    model[2].input_quantizer.alpha.zero_()
    with pytest.raises(ValueError, match=r"module '2\.input_quantizer': quantizer alpha = \[0\.0\] is not positive"):
        qx.export_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "m.onnx")


def test_thresholds_decide_as_exact_midpoints():
    levels = np.asarray(APOT_LEVELS[4], np.float32)  # 1/48, 1/12, 2/3, ...: midpoints round in float32
    exact = (levels[:-1].astype(np.float64) + levels[1:]) / 2
    t = thresholds(levels)
    for v in np.concatenate([t, np.nextafter(t, np.float32(1)), np.nextafter(t, np.float32(0))]):
        np.testing.assert_array_equal(v > t, np.float64(v) > exact)


def test_level_table_source():
    if hasattr(qx, "levels") or hasattr(torch.ops.quantext, "levels"):
        np.testing.assert_array_equal(level_table("pot", 4, True), np.float32(pot_levels(4, True)))
        np.testing.assert_allclose(level_table("apot", 4, False), APOT_LEVELS[4], rtol=1e-7)
        np.testing.assert_allclose(level_table("apot", 5, True), APOT_LEVELS[4], rtol=1e-7)
    else:
        with pytest.raises(RuntimeError, match="needs quantext.levels"):
            level_table("pot", 4, True)
