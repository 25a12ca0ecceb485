"""The torchvision model zoo through quantext's whole flow, one row per model
and scheme: prepare_qat -> calibrate -> 2 SGD steps -> freeze_bn -> convert
-> export_onnx(verify=True) -> ONNX Runtime.

    .venv/bin/python scripts/model_zoo.py                 # every model and scheme -> docs/models.md
    .venv/bin/python scripts/model_zoo.py resnet18 vit    # some models, table printed only
    .venv/bin/python scripts/model_zoo.py --schemes w4a4  # some schemes

Models start from random initialization (BatchNorm statistics from one
train-mode pass over random data, as a trained float model has them), inputs
are small (batch 2, 32x32 or 64x64). A failure is recorded with its stage and
message and the run goes on. tests/python/test_model_zoo.py runs the same
flow and asserts on the rows.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torchvision
from torch import nn
from torchvision.models import detection, segmentation
from torchvision.models.maxvit import MaxVit
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

import quantext as qx

ROOT = pathlib.Path(__file__).resolve().parents[1]
BATCH = 2
SCHEMES: dict[str, Callable[[], qx.QConfig]] = {
    "w8a8-onnxruntime": lambda: qx.QConfig.uniform(8, backend="onnxruntime"),
    "w8a8-tensorrt": lambda: qx.QConfig.uniform(8, backend="tensorrt"),
    "w4a4": lambda: qx.QConfig.uniform(4, backend="tensorrt"),
}
# ONNX Runtime's kernels for a quantized Conv / Linear layer
INT8_LAYER_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger")


class TinyGPT(nn.Module):
    """A GPT-style decoder: token and learned positional embeddings, pre-norm
    blocks of causal ``scaled_dot_product_attention`` and an MLP, a tied-free
    LM head."""

    def __init__(self, vocab: int = 64, dim: int = 32, heads: int = 2, layers: int = 2, tokens: int = 16) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "ln1": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * dim), "proj": nn.Linear(dim, dim),
            "ln2": nn.LayerNorm(dim), "fc1": nn.Linear(dim, 4 * dim), "fc2": nn.Linear(4 * dim, dim),
        }) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos[: ids.shape[1]]
        b, t, d = x.shape
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + blk["proj"](a.transpose(1, 2).reshape(b, t, d))
            x = x + blk["fc2"](nn.functional.gelu(blk["fc1"](blk["ln2"](x))))
        return self.head(self.ln(x)).transpose(1, 2)  # [batch, vocab, tokens]: argmax over axis 1


class Features(nn.Module):
    """A detection backbone's feature maps (an ordered dict) as a tuple."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(x).values())


