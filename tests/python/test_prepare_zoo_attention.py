"""Transformers through prepare_qat and convert (issue 17, item 6): every
projection of nn.MultiheadAttention and of Swin's window attention is a
QuantLinear, models written with F.scaled_dot_product_attention quantize their
Linear layers, and ``convert`` equals the frozen QAT model for ViT and Swin-T."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantext as qx
from quantext.nn import QuantLinear, QuantMultiheadAttention, QuantShiftedWindowAttention

tvm = pytest.importorskip("torchvision.models")
from torchvision.models.swin_transformer import ShiftedWindowAttention  # noqa: E402

FLOAT = qx.QConfig(weight=None, activation=None)
W8A8 = qx.QConfig.uniform(bits=8)

MHA_CASES = [dict(batch_first=True), dict(), dict(kdim=12, vdim=20), dict(add_bias_kv=True, add_zero_attn=True),
             dict(bias=False, dropout=0.0)]


@pytest.mark.parametrize("options", MHA_CASES, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("call", ["plain", "padding", "mask_no_weights", "both_per_head"])
def test_quant_mha_computes_what_nn_multiheadattention_computes(options, call):
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(16, 4, **options).eval()
    ours = QuantMultiheadAttention.from_float(reference, FLOAT).eval()
    n, tgt, src = 3, 5, 7
    first = options.get("batch_first", False)

    def shaped(length, dim):
        return torch.randn((n, length, dim) if first else (length, n, dim))

    q, k, v = shaped(tgt, 16), shaped(src, options.get("kdim", 16)), shaped(src, options.get("vdim", 16))
    padding, mask = torch.rand(n, src) > 0.7, torch.randn(tgt, src)
    padding[:, 0] = False  # every query sees key 0 (a fully masked row is NaN in both)
    bool_mask = mask > 0.5
    bool_mask[:, 0] = False
    kwargs = {"plain": {}, "padding": {"key_padding_mask": padding},
              "mask_no_weights": {"attn_mask": mask, "need_weights": False},
              "both_per_head": {"attn_mask": bool_mask, "key_padding_mask": padding, "average_attn_weights": False}}[call]
    expected, got = reference(q, k, v, **kwargs), ours(q, k, v, **kwargs)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
    if expected[1] is None:
        assert got[1] is None
    else:
        torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-6)


def test_quant_mha_unbatched_input():
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(8, 2).eval()
    ours = QuantMultiheadAttention.from_float(reference, FLOAT).eval()
    x = torch.randn(5, 8)
    for a, b in zip(reference(x, x, x), ours(x, x, x)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shift, size", [([2, 2], (8, 8)), ([2, 2], (7, 9)), ([0, 2], (8, 8)), ([2, 2], (4, 8)),
                                         ([0, 0], (8, 8))])
def test_quant_window_attention_computes_what_torchvision_computes(shift, size):
    torch.manual_seed(0)
    reference = ShiftedWindowAttention(16, [4, 4], shift, 2).eval()
    nn.init.normal_(reference.relative_position_bias_table)
    ours = QuantShiftedWindowAttention.from_float(reference, FLOAT).eval()
    assert ours.state_dict().keys() - {"qkv.weight_quantizer", "proj.weight_quantizer"} >= reference.state_dict().keys()
    x = torch.randn(2, *size, 16)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)


class Encoder(nn.Module):
    """An nn.TransformerEncoder (2 layers, each 4 projections + 2 feed-forward Linear) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2)  # enable_nested_tensor=True: its fast path must stay off
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x), src_key_padding_mask=padding))


def _calibrated(model: nn.Module, x: torch.Tensor, *extra) -> nn.Module:
    prepared = qx.prepare_qat(model, W8A8, example_inputs=(x, *extra), first_last_bits=None)
    qx.calibrate(prepared, [(torch.randn_like(x), *extra) for _ in range(2)], progress=False)
    return prepared


