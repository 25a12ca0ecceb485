"""nn.Embedding tables under QAT (issue 19, item 2): QuantEmbedding against
ATen's fake quantization, a tied output head quantized once, the weight-only
per-group presets, and the export of a tied table as one set of integer codes."""

from __future__ import annotations

import collections
import os

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantext as qx
from quantext import QConfig, QuantSpec
from quantext.nn import QuantEmbedding


class TinyLM(nn.Module):
    """Embedding -> Linear -> GELU -> head, the head optionally tied to the table."""

    def __init__(self, vocab: int = 40, dim: int = 64, tied: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc(self.emb(ids))))


def ids(seed: int = 0, shape=(3, 9), vocab: int = 40) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def calibrated(model: nn.Module, qconfig: QConfig, **options) -> nn.Module:
    prepared = qx.prepare_qat(model, qconfig, example_inputs=(ids(),), **options)
    return qx.calibrate(prepared, [ids(1), ids(2)], progress=False)


def test_quant_embedding_is_a_lookup_of_the_aten_fake_quantized_table():
    torch.manual_seed(0)
    table = nn.Embedding(40, 16, padding_idx=3)
    q = QuantEmbedding.from_float(table, QConfig())
    qx.calibrate(q, [ids()], progress=False)
    assert q.weight is table.weight and q.input_quantizer is None
    p = q.weight_quantizer.qparams()
    qmin, qmax = q.weight_quantizer.bounds
    x = ids(5)
    w = table.weight.detach().clone().requires_grad_()
    ref_table = torch.fake_quantize_per_channel_affine(w, p["scale"], p["zero_point"], 0, qmin, qmax)
    expected = F.embedding(x, ref_table, padding_idx=3)
    got = q(x)
    assert torch.equal(got, expected)
    g = torch.randn_like(got)
    got.backward(g)
    expected.backward(g)
    assert torch.equal(table.weight.grad, w.grad)  # straight through, padding row without gradient
    assert not table.weight.grad[3].any()


@pytest.mark.parametrize("bad, message", [(dict(max_norm=1.0), "max_norm=1.0 renormalizes"),
                                          (dict(sparse=True), "sparse=True is not supported")])
def test_unsupported_embeddings_are_refused_or_left_in_float_with_the_reason(bad, message):
    with pytest.raises(ValueError, match=message):
        QuantEmbedding.from_float(nn.Embedding(10, 4, **bad), QConfig())
    model = TinyLM(tied=False)
    model.emb = nn.Embedding(40, 64, **bad)
    with pytest.warns(UserWarning, match="stay in float"):
        prepared = qx.prepare_qat(model, QConfig(), example_inputs=(ids(),), first_last_bits=None)
    assert type(prepared.emb) is nn.Embedding
    assert "max_norm or sparse=True" in qx.coverage(prepared).in_float["emb"]


def test_tied_head_is_quantized_once_and_the_state_round_trips():
    torch.manual_seed(0)
    prepared = calibrated(TinyLM(), QConfig.uniform(8))
    assert isinstance(prepared.emb, QuantEmbedding)
    assert prepared.emb.weight_quantizer is prepared.head.weight_quantizer
    assert qx.coverage(prepared).in_float == {}
    torch.manual_seed(1)
    other = qx.prepare_qat(TinyLM(), QConfig.uniform(8), example_inputs=(ids(),))
    other.load_state_dict(prepared.state_dict())
    assert other.emb.weight_quantizer is other.head.weight_quantizer
    prepared.eval()
    other.eval()
    x = ids(7)
    assert torch.equal(prepared(x), other(x))


def test_untied_layers_keep_their_own_quantizers():
    prepared = calibrated(TinyLM(tied=False), QConfig.uniform(8))
    assert prepared.emb.weight_quantizer is not prepared.head.weight_quantizer