class Logits(nn.Module):
    """A segmentation model's ``out`` map."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


@dataclass(frozen=True)
class ZooModel:
    """A model of the zoo: its family, constructor and input."""

    family: str
    build: Callable[[], nn.Module]
    size: int = 32  # image side; 0 for token inputs
    fast: bool = False  # in the default (not slow) test subset

    def inputs(self, batch: int = BATCH) -> torch.Tensor:
        if self.size == 0:
            return torch.randint(0, 64, (batch, 16))
        return torch.randn(batch, 3, self.size, self.size)


tv = torchvision.models
MODELS: dict[str, ZooModel] = {
    "resnet18": ZooModel("ResNet", lambda: tv.resnet18(num_classes=10), fast=True),
    "resnext50_32x4d": ZooModel("ResNeXt/Wide", lambda: tv.resnext50_32x4d(num_classes=10)),
    "mobilenet_v2": ZooModel("MobileNetV2/V3", lambda: tv.mobilenet_v2(num_classes=10)),
    "mobilenet_v3_small": ZooModel("MobileNetV2/V3", lambda: tv.mobilenet_v3_small(num_classes=10), fast=True),
    # 64x64: at 32x32 their last feature maps are 1x1, and BatchNorm over 2 values per channel gives the
    # float model itself first-step gradients of 1e11
    "efficientnet_b0": ZooModel("EfficientNet/V2", lambda: tv.efficientnet_b0(num_classes=10), size=64),
    "efficientnet_v2_s": ZooModel("EfficientNet/V2", lambda: tv.efficientnet_v2_s(num_classes=10), size=64),
    "regnet_y_400mf": ZooModel("RegNet", lambda: tv.regnet_y_400mf(num_classes=10)),
    "shufflenet_v2_x0_5": ZooModel("ShuffleNetV2", lambda: tv.shufflenet_v2_x0_5(num_classes=10)),
    "mnasnet0_5": ZooModel("MNASNet", lambda: tv.mnasnet0_5(num_classes=10)),
    "squeezenet1_1": ZooModel("SqueezeNet", lambda: tv.squeezenet1_1(num_classes=10), size=64),
    "densenet121": ZooModel("DenseNet", lambda: tv.densenet121(num_classes=10)),
    "googlenet": ZooModel("GoogLeNet/Inception",
                          lambda: tv.googlenet(num_classes=10, aux_logits=False, init_weights=True)),
    "convnext_tiny": ZooModel("ConvNeXt", lambda: tv.convnext_tiny(num_classes=10)),
    # transformers at the torchvision classes' smallest sensible configurations
    "vit": ZooModel("ViT", lambda: VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                     hidden_dim=32, mlp_dim=64, num_classes=10), fast=True),
    "swin": ZooModel("Swin", lambda: SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2],
                                                     num_heads=[2, 4], window_size=[4, 4], num_classes=10),
                     size=64),
    "maxvit": ZooModel("MaxViT", lambda: MaxVit(input_size=(64, 64), stem_channels=16, partition_size=4,
                                                block_channels=[32, 64], block_layers=[1, 1], head_dim=8,
                                                stochastic_depth_prob=0.2, num_classes=10), size=64),
    "lraspp_mobilenet_v3_large": ZooModel(
        "segmentation", lambda: Logits(segmentation.lraspp_mobilenet_v3_large(num_classes=3, weights_backbone=None)),
        size=64),
    "resnet18_fpn": ZooModel("detection backbone", lambda: Features(detection.backbone_utils.resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, trainable_layers=5)), size=64),
    "tiny_gpt": ZooModel("GPT-style", TinyGPT, size=0, fast=True),
}


@dataclass
class Row:
    """The outcome of one model and scheme."""

    model: str
    scheme: str
    stage: str = "build"  # the stage reached: build, prepare, calibrate, train, eval, convert, export, verify, done
    error: str = ""
    layers: int = 0  # Conv/Linear layers (and MultiheadAttention input projections) in the float model
    quantized: int = 0  # of those with a weight quantizer after prepare_qat
    float_layers: list[str] = field(default_factory=list)  # the layers left in float
    convert_diff: float = math.nan  # max |convert - frozen QAT| over the example outputs
    output_range: float = math.nan
    max_diff: float = math.nan  # ONNX Runtime (no optimizations, free-running) vs PyTorch
    top1: float | None = None
    optimized_max_diff: float = math.nan  # ONNX Runtime with ORT_ENABLE_ALL vs PyTorch
    optimized_top1: float | None = None
    int8_kernels: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.stage == "done"


def _layers(model: nn.Module) -> list[str]:
    """Every Conv/Linear layer a deployment would quantize, plus the input
    projections of ``nn.MultiheadAttention`` (they are weights, not modules)."""
    found = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    return found + [f"{n}.in_proj" for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]


def _quantized(prepared: nn.Module) -> set[str]:
    """The modules of a prepared model that quantize their weight (a
    QuantMultiheadAttention's packed input projection as ``<name>.in_proj``, when
    its three QuantLinear projections are)."""
    out = set()
    for name, module in prepared.named_modules():
        q = getattr(module, "weight_quantizer", None)
        if isinstance(q, qx.nn.Quantizer) and getattr(q, "enabled", True):
            out.add(name)
    for name, module in prepared.named_modules():
        if isinstance(module, qx.nn.QuantMultiheadAttention) and all(
                f"{name}.{p}" in out for p in ("q_proj", "k_proj", "v_proj")):
            out.add(f"{name}.in_proj")
    return out


def _leaves(out) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@torch.no_grad()
def _bn_statistics(model: nn.Module, entry: ZooModel) -> None:
    """BatchNorm running statistics of the data (cumulative over one pass of 32
    images: with fewer, eval-mode activations of the deeper blocks drift far from
    the train-mode ones, 66x on RegNetY at batch 8, 2.7x at 32)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.momentum = None
    model.train()
    model(entry.inputs(32))
    for bn in bns:
        bn.momentum = 0.1


