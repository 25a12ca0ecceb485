"""Transformer graphs through prepare_qat (issue 19, item 3): Hugging Face GPT-2
(whose projections are transformers' Conv1D, a transposed Linear), Llama and
BERT built from small configs with random weights, and nn.Transformer /
nn.TransformerDecoder. Every Linear layer is quantized, counted against the
float model; norms, activations, softmax, attention matmuls and residual adds
stay float; a training step, eval() turning dropout off, convert, and the ONNX
export verified in ONNX Runtime."""

from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import quantext as qx
from quantext.nn import QuantEmbedding, QuantLinear, QuantMultiheadAttention, Quantizer, QuantTransposedLinear

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

VOCAB, SEQ, LAYERS = 120, 8, 2
W8A8 = qx.QConfig.uniform(bits=8)


def gpt2(dropout: float = 0.0) -> nn.Module:
    config = transformers.GPT2Config(n_layer=LAYERS, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=32,
                                     resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, use_cache=False,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def llama(dropout: float = 0.0) -> nn.Module:
    config = transformers.LlamaConfig(num_hidden_layers=LAYERS, hidden_size=32, intermediate_size=64,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                                      max_position_embeddings=32, attention_dropout=dropout, use_cache=False)
    return transformers.LlamaForCausalLM(config)


def bert(dropout: float = 0.0) -> nn.Module:
    config = transformers.BertConfig(num_hidden_layers=LAYERS, hidden_size=32, intermediate_size=64,
                                     num_attention_heads=4, vocab_size=VOCAB, max_position_embeddings=32, num_labels=3,
                                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return transformers.BertForSequenceClassification(config)


# The Linear-like layers each architecture is known to have, to hold the count taken from the model against.
HF_MODELS = {"gpt2": (gpt2, 4 * LAYERS + 1), "llama": (llama, 7 * LAYERS + 1), "bert": (bert, 6 * LAYERS + 2)}


def ids(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def labels_for(model: nn.Module, seed: int) -> torch.Tensor:
    if isinstance(model.config, transformers.BertConfig):
        return torch.randint(0, 3, (2,), generator=torch.Generator().manual_seed(seed))
    return ids(seed)  # a causal LM shifts its labels itself


def linear_layers(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if type(m) in (nn.Linear, Conv1D)}


@functools.cache
def _prepared_hf(name: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = HF_MODELS[name][0](0.2)  # dropout everywhere: eval() must turn it off
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: HF models take the module walk on purpose
        prepared = qx.prepare_qat(model, W8A8, example_inputs=(ids(0),))
    qx.calibrate(prepared, [{"input_ids": ids(i)} for i in (1, 2)], progress=False)
    return model, prepared


def prepared_hf(name: str) -> tuple[nn.Module, nn.Module]:
    """(float model, prepared and calibrated copy), in training mode, a fresh copy for each test."""
    return copy.deepcopy(_prepared_hf(name))


def test_transposed_linear_quantizes_per_output_feature_like_the_linear_of_its_transpose():
    torch.manual_seed(0)
    conv = Conv1D(24, 16)  # nf=24 outputs, nx=16 inputs: weight [16, 24]
    nn.init.normal_(conv.bias)
    x = torch.randn(3, 5, 16)
    for qconfig in (W8A8, qx.QConfig.uniform(4), qx.QConfig.weight_only(4, 8)):
        ours = QuantTransposedLinear.from_float(conv, qconfig)
        assert ours.weight is conv.weight and ours.bias is conv.bias
        linear = nn.Linear(16, 24)
        linear.weight, linear.bias = nn.Parameter(conv.weight.detach().t().contiguous()), conv.bias
        reference = QuantLinear.from_float(linear, qconfig)
        for layer in (ours, reference):
            qx.calibrate(layer, [x], progress=False)
        w = ours.weight_quantizer(ours.weight)
        assert torch.equal(w, reference.weight_quantizer(reference.weight).t())
        if qconfig.weight.granularity == "channel":  # one scale per output feature, axis 1 of [in, out]
            p = ours.weight_quantizer.qparams()
            assert p["scale"].shape == (24,)
            qmin, qmax = ours.weight_quantizer.bounds
            aten = torch.fake_quantize_per_channel_affine(conv.weight, p["scale"], p["zero_point"], 1, qmin, qmax)
            assert torch.equal(w, aten)
        else:  # per group along the input dimension: axis 0 of [in, out]
            assert ours.weight_quantizer.qparams()["scale"].shape == (16 // 8, 24)
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)
    qx.disable_quant(ours)
    assert torch.equal(ours(x), conv(x))  # the same addmm as Hugging Face's layer


@pytest.mark.parametrize("name", HF_MODELS)
def test_every_linear_of_a_hugging_face_model_is_quantized_and_nothing_else(name):
    model, prepared = prepared_hf(name)
    assert type(prepared) is type(model)  # prepared in place of its modules: generate() etc. are kept
    linears = linear_layers(model)
    assert len(linears) == HF_MODELS[name][1]
    embeddings = {n for n, m in model.named_modules() if type(m) is nn.Embedding}
    quantized = {n for n, m in prepared.named_modules()
                 if isinstance(m, (QuantLinear, QuantTransposedLinear)) and m.weight_quantizer is not None}
    assert quantized == linears
    conv1d = {n for n, m in model.named_modules() if type(m) is Conv1D}
    assert {n for n, m in prepared.named_modules() if isinstance(m, QuantTransposedLinear)} == conv1d
    assert (len(conv1d) == 4 * LAYERS) == (name == "gpt2")
    report = qx.coverage(prepared)
    assert set(report.quantized) == linears | embeddings and report.in_float == {}
    # Only layers hold quantizers (none on norms, activations, softmax, residual adds): a weight and an
    # input quantizer per Linear, a weight quantizer per table, one fewer for a head tied to its table.
    head = model.get_output_embeddings()  # None for BERT's classifier
    tied = int(head is not None and head.weight is model.get_input_embeddings().weight)
    assert tied == (name == "gpt2")
    owners = {n.rpartition(".")[0] for n, m in prepared.named_modules() if isinstance(m, Quantizer)}
    assert all(isinstance(prepared.get_submodule(o), (QuantLinear, QuantTransposedLinear, QuantEmbedding))
               for o in owners)
    assert sum(isinstance(m, Quantizer) for m in prepared.modules()) == 2 * len(linears) + len(embeddings) - tied
    float_types = {n: type(m) for n, m in model.named_modules() if n not in linears | embeddings}
    assert {n: type(m) for n, m in prepared.named_modules() if n in float_types} == float_types  # norms kept
    model.eval()
    prepared.eval()
    x = ids(3)
    with torch.no_grad():
        expected = model(x).logits
        quant = prepared(x).logits
        qx.disable_quant(prepared)
        assert torch.equal(prepared(x).logits, expected)  # the quantizers are all that changed
        assert not torch.equal(quant, expected)
        assert (quant - expected).abs().max() < 0.1 * expected.abs().max()  # 8 bits: close to float


@pytest.mark.parametrize("name", HF_MODELS)
def test_hugging_face_model_trains_and_evaluates_without_dropout(name, tmp_path):
    model, prepared = prepared_hf(name)
    prepared.train()
    x, y = ids(4), labels_for(model, 4)
    opt = torch.optim.Adam(prepared.parameters(), lr=1e-2)
    losses = []
    for step in range(4):
        opt.zero_grad()
        loss = prepared(input_ids=x, labels=y).loss
        loss.backward()
        losses.append(loss.item())
        if step == 0:  # the straight-through gradient reaches every quantized weight
            for n, m in prepared.named_modules():
                if isinstance(m, (QuantLinear, QuantTransposedLinear)):
                    assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, n
        opt.step()
    assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
    with torch.no_grad():
        assert not torch.equal(prepared(x).logits, prepared(x).logits)  # dropout on in training
        prepared.eval()
        expected = prepared(x).logits
        assert torch.equal(prepared(x).logits, expected)  # and off after eval()
        converted = qx.convert(prepared)
        assert torch.equal(converted(x).logits, expected)
    assert qx.coverage(converted).quantized == qx.coverage(prepared).quantized
    # save_pretrained cannot store the quantizers' specs (non-tensor extra state); a quantext checkpoint can.
    qx.save_checkpoint(tmp_path / "qat.pt", prepared)
    _, untrained = prepared_hf(name)
    qx.load_checkpoint(tmp_path / "qat.pt", untrained, restore_rng=False)
    with torch.no_grad():
        assert torch.equal(untrained.eval()(x).logits, expected)


@pytest.mark.parametrize("name", HF_MODELS)
def test_hugging_face_model_exports_and_runs_in_onnx_runtime(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, prepared = prepared_hf(name)
    converted = qx.convert(prepared)
    path = qx.export_onnx(converted, (ids(5),), tmp_path / f"{name}.onnx", verify=True)
    linears, embeddings = len(linear_layers(model)), sum(type(m) is nn.Embedding for m in model.modules())
    # Teacher-forced verification compared every quantizer call: each Linear's input and weight, each table.
    assert path.verification.quantizers == 2 * linears + embeddings
    graph = onnx.load(str(path)).graph
    weights = {id(m.weight) for m in converted.modules() if isinstance(m, (QuantLinear, QuantTransposedLinear,
                                                                           QuantEmbedding))}
    codes = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(codes) == len(weights)  # int8 codes for every weight, a tied table stored once
    x = ids(6)
    assert qx.export.verify_onnx(path, converted, (x,)).quantizers == 2 * linears + embeddings  # other tokens
    # What users run: every ONNX Runtime optimization on (int8 kernels, their own requantization).
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        expected = converted(x).logits
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9


def test_gpt2_first_and_last_layer_rule_and_tied_head_at_4_bits():
    torch.manual_seed(0)
    prepared = qx.prepare_qat(gpt2(), qx.QConfig.uniform(4, act_bits=8))
    wte, head = prepared.transformer.wte, prepared.lm_head
    assert head.weight is wte.weight and head.weight_quantizer is wte.weight_quantizer  # quantized once
    assert wte.weight_quantizer.spec.bits == 8 and head.input_quantizer.spec.bits == 8  # first_last_bits=8
    c_attn = prepared.transformer.h[0].attn.c_attn
    assert c_attn.weight.shape == (32, 96) and c_attn.weight_quantizer.spec.bits == 4
    assert c_attn.weight_quantizer.spec.axis == 1 and c_attn.weight_quantizer.scale.shape == (96,)


def test_a_hugging_face_model_inside_a_traced_model_is_prepared_by_the_module_walk(recwarn):
    torch.manual_seed(0)

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = gpt2()
            self.head = nn.Linear(VOCAB, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lm(x).logits)

    model = Wrapper()
    prepared = qx.prepare_qat(model, W8A8, example_inputs=(ids(0),), first_last_bits=None)
    assert not [w for w in recwarn if "prepare_qat" in str(w.message)]
    assert set(qx.coverage(prepared).quantized) == {f"lm.{n}" for n in linear_layers(model.lm)} | {
        "head", "lm.transformer.wte", "lm.transformer.wpe"}
    skipped = qx.prepare_qat(model, W8A8, example_inputs=(ids(0),), skip="lm.lm_head")
    assert type(skipped.lm.lm_head) is nn.Linear and qx.coverage(skipped).in_float == {"lm.lm_head": "in `skip`"}


class Seq2Seq(nn.Module):
    """nn.Transformer (encoder and decoder, packed in-projections) between two Linear embeddings and a head."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.src, self.tgt = nn.Linear(12, 32), nn.Linear(12, 32)
        self.transformer = nn.Transformer(32, 4, LAYERS, LAYERS, 64, dropout=dropout, batch_first=True)
        self.head = nn.Linear(32, 5)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.head(self.transformer(self.src(src), self.tgt(tgt), tgt_mask=mask, tgt_is_causal=True))


class Decoder(nn.Module):
    """Embedding -> nn.TransformerDecoder (causal self-attention, cross-attention to a memory) -> head."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        layer = nn.TransformerDecoderLayer(32, 4, 64, dropout=dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, LAYERS)
        self.head = nn.Linear(32, VOCAB)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.head(self.decoder(self.embed(x), memory, tgt_mask=mask, tgt_is_causal=True))


def torch_inputs(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if isinstance(model, Seq2Seq):
        return {"src": torch.randn(2, 7, 12, generator=g), "tgt": torch.randn(2, 5, 12, generator=g)}
    return {"x": torch.randint(0, VOCAB, (2, 5), generator=g), "memory": torch.randn(2, 7, 32, generator=g)}


@pytest.mark.parametrize("cls, outside, per_layer", [(Seq2Seq, 3, 6 + 10), (Decoder, 1, 10)])
def test_every_projection_of_torch_encoder_and_decoder_layers_is_quantized(cls, outside, per_layer):
    torch.manual_seed(0)
    model = cls(dropout=0.2)
    # An nn.MultiheadAttention holds 4 projections (its packed in-projection is 3 of them).
    expected = sum(4 if isinstance(m, nn.MultiheadAttention) else 1 for m in model.modules()
                   if isinstance(m, nn.MultiheadAttention) or type(m) is nn.Linear)
    assert expected == outside + LAYERS * per_layer
    inputs = torch_inputs(model, 0)
    prepared = qx.prepare_qat(model, W8A8, example_inputs=tuple(inputs.values()))
    qx.calibrate(prepared, [torch_inputs(model, i) for i in (1, 2)], progress=False)
    linear = [n for n, m in prepared.named_modules() if isinstance(m, QuantLinear) and m.weight_quantizer]
    assert len(linear) == expected
    assert sum(isinstance(m, QuantMultiheadAttention) for m in prepared.modules()) == \
        sum(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert qx.coverage(prepared).in_float == {}
    x = torch_inputs(model, 3)
    assert not torch.equal(prepared(**x), prepared(**x))  # dropout on in training
    prepared.eval()
    with torch.no_grad():
        out = prepared(**x)
        assert torch.equal(prepared(**x), out)  # and off after eval()
        assert torch.equal(qx.convert(prepared)(**x), out)
        qx.disable_quant(prepared)
        unquantized = prepared(**x)
    with torch.enable_grad():  # the float encoder's slow path (its fused eval path is another kernel)
        torch.testing.assert_close(unquantized, model.eval()(**x), rtol=1e-5, atol=1e-5)


def test_torch_decoder_exports_and_runs_in_onnx_runtime(tmp_path):
    torch.manual_seed(0)
    model = Decoder()
    inputs = torch_inputs(model, 0)
    prepared = qx.prepare_qat(model, W8A8, example_inputs=tuple(inputs.values()))
    qx.calibrate(prepared, [torch_inputs(model, i) for i in (1, 2)], progress=False)
    path = qx.export_onnx(qx.convert(prepared), tuple(inputs.values()), tmp_path / "decoder.onnx", verify=True)
    linears = LAYERS * 10 + 1
    assert path.verification.quantizers == 2 * linears + 1
