"""Export of dynamic activation quantizers (issue 19, item 4): scales computed in
the graph, QDQ (DynamicQuantizeLinear per tensor uint8, blocked QuantizeLinear
per token) verified teacher-forced in ONNX Runtime; ``integer_matmul=True``
runs the products as ONNX Runtime integer kernels; a GPT-style model with
int4 per-group weights and int8 per-token activations exports packed and
agrees with PyTorch on logits and argmax."""

from __future__ import annotations

import collections
import os

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantext as qx
from quantext import QConfig

pytest.importorskip("onnxruntime")


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class GPT(nn.Module):
    """Token and position embeddings, one pre-norm attention + MLP block, tied head."""

    def __init__(self, vocab: int = 96, dim: int = 64, heads: int = 4, context: int = 16) -> None:
        super().__init__()
        self.heads = heads
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.ln1, self.ln2, self.ln_f = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        h = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        q, k, v = self.qkv(self.ln1(h)).split(h.shape[-1], dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        h = h + self.proj(a)
        h = h + self.out(F.gelu(self.fc(self.ln2(h))))
        return self.head(self.ln_f(h))


def _converted(model: nn.Module, qconfig: QConfig, x: torch.Tensor, **options) -> nn.Module:
    torch.manual_seed(0)
    prepared = qx.prepare_qat(model, qconfig, example_inputs=(x,), **options)
    qx.calibrate(prepared, [(x,)], progress=False)
    return qx.convert(prepared)


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


PRESETS = {"per tensor uint8": QConfig.int8_dynamic(per_token=False, symmetric=False),
           "per tensor int8": QConfig.int8_dynamic(per_token=False),
           "per token int8": QConfig.int8_dynamic(),
           "per token uint8": QConfig.int8_dynamic(symmetric=False)}


@pytest.mark.parametrize("name", PRESETS)
def test_qdq_form_verifies_teacher_forced(name, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(6, 64) * 3
    model = _converted(MLP(), PRESETS[name], x)
    path = qx.export_onnx(model, (x,), tmp_path / "m.onnx", opset=21, verify=True)
    assert path.verification.quantizers == 4  # two activations, two weights compared as codes
    ops = _ops(path)
    if name == "per tensor uint8":
        assert ops["DynamicQuantizeLinear"] == 2
    else:
        assert ops["ReduceMax"] == 2 and ops["QuantizeLinear"] == 2 and "DynamicQuantizeLinear" not in ops
    blocked = [n for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"
               and any(a.name == "block_size" for a in n.attribute)]
    assert len(blocked) == (2 if name.startswith("per token") else 0)


def test_per_token_export_needs_opset_21(tmp_path):
    x = torch.randn(6, 64)
    with pytest.raises(ValueError, match="per-token dynamic quantization exports as blocked QuantizeLinear"):
        qx.export_onnx(_converted(MLP(), QConfig.int8_dynamic(), x), (x,), tmp_path / "m.onnx", opset=20)


@pytest.mark.parametrize("name", ["per tensor uint8", "per tensor int8", "per token int8"])
def test_integer_matmul_runs_on_integer_kernels(name, tmp_path):
    torch.manual_seed(1)
    x = torch.randn(2, 5, 64)
    model = _converted(MLP(), PRESETS[name], x)
    path = qx.export_onnx(model, (x,), tmp_path / "m.onnx", opset=21, verify=True, integer_matmul=True)
    assert _ops(path)["MatMulInteger"] == 2
    report = path.verification
    assert sum(report.int8_kernels.values()) == 2 and not report.float_kernels, report.summary()
    assert report.optimized_max_diff <= 1e-5 * max(report.output_range, 1.0)


def test_integer_matmul_keeps_qdq_where_it_has_no_integer_form(tmp_path):
    """Per-token asymmetric inputs (a zero point per row of a 3-D input) and
    per-group weights stay QDQ, and still verify."""
    x = torch.randn(2, 5, 64)
    for qconfig in (PRESETS["per token uint8"], QConfig.int8_dynamic_int4_weight(group_size=32)):
        model = _converted(MLP(), qconfig, x)
        path = qx.export_onnx(model, (x,), tmp_path / "m.onnx", opset=21, verify=True, integer_matmul=True)
        assert "MatMulInteger" not in _ops(path) and path.verification.quantizers == 4


def test_gpt_with_int4_weights_and_per_token_activations(tmp_path):
    """Logits and argmax agree with PyTorch; int4 initializers take half the bytes of int8."""
    ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
    sizes = {}
    for bits, qconfig in ((4, QConfig.int8_dynamic_int4_weight(group_size=32)),
                          (8, QConfig(weight=QConfig.weight_only(8, 32).weight,
                                      activation=QConfig.int8_dynamic().activation))):
        model = _converted(GPT(), qconfig, ids, first_last_bits=None)  # the tied table at 4 bits too
        path = qx.export_onnx(model, (ids,), tmp_path / f"gpt{bits}.onnx", opset=21, verify=True)
        report = path.verification
        assert report.top1 == 1.0 and report.max_diff <= 1e-4 * report.output_range, report.summary()
        codes = [i for i in onnx.load(str(path)).graph.initializer if "_codes_" in i.name]
        assert codes and all(i.data_type == (onnx.TensorProto.INT4 if bits == 4 else onnx.TensorProto.INT8)
                             for i in codes)
        sizes[bits] = os.path.getsize(path)
    weights = 96 * 64 + 64 * 192 + 64 * 64 + 64 * 256 + 256 * 64
    assert sizes[8] - sizes[4] >= 0.45 * weights