def _loss(out) -> torch.Tensor:
    return sum(nn.functional.mse_loss(t, torch.zeros_like(t) + 0.1) for t in _leaves(out))


def run(name: str, scheme: str, folder: str | pathlib.Path | None = None) -> Row:
    """One model through the flow; never raises for the model's failures."""
    entry, row, start = MODELS[name], Row(name, scheme), time.perf_counter()
    torch.manual_seed(0)
    try:
        with tempfile.TemporaryDirectory(prefix="qx_zoo_") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = entry.build()
            _bn_statistics(model, entry)
            model.eval()
            x = entry.inputs()
            layers = _layers(model)
            row.layers = len(layers)
            row.stage = "prepare"
            prepared = qx.prepare_qat(model, SCHEMES[scheme](), example_inputs=(x,))
            quantized = _quantized(prepared)
            # (a fused Conv-BN module may take the name of the conv or of its parent)
            row.float_layers = [n for n in layers if not any(q == n or q.startswith(n + ".") or n.startswith(q + ".")
                                                             for q in quantized)]
            row.quantized = row.layers - len(row.float_layers)
            row.stage = "calibrate"
            qx.calibrate(prepared, [entry.inputs() for _ in range(2)], progress=False)
            row.stage = "train"
            opt = torch.optim.SGD(prepared.parameters(), lr=0.01, momentum=0.9)
            prepared.train()
            for _ in range(2):
                opt.zero_grad()
                loss = _loss(prepared(entry.inputs()))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss.item()}")
                loss.backward()
                opt.step()
            bad = [n for n, p in prepared.named_parameters() if not torch.isfinite(p).all()]
            if bad:
                raise FloatingPointError(f"{len(bad)} parameters not finite after 2 SGD steps, e.g. {bad[0]}")
            qx.freeze_bn(prepared)
            prepared.eval()
            row.stage = "eval"
            with torch.no_grad():
                frozen = _leaves(prepared(x))
                if not all(torch.equal(a, b) for a, b in zip(frozen, _leaves(prepared(x)))):
                    raise AssertionError("two eval-mode runs of the frozen QAT model differ (a module stuck in "
                                         "training behaviour: dropout, stochastic depth)")
            row.stage = "convert"
            with torch.no_grad():
                converted = qx.convert(prepared)
                converted.eval()
                folded = _leaves(converted(x))
            row.output_range = max(float(t.abs().max()) for t in frozen)
            row.convert_diff = max(float((a - b).abs().max()) for a, b in zip(frozen, folded))
            if not math.isfinite(row.convert_diff) or row.convert_diff > 1e-4 * max(row.output_range, 1.0):
                raise AssertionError(f"convert changes the output: max difference {row.convert_diff:.3g} against "
                                     f"the frozen QAT model (outputs up to {row.output_range:.3g})")
            row.stage = "export"
            path = pathlib.Path(folder or tmp) / f"{name}-{scheme}.onnx"
            try:
                report = qx.export_onnx(converted, (x,), path, verify=True).verification
            except qx.export.VerificationError:
                row.stage = "verify"
                raise
            row.max_diff, row.top1 = report.max_diff, report.top1
            row.optimized_max_diff, row.optimized_top1 = report.optimized_max_diff, report.optimized_top1
            row.int8_kernels = report.int8_kernels
            row.stage = "done"
    except Exception as err:  # recorded, not raised: one model's failure must not stop the zoo
        row.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:400]
        row.error_trace = traceback.format_exc(limit=-3)  # type: ignore[attr-defined]
    row.seconds = time.perf_counter() - start
    return row


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


HEADER = ("| model | family | scheme | Conv/Linear quantized | convert = frozen QAT | export verified | "
          "output range | ORT top-1 / max diff (no opt.) | ORT top-1 / max diff (all opt.) | int8 kernels (all opt.) | "
          "status |\n|---|---|---|---|---|---|---|---|---|---|---|")