def test_every_linear_of_a_transformer_encoder_is_quantized():
    torch.manual_seed(0)
    model = Encoder()
    linear_weights = 2 + sum(4 if isinstance(m, nn.MultiheadAttention) else 1 for m in model.encoder.modules()
                             if isinstance(m, nn.MultiheadAttention) or type(m) is nn.Linear)
    assert linear_weights == 2 + 2 * 6
    x = torch.randn(2, 6, 12)
    prepared = _calibrated(model, x)
    quantized = [n for n, m in prepared.named_modules() if isinstance(m, QuantLinear) and m.weight_quantizer]
    assert len(quantized) == linear_weights, quantized
    assert not any(type(m) in (nn.Linear, nn.MultiheadAttention) for m in prepared.modules())
    report = qx.coverage(prepared)
    assert report.in_float == {} and len(report.quantized) == linear_weights
    with torch.no_grad():  # eval without grad is where nn.TransformerEncoderLayer takes its fused float path
        prepared.eval()
        padding = torch.zeros(2, 6, dtype=torch.bool)
        padding[1, 4:] = True
        fast = prepared(x, padding)
    with torch.enable_grad():
        slow = prepared(x, padding)
    assert torch.equal(fast, slow)
    qx.disable_quant(prepared)
    with torch.no_grad():
        assert not torch.equal(prepared(x, padding), fast)  # the quantizers were really applied
        unquantized = prepared(x, padding)
    with torch.enable_grad():  # the float model's slow path (its nested-tensor path zeroes padded positions)
        torch.testing.assert_close(unquantized, model.eval()(x, padding), rtol=1e-5, atol=1e-5)


class TinyGPT(nn.Module):
    """Embedding, Linear projections, F.scaled_dot_product_attention, LayerNorm."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.lm_head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids)
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.lm_head(x)


def test_sdpa_model_quantizes_its_linear_layers_and_its_embedding():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 8))
    prepared = qx.prepare_qat(TinyGPT(), W8A8, example_inputs=(ids,), first_last_bits=None)
    report = qx.coverage(prepared)
    assert sorted(report.quantized) == ["fc1", "fc2", "lm_head", "proj", "qkv", "tok"]
    assert report.in_float == {}


def _frozen_qat(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The README's flow up to freeze_bn: prepare, calibrate, 2 SGD steps."""
    prepared = qx.prepare_qat(model, W8A8, example_inputs=(x,))
    qx.calibrate(prepared, [torch.randn_like(x) for _ in range(2)], progress=False)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
    prepared.train()
    for _ in range(2):
        opt.zero_grad()
        out = prepared(torch.randn_like(x))
        F.mse_loss(out, torch.randn_like(out)).backward()
        opt.step()
    return qx.freeze_bn(prepared)


def _with_head_weights(model: nn.Module) -> nn.Module:
    for m in model.modules():  # ViT's head starts at zero, which would hide any difference
        if isinstance(m, nn.Linear) and not m.weight.any():
            nn.init.normal_(m.weight, std=1 / math.sqrt(m.in_features))
    return model


@pytest.mark.parametrize("name", ["vit", pytest.param("swin_t", marks=pytest.mark.slow)])
def test_convert_equals_frozen_qat_model(name):
    torch.manual_seed(0)
    if name == "vit":
        model = tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                      mlp_dim=64, num_classes=10)
        expected_linear = 2 * 6 + 1  # q, k, v, out, mlp x2 per block; head
    else:
        model = tvm.swin_t(num_classes=10)
        expected_linear = 52  # with the patch-embedding conv, the "53 Linear layers"
    x = torch.randn(2, 3, 32, 32)
    prepared = _frozen_qat(_with_head_weights(model), x)
    report = qx.coverage(prepared)
    linear = [n for n in report.quantized if isinstance(prepared.get_submodule(n), QuantLinear)]
    assert len(linear) == expected_linear and len(report.quantized) == expected_linear + 1  # + the stem conv
    assert report.in_float == {}
    if name == "swin_t":
        assert sum(isinstance(m, QuantShiftedWindowAttention) for m in prepared.modules()) == 12
    converted = qx.convert(prepared)
    with torch.no_grad():
        expected = prepared.eval()(x)
        assert torch.equal(prepared(x), expected)  # eval is deterministic
        assert torch.equal(converted(x), expected)