@pytest.mark.parametrize("bits, group_size", [(4, 32), (2, 16), (8, 64)])
def test_weight_only_groups_along_the_input_dimension(bits, group_size):
    torch.manual_seed(0)
    qconfig = QConfig.weight_only(bits, group_size) if bits != 4 else QConfig.int4_weight_only(group_size)
    assert qconfig.activation is None
    assert qconfig.weight == QuantSpec(bits=bits, granularity="group", axis=1, group_size=group_size)
    prepared = calibrated(TinyLM(tied=False), qconfig, first_last_bits=None)
    for layer in (prepared.emb, prepared.fc, prepared.head):
        w = layer.weight.detach()
        p = layer.weight_quantizer.qparams()
        assert p["scale"].shape == (w.shape[0], w.shape[1] // group_size)
        qmin, qmax = layer.weight_quantizer.bounds
        # ATen per-channel over rows of one group each is per-group quantization
        rows = w.reshape(-1, group_size)
        ref = torch.fake_quantize_per_channel_affine(rows, p["scale"].reshape(-1), p["zero_point"].reshape(-1), 0,
                                                     qmin, qmax).reshape(w.shape)
        assert torch.equal(layer.weight_quantizer(w), ref)
    assert prepared.fc.input_quantizer is None


def test_weight_only_errors_name_the_argument_and_the_layer():
    with pytest.raises(ValueError, match=r"bits must be an int in \[2, 8\], got 9"):
        QConfig.weight_only(9)
    with pytest.raises(ValueError, match=r"layer 'emb' \(Embedding\): group_size=48 does not divide size 64"):
        qx.prepare_qat(TinyLM(), QConfig.int4_weight_only(48), example_inputs=(ids(),))


def test_tied_table_exports_as_one_set_of_integer_codes(tmp_path):
    torch.manual_seed(0)
    model = qx.convert(calibrated(TinyLM(), QConfig.uniform(8)))
    assert model.emb.weight_quantizer is model.head.weight_quantizer
    x = ids(3)
    path = qx.export_onnx(model, (x,), tmp_path / "lm.onnx", verify=True)
    graph = onnx.load(str(path)).graph
    tables = [i for i in graph.initializer if list(i.dims) == [40, 64]]
    assert len(tables) == 1 and tables[0].data_type == onnx.TensorProto.INT8
    users = collections.Counter(n.op_type for n in graph.node if tables[0].name in n.input)
    assert users == {"DequantizeLinear": 1}


def test_an_all_zero_padding_row_is_no_scale_floor_finding(recwarn):
    table = nn.Embedding(40, 8, padding_idx=0)
    q = QuantEmbedding.from_float(table, QConfig())
    qx.calibrate(q, [ids()], progress=False)
    assert q.weight_quantizer.findings.floored is None
    assert not [w for w in recwarn if "scale floor" in str(w.message)]
    with torch.no_grad():
        table.weight[1] = 1e-12  # a row that is tiny but not zero still is one
    qx.calibrate(q, [ids()], progress=False)
    assert q.weight_quantizer.findings.floored == pytest.approx(1e-12 / 127, rel=1e-3)


def test_int4_per_group_weights_export_packed_and_run_in_onnx_runtime(tmp_path):
    """Opset 21 blocked DequantizeLinear with int4 initializers: the file stores
    half a byte per weight, and ONNX Runtime agrees with PyTorch."""
    ort = pytest.importorskip("onnxruntime")
    sizes, weights = {}, 64 * 256 + 256 * 256 + 64 * 256
    for bits in (4, 8):
        torch.manual_seed(0)
        model = qx.convert(calibrated(TinyLM(vocab=64, dim=256, tied=False), QConfig.weight_only(bits, 32),
                                      first_last_bits=None))
        x = ids(3, vocab=64)
        path = qx.export_onnx(model, (x,), tmp_path / f"w{bits}.onnx", opset=21, verify=True)
        graph = onnx.load(str(path)).graph
        codes = [i for i in graph.initializer if "_codes_" in i.name]
        expected = onnx.TensorProto.INT4 if bits == 4 else onnx.TensorProto.INT8
        assert len(codes) == 3 and all(i.data_type == expected for i in codes)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-5, atol=1e-5)
        sizes[bits] = os.path.getsize(path)
    assert sizes[8] - sizes[4] >= 0.45 * weights  # half a byte saved per weight