def markdown_row(row: Row) -> str:
    kernels = ", ".join(f"{k} {v}" for k, v in sorted(row.int8_kernels.items())) or ("none" if row.ok else "-")
    convert = "-" if math.isnan(row.convert_diff) else ("yes" if row.stage not in ("convert",) else "no") + \
        f" ({row.convert_diff:.2g})"
    verified = "yes" if row.ok else ("no" if row.stage == "verify" else "-")
    status = "ok" if row.ok else f"fails at {row.stage}: {row.error}".replace("|", "\\|")
    skipped = f" (float: {', '.join(row.float_layers[:4])}{', ...' if len(row.float_layers) > 4 else ''})" \
        if row.float_layers else ""
    return (f"| {row.model} | {MODELS[row.model].family} | {row.scheme} | {row.quantized}/{row.layers}{skipped} | "
            f"{convert} | {verified} | {_fmt(row.output_range)} | {_fmt(row.top1, '.0%')} / {_fmt(row.max_diff)} | "
            f"{_fmt(row.optimized_top1, '.0%')} / {_fmt(row.optimized_max_diff)} | {kernels} | {status} |")


DOC = """# Models: the torchvision zoo through quantext

Generated by `scripts/model_zoo.py` (do not edit by hand; rerun it). Each row:
random initialization (BatchNorm statistics from one train-mode pass over
32 random images), batch 2, 32x32 images (64x64 for EfficientNet, SqueezeNet,
Swin, MaxViT, LR-ASPP and the FPN backbone; 16 tokens for the GPT-style model),
`qx.prepare_qat` -> `qx.calibrate` (2 batches) -> 2 SGD steps -> `qx.freeze_bn`
-> two eval-mode runs, equal bit for bit -> `qx.convert` ->
`qx.export_onnx(verify=True)`. Schemes: `w8a8-onnxruntime`
= `QConfig.uniform(8, backend="onnxruntime")`, `w8a8-tensorrt` =
`QConfig.uniform(8)`, `w4a4` = `QConfig.uniform(4)` (first and last layer at 8
bits, prepare_qat's default).

Columns: Conv/Linear layers with a weight quantizer against all of them in the
float model (MultiheadAttention input projections count as one; the float ones
are named); the largest difference between the converted and the frozen QAT
model; whether verification passed (teacher-forced, integer codes at every
quantizer, docs/export.md); free-running ONNX Runtime against PyTorch with graph
optimizations off and with `ORT_ENABLE_ALL` (top-1 agreement over axis 1 and the
largest output difference, to read against the output range); ONNX Runtime's integer
kernels in its optimized graph; the stage a failure happened at and its message.
Random models have near-tied logits, so one flipped top-1 of two rows (50%) is
a small difference; read the max diff with it. Free-running differences add up
one-step flips at rounding boundaries (ONNX Runtime sums in another order) and
grow with the quantized model's sensitivity, not with an export error (every
quantizer verified teacher-forced): the randomly initialized EfficientNets are
the extreme, their W8A8 outputs move by 3.2 of 10.2 in PyTorch alone for a 1e-6
relative perturbation of the input (`scripts/zoo_sensitivity.py efficientnet_b0
w8a8-tensorrt`; ResNet-18: 0.034 of 3.2).

Run on {machine}; torch {torch}, torchvision {torchvision}, onnxruntime {ort}.

{header}
{rows}
"""


def _write(output: str, rows: list[Row], done: bool) -> None:
    import platform

    import onnxruntime
    text = DOC.format(machine=f"{platform.machine()} CPU ({torch.get_num_threads()} threads)",
                      torch=torch.__version__, torchvision=torchvision.__version__, ort=onnxruntime.__version__,
                      header=HEADER, rows="\n".join(markdown_row(r) for r in rows))
    if not done:
        text += "\n(partial: the run was stopped before every model and scheme had run)\n"
    pathlib.Path(output).write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help=f"models (default: all): {', '.join(MODELS)}")
    parser.add_argument("--schemes", nargs="*", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--output", default=None, help="markdown file (default: docs/models.md for a full run)")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    models = args.models or list(MODELS)
    output = args.output or (None if args.models else str(ROOT / "docs" / "models.md"))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for name in models:
        for scheme in args.schemes:
            row = run(name, scheme)
            rows.append(row)
            print(markdown_row(row), f"[{row.seconds:.0f} s]", flush=True)
            if output:  # after every row: a long run that is stopped still leaves its table
                _write(output, rows, done=len(rows) == len(models) * len(args.schemes))
    if output:
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
