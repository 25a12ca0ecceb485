"""PoT/APoT export: quantext's fake_quant_levels as integer weight codes + a
codebook and as a standard-operator composition for activations, bit-exact
against the op and the slow nearest-level reference; QAT models with PoT/APoT
quantizers verified in ONNX Runtime; an op registered by the user."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import schemes_reference as ref
import torch
from export_models import assert_qdq_structure, qat_model
from onnx import numpy_helper
from torch import nn

import quantext as qx
from quantext.export import LevelsArgs, level_table, register_levels_op
from quantext.export.graph import module_path, producers
from quantext.export.qdq_rules import thresholds
from quantext.spec import QuantSpec

# (scheme, bits, signed): B = bits - 1 magnitude bits when signed, bits when unsigned
GRIDS = {
    "pot4s": ("pot", 4, True),
    "pot4u": ("pot", 4, False),
    "pot8s": ("pot", 8, True),  # 128 magnitudes: 7 search rounds
    "pot8u": ("pot", 8, False),  # 2^-254 .. 2^-150 underflow float32: equal (zero) levels
    "apot3s": ("apot", 3, True),  # B = 2
    "apot3u": ("apot", 3, False),
    "apot5s": ("apot", 5, True),  # B = 4: 1/48, 1/12, 2/3, ... are not float32 numbers
    "apot4u": ("apot", 4, False),
}


def run(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def reference(x: torch.Tensor, q: qx.nn.Quantizer) -> np.ndarray:
    s = q.spec
    return ref.fake_quant(x, q.alpha, s.scheme, s.bits, s.signed, s.k, axis=s.per_channel_axis).numpy()


class Only(nn.Module):
    def __init__(self, q: nn.Module) -> None:
        super().__init__()
        self.q = q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x)


def edge_inputs(scheme: str, bits: int, signed: bool, alpha: float, rng: np.random.Generator) -> torch.Tensor:
    """Midpoints (exact ties when alpha is a power of two) and their float32
    neighbours, levels, the clip points, infinities, zeros, and random values."""
    levels = level_table(scheme, bits, signed).astype(np.float32)
    t = np.concatenate([thresholds(levels), levels]) * np.float32(alpha)
    near = np.concatenate([t, np.nextafter(t, np.float32(np.inf)), np.nextafter(t, np.float32(-np.inf))])
    special = np.array([0.0, -0.0, np.inf, -np.inf, 3e38, -3e38, 1e-38, alpha * 1.5], np.float32)
    rand = (rng.standard_normal(20000) * alpha * rng.choice([0.01, 0.3, 1.0, 3.0], 20000)).astype(np.float32)
    return torch.from_numpy(np.concatenate([near, -near, special, rand]).astype(np.float32))


@pytest.mark.parametrize("alpha", [0.5, 0.7321])
@pytest.mark.parametrize("grid", list(GRIDS))
def test_activation_composition_matches_op_and_reference_bit_for_bit(tmp_path, grid, alpha):
    scheme, bits, signed = GRIDS[grid]
    q = qx.nn.Quantizer(QuantSpec(scheme=scheme, bits=bits, signed=signed)).set_qparams(alpha=torch.tensor(alpha))
    x = edge_inputs(scheme, bits, signed, alpha, np.random.default_rng(0))
    path = qx.export_onnx(Only(q), x, tmp_path / "q.onnx", verify=False)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ops <= {"Div", "Abs", "Greater", "Where", "Add", "Gather", "Mul", "Sign"}
    got = run(path, x)
    np.testing.assert_array_equal(got, reference(x, q))
    np.testing.assert_array_equal(got, q(x).numpy())


def test_per_channel_activation_alpha(tmp_path):
    q = qx.nn.Quantizer(QuantSpec(scheme="apot", bits=5, granularity="channel", axis=0))
    q.set_qparams(alpha=torch.tensor([0.5, 1.25, 3.0]))
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1)) * 2
    path = qx.export_onnx(Only(q), x, tmp_path / "q.onnx", verify=False)
    np.testing.assert_array_equal(run(path, x), reference(x, q))


# APoT 4 magnitude bits: the design's level set {0, 1/48, ..., 11/16, 3/4, 1} times 48
APOT_B4 = [0, 1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 32, 33, 36, 48]


@pytest.mark.parametrize("grid,book_type,denominator", [
    ("pot4s", np.int8, 64), ("apot5s", np.int8, 48), ("apot3u", np.uint8, 10),  # B = 3: {0, .1, .2, .3, .4, .6, .8, 1}
    ("pot4u", np.int32, 1 << 14),  # 2^-14 .. 1: integers beyond int8
    ("pot8s", None, None),  # 2^-126 .. 1: no integer form, float levels times alpha
])
def test_weights_are_integer_codes_with_a_codebook(tmp_path, grid, book_type, denominator):
    scheme, bits, signed = GRIDS[grid]
    spec = QuantSpec(scheme=scheme, bits=bits, signed=signed, granularity="channel")
    conv = qx.nn.QuantConv2d.from_float(nn.Conv2d(3, 6, 3), qx.QConfig(weight=spec, activation=None))
    if not signed:  # an unsigned grid: negative weights go to 0, large ones to the top
        conv.weight.data.add_(0.05)
    x = torch.randn(2, 3, 8, 8)
    qx.calibrate(conv, [x], progress=False)
    path = qx.export_onnx(qx.convert(conv), x, tmp_path / "w.onnx")  # verify=True
    graph = onnx.load(path).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    prod = producers(graph)
    decode = prod[next(n for n in graph.node if n.op_type == "Conv").input[1]]
    gather = prod[decode.input[0]]
    cast = prod[gather.input[1]]
    assert (gather.op_type, cast.op_type) == ("Gather", "Cast")
    codes, book, scale = consts[cast.input[0]], consts[gather.input[0]], consts[decode.input[1]]
    levels = level_table(scheme, bits, signed)
    assert codes.shape == tuple(conv.weight.shape) and len(book) == (2 * len(levels) - 1 if signed else len(levels))
    q = conv.weight_quantizer
    # quantext's own integer codes (sign * level index)
    np.testing.assert_array_equal(codes, qx.quantize(conv.weight.detach(), spec, alpha=q.alpha).numpy())
    alpha = q.alpha.detach().numpy().reshape(-1, 1, 1, 1)
    if book_type is None:
        assert decode.op_type == "Mul" and book.dtype == np.float32 and scale.shape == (6, 1, 1, 1)
        decoded = book[codes.astype(np.int64)] * scale  # Gather semantics: negative codes index from the end
    else:  # integer levels m = level * d read by a weight DequantizeLinear at scale alpha / d
        assert decode.op_type == "DequantizeLinear" and book.dtype == book_type and scale.shape == (6,)
        assert next(a.i for a in decode.attribute if a.name == "axis") == 0
        assert not consts[decode.input[2]].any()
        np.testing.assert_array_equal(book[:len(levels)], np.rint(levels * denominator))  # exact multiples
        if grid == "apot5s":
            assert book[:len(levels)].tolist() == APOT_B4
        np.testing.assert_array_equal(scale, (q.alpha.detach().double() / denominator).float().numpy())
        decoded = book[codes.astype(np.int64)].astype(np.float32) * scale.reshape(-1, 1, 1, 1)
    want = reference(conv.weight.detach(), q)
    if scheme == "pot":  # powers of two: m * (alpha / d) is level * alpha bit for bit
        np.testing.assert_array_equal(decoded, want)
    else:  # fl(m * fl(alpha / d)) against fl(fl(m / d) * alpha): within a float32 ulp or two
        np.testing.assert_allclose(decoded, want, rtol=2.5e-7, atol=0)
    assert np.all(np.abs(want) <= alpha * (1 + 1e-6))


POT_W = QuantSpec(scheme="pot", bits=4, granularity="channel")
APOT_A = QuantSpec(scheme="apot", bits=5, calibration="max")


@pytest.mark.parametrize("name,qconfig,first_last_bits", [
    ("cnn", qx.QConfig(POT_W.replace(weight_norm=True), APOT_A), None),  # the APoT paper's normalized weights
    ("mlp3d", qx.QConfig(POT_W, APOT_A), None),
    ("resnet10", qx.QConfig(POT_W, APOT_A), 8),  # PoT/APoT inside, uniform int8 first and last layers
])
def test_qat_models_with_pot_and_apot_verify(tmp_path, name, qconfig, first_last_bits):
    model, x = qat_model(name, qconfig, steps=1, first_last_bits=first_last_bits)
    proto = onnx.load(qx.export_onnx(model, x, tmp_path / "m.onnx"))  # verify=True, teacher-forced
    assert_qdq_structure(proto)
    onnx.checker.check_model(proto, full_check=True)
    layers = {n for n, m in model.named_modules() if isinstance(m, (qx.nn.QuantConv2d, qx.nn.QuantLinear))
              and m.weight_quantizer.spec.scheme == "pot"}
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    coded = {module_path(n): consts[n.input[0]] for n in proto.graph.node if n.op_type == "Cast"}  # before Gather
    assert layers and set(coded) == {f"{layer}.weight_quantizer" for layer in layers}
    for layer in layers:  # quantext's own codes (of the normalized weight with weight_norm)
        q = model.get_submodule(f"{layer}.weight_quantizer")
        want = qx.quantize(model.get_submodule(layer).weight.detach(), q.spec, alpha=q.alpha)
        np.testing.assert_array_equal(coded[f"{layer}.weight_quantizer"], want.numpy())
    uniform = any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert uniform == (first_last_bits is not None)


def test_uncalibrated_alpha_and_log_rounding_are_refused(tmp_path):
    qconfig = qx.QConfig(POT_W, QuantSpec(scheme="pot", bits=4, signed=False))
    model, x = qat_model("cnn", qconfig, steps=0, first_last_bits=None)
    model.get_submodule("3.conv.input_quantizer").alpha.zero_()
    with pytest.raises(ValueError, match=r"module '3\.conv\.input_quantizer': quantizer alpha = \[0\.0\] is not "
                                         r"positive"):
        qx.export_onnx(model, x, tmp_path / "m.onnx")
    q = qx.nn.Quantizer(QuantSpec(scheme="pot", bits=4, rounding="log")).set_qparams(alpha=torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"module 'q' \(Quantizer\): export of scheme='pot' with rounding='log' "
                                         r"is not supported"):
        qx.export_onnx(Only(q), torch.randn(8), tmp_path / "m.onnx")


@pytest.mark.parametrize("scheme,bits", [("pot", 5), ("apot", 5), ("apot", 6), ("apot", 8)])
def test_thresholds_decide_as_exact_midpoints(scheme, bits):
    levels = level_table(scheme, bits, True).astype(np.float32)  # 1/48, 1/12, 2/3, ...: midpoints round
    mid = [(Fraction(float(a)) + Fraction(float(b))) / 2 for a, b in zip(levels, levels[1:])]
    t = thresholds(levels)
    for v in np.concatenate([t, np.nextafter(t, np.float32(1)), np.nextafter(t, np.float32(0))]):
        assert (v > t).tolist() == [Fraction(float(v)) > m for m in mid]


def test_level_table():
    np.testing.assert_array_equal(level_table("pot", 4, True), ref.magnitude_tensor("pot", 3).numpy())
    np.testing.assert_array_equal(level_table("apot", 4, False), ref.magnitude_tensor("apot", 4).numpy())
    np.testing.assert_array_equal(level_table("apot", 5, True), ref.magnitude_tensor("apot", 4).numpy())


# A level-table op of the user's, taught to the exporter with register_levels_op.
torch.library.define("quantext_test::fake_quant_table",
                     "(Tensor x, Tensor alpha, float[] levels, bool signed) -> Tensor")


@torch.library.impl("quantext_test::fake_quant_table", "CompositeExplicitAutograd")
def _fake_quant_table(x, alpha, levels, signed):
    mags = torch.tensor(levels, dtype=torch.float64)
    v = x / alpha
    a = v.abs().clamp(max=1) if signed else v.clamp(0, 1)
    y = mags[(a.double().unsqueeze(-1) - mags).abs().argmin(-1)].float() * alpha  # first minimum: the smaller
    return y * torch.sign(v) if signed else y


torch.library.register_fake("quantext_test::fake_quant_table")(lambda x, alpha, levels, signed: torch.empty_like(x))
register_levels_op(torch.ops.quantext_test.fake_quant_table.default,
                   lambda a: LevelsArgs(a["x"], a["alpha"], a["levels"], a["signed"], None))


class TableQuant(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantext_test.fake_quant_table(x, torch.tensor(0.8), [0.0, 0.1, 0.35, 1.0], True)


def test_registered_levels_op(tmp_path):
    x = torch.randn(64, generator=torch.Generator().manual_seed(2))
    path = qx.export_onnx(TableQuant(), x, tmp_path / "t.onnx")  # verify=True
    np.testing.assert_array_equal(run(path, x), TableQuant()(x).numpy())
