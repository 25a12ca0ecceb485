"""A byte-level causal language model on the Python standard library's own
source, trained in float and then quantized: PTQ and QAT perplexity on held-out
files for weight-only, W8A8 and W4A8 configurations, over several seeds.

The corpus ships with every Python installation (no download): the top-level
``*.py`` modules of ``sysconfig.get_paths()["stdlib"]``, sorted by name, every
``HELDOUT_EVERY``-th file held out. The same Python version gives the same
corpus (its SHA-256 is printed and written with the table).

Per seed (the initialization and the order of the training windows):

1. train a small GPT (``nn.Embedding`` with a tied output head, ``nn.Linear``,
   ``LayerNorm``, ``F.scaled_dot_product_attention``) in float;
2. for every configuration: ``qx.prepare_qat`` (every layer, the tied table and
   head included) and ``qx.calibrate`` on a few training batches: the PTQ
   perplexity; then QAT, fine-tuning at a lower learning rate: the QAT
   perplexity.

    python examples/text_lm.py [--seeds 3] [--steps 200] [--threads 1] [--out docs/text_lm.md] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import math
import os
import platform
import statistics
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import quantext as qx

HELDOUT_EVERY = 10  # files 5, 15, 25, ... of the sorted list are held out
VOCAB = 256  # bytes
TARGET = ("W4A8", 0.03)  # issue 19: W4A8 QAT within 3% of the float perplexity


# ----------------------------------------------------------------------------- corpus
@dataclass(frozen=True)
class Corpus:
    """Training and held-out bytes (each a uint8 tensor, the files concatenated)."""

    train: torch.Tensor
    heldout: torch.Tensor
    train_files: int
    heldout_files: int
    sha256: str
    root: str


def stdlib_files(root: str) -> list[Path]:
    """The top-level ``*.py`` modules of the standard library, sorted. The
    ``_sysconfigdata_*`` module is left out: it records how this interpreter
    was built, so it differs between machines with the same Python version."""
    return sorted(p for p in Path(root).glob("*.py") if not p.name.startswith("_sysconfigdata"))


def load_corpus(root: str | None = None) -> Corpus:
    """The corpus from ``root`` (default: the running interpreter's standard library)."""
    root = root or sysconfig.get_paths()["stdlib"]
    files = stdlib_files(root)
    if len(files) < 2 * HELDOUT_EVERY:
        raise RuntimeError(f"found only {len(files)} .py files in {root}: not a standard library directory")
    parts: dict[bool, list[bytes]] = {True: [], False: []}
    digest = hashlib.sha256()
    for i, path in enumerate(files):
        data = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + data)
        parts[i % HELDOUT_EVERY == HELDOUT_EVERY // 2].append(data)

    def tensor(chunks: list[bytes]) -> torch.Tensor:
        return torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8).clone()

    return Corpus(tensor(parts[False]), tensor(parts[True]), len(parts[False]), len(parts[True]),
                  digest.hexdigest(), root)


# ----------------------------------------------------------------------------- model
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: one packed query/key/value projection,
    the core in ``F.scaled_dot_product_attention`` (which stays in float under
    ``prepare_qat``: docs/attention.md), an output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention and a GELU MLP, each in a residual branch."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ByteGPT(nn.Module):
    """GPT over bytes: token and learned position tables, ``layers`` blocks, a
    final LayerNorm and a head tied to the token table."""

    def __init__(self, dim: int, layers: int, heads: int, context: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, VOCAB, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:  # GPT-2's initialization; residual outputs scaled down with depth
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.tok(ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# ----------------------------------------------------------------------------- recipe
@dataclass(frozen=True)
class Recipe:
    """Model sizes and training settings shared by every row."""

    dim: int = 128
    layers: int = 2
    heads: int = 4
    context: int = 64
    batch: int = 32
    float_steps: int = 2000
    float_lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    qat_steps: int = 200  # at 4 bits and more; LOW_BIT_STEPS multiplies it below
    qat_lr: float = 3e-4
    quant_lr: float = 1e-2  # learned scales, relative to their size (see optimizer())
    calibration_batches: int = 4
    eval_tokens: int = 65536  # held-out bytes scored (windows of `context`)


QUICK = Recipe(dim=128, layers=1, heads=4, context=32, batch=16, float_steps=300, warmup=10, qat_steps=20,
               eval_tokens=8192, calibration_batches=2)
LOW_BIT_STEPS = {3: 2, 2: 4}  # QAT steps are multiplied by this at these weight bit widths


# ----------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class Config:
    """One row of the table: ``make()`` gives its QConfig (``None``: float);
    ``lsq``: QAT learns the scales (LSQ) instead of keeping the calibrated ones."""

    label: str
    weights: str
    activations: str
    make: Callable[[], qx.QConfig | None]
    lsq: bool = False
    weight_bits: int = 32

    def qconfig(self, learnable: bool) -> qx.QConfig | None:
        """The QConfig, its scales learnable (weights and static activations) when asked."""
        qconfig = self.make()
        if qconfig is None or not learnable:
            return qconfig

        def learned(spec: qx.QuantSpec | None) -> qx.QuantSpec | None:
            dynamic = getattr(spec, "dynamic", False)  # a per-token scale is computed, not learned
            return spec if spec is None or dynamic else spec.replace(learnable=True)

        return dataclasses.replace(qconfig, weight=learned(qconfig.weight), activation=learned(qconfig.activation))


def static_int8() -> qx.QuantSpec:
    """Per-tensor signed symmetric int8 activations, range from the calibration MSE."""
    return qx.QConfig.uniform(8).activation


def configs() -> list[Config]:
    """The table's rows. The per-token dynamic activation rows appear when the
    library has the presets (``QConfig.int8_dynamic``,
    ``QConfig.int8_dynamic_int4_weight``); until then W4A8 is the static
    per-tensor form only."""
    QC = qx.QConfig
    rows = [Config("float", "float", "float", lambda: None),
            Config("W8A8", "int8 per channel", "int8 per tensor, static", lambda: QC.uniform(8), weight_bits=8)]
    if hasattr(QC, "int8_dynamic"):
        rows.append(Config("W8A8-dyn", "int8 per channel", "int8 per token, dynamic", lambda: QC.int8_dynamic(),
                           weight_bits=8))
    rows.append(Config("W4A8", "int4 per group 32", "int8 per tensor, static",
                       lambda: QC(weight=QC.weight_only(4, 32).weight, activation=static_int8()), weight_bits=4))
    if hasattr(QC, "int8_dynamic_int4_weight"):
        rows.append(Config("W4A8-dyn", "int4 per group 32", "int8 per token, dynamic",
                           lambda: QC.int8_dynamic_int4_weight(group_size=32), weight_bits=4))
    rows += [Config("W4 g32", "int4 per group 32", "float", lambda: QC.weight_only(4, 32), weight_bits=4),
             Config("W4 g128", "int4 per group 128", "float", lambda: QC.weight_only(4, 128), weight_bits=4),
             Config("W3 g32", "int3 per group 32", "float", lambda: QC.weight_only(3, 32), lsq=True, weight_bits=3),
             Config("W2 g32", "int2 per group 32", "float", lambda: QC.weight_only(2, 32), lsq=True, weight_bits=2)]
    return rows


FP_LABELS = ("FP8", "MXFP8", "MXFP4-A8", "NVFP4")


def fp_configs() -> list[Config]:
    """The floating-point formats' rows (``--rows fp``; docs/fp.md): FP8 E4M3
    with float32 scales (per output channel for weights, per tensor for
    activations, calibrated), and the block-scaled MXFP8, MXFP4 (with MXFP8
    activations) and NVFP4, whose scales come from each block."""
    QC, fp = qx.QConfig, qx.spec.fp_spec
    return [Config("float", "float", "float", lambda: None),
            Config("FP8", "E4M3 per channel", "E4M3 per tensor, static",
                   lambda: QC(weight=fp("e4m3", granularity="channel", axis=0), activation=fp("e4m3")), weight_bits=8),
            Config("MXFP8", "MXFP8 (E4M3, blocks of 32)", "MXFP8",
                   lambda: QC(weight=fp("mxfp8"), activation=fp("mxfp8")), weight_bits=8),
            Config("MXFP4-A8", "MXFP4 (E2M1, blocks of 32)", "MXFP8",
                   lambda: QC(weight=fp("mxfp4"), activation=fp("mxfp8")), weight_bits=4),
            Config("NVFP4", "NVFP4 (E2M1, blocks of 16)", "NVFP4",
                   lambda: QC(weight=fp("nvfp4"), activation=fp("nvfp4")), weight_bits=4)]


# ----------------------------------------------------------------------------- training, evaluation
def windows(data: torch.Tensor, context: int, batch: int,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random windows of ``context + 1`` bytes: inputs and next-byte targets."""
    starts = torch.randint(0, len(data) - context - 1, (batch,), generator=generator)
    rows = data[starts[:, None] + torch.arange(context + 1)].long()
    return rows[:, :-1], rows[:, 1:]


def optimizer(model: nn.Module, lr: float, weight_decay: float, quant_lr: float) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only. Adam moves each parameter by about
    its learning rate whatever its gradient, so a learned scale gets
    ``quant_lr`` times its own size: at the weights' rate an int8 scale of
    1e-3 would change sign in a few steps."""
    quant = {id(p): p for _, q in qx.quantizers(model) for p in q.parameters()}
    params = [p for p in model.parameters() if id(p) not in quant]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "lr": lr},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr": lr}]
    groups += [{"params": [p], "weight_decay": 0.0, "lr": quant_lr * p.detach().abs().mean().item()}
               for p in quant.values()]
    return torch.optim.AdamW(groups, betas=(0.9, 0.95))


def train(model: nn.Module, data: torch.Tensor, recipe: Recipe, steps: int, lr: float, warmup: int, seed: int,
          quant_lr: float = 0.0) -> None:
    """AdamW with linear warm-up and cosine decay to a tenth of ``lr``, gradients clipped at 1."""
    g = torch.Generator().manual_seed(seed)
    opt = optimizer(model, lr, recipe.weight_decay, quant_lr)
    base = [group["lr"] for group in opt.param_groups]
    model.train()
    for step in range(steps):
        progress = min(1.0, (step + 1) / warmup) if step < warmup else \
            0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for group, lr0 in zip(opt.param_groups, base):
            group["lr"] = lr0 * progress
        x, y = windows(data, recipe.context, recipe.batch, g)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()


@torch.no_grad()
def perplexity(model: nn.Module, data: torch.Tensor, context: int, tokens: int, batch: int = 64) -> float:
    """exp(mean next-byte cross-entropy) over the first ``tokens`` held-out
    bytes, cut into consecutive windows of ``context`` (every byte of a window
    scored, the first with no history)."""
    n = min(tokens, len(data) - 1) // context
    rows = data[: n * context + 1]
    x, y = rows[:-1].long().view(n, context), rows[1:].long().view(n, context)
    model.eval()
    total = sum(F.cross_entropy(model(xb).flatten(0, 1), yb.flatten(), reduction="sum").item()
                for xb, yb in zip(x.split(batch), y.split(batch)))
    return math.exp(total / (n * context))


def unigram_perplexity(corpus: Corpus, context: int, tokens: int) -> float:
    """What a model without context gets: the training bytes' frequencies
    (add-one smoothed) scored on the bytes :func:`perplexity` scores."""
    counts = torch.bincount(corpus.train.long(), minlength=VOCAB).double() + 1
    n = min(tokens, len(corpus.heldout) - 1) // context
    return math.exp(-(counts / counts.sum()).log()[corpus.heldout[1: n * context + 1].long()].mean().item())


# ----------------------------------------------------------------------------- one seed
def run_seed(seed: int, corpus: Corpus, recipe: Recipe, rows: list[Config], log: Callable[[str], None]) -> dict:
    """Float training, then PTQ and QAT of every configuration. Returns
    ``{label: {"float": ppl, "ptq": ppl, "qat": ppl, "steps": QAT steps}}``;
    the float row's ``qat`` is the float model fine-tuned with the QAT recipe
    (what the extra steps alone give)."""
    torch.manual_seed(seed)
    model = ByteGPT(recipe.dim, recipe.layers, recipe.heads, recipe.context)
    start = time.perf_counter()
    train(model, corpus.train, recipe, recipe.float_steps, recipe.float_lr, recipe.warmup, seed)
    float_ppl = perplexity(model, corpus.heldout, recipe.context, recipe.eval_tokens)
    log(f"seed {seed}: float {float_ppl:.4f} ({time.perf_counter() - start:.0f} s)")
    g = torch.Generator().manual_seed(10_000 + seed)  # calibration windows, the same for every row
    calibration = [windows(corpus.train, recipe.context, recipe.batch, g)[0] for _ in range(recipe.calibration_batches)]
    results = {}
    for row in rows:
        start = time.perf_counter()
        steps = recipe.qat_steps * LOW_BIT_STEPS.get(row.weight_bits, 1)
        qconfig = row.qconfig(learnable=row.lsq)
        if qconfig is None:
            prepared, ptq = copy.deepcopy(model), float_ppl
        else:  # learned scales start at the calibrated values: the PTQ model is the same either way
            prepared = qx.prepare_qat(model, qconfig, example_inputs=(calibration[0][:2],), first_last_bits=None)
            qx.calibrate(prepared, calibration, progress=False)
            ptq = perplexity(prepared, corpus.heldout, recipe.context, recipe.eval_tokens)
        train(prepared, corpus.train, recipe, steps, recipe.qat_lr, 0, 20_000 + seed, recipe.quant_lr)
        qat = perplexity(prepared, corpus.heldout, recipe.context, recipe.eval_tokens)
        results[row.label] = {"float": float_ppl, "ptq": ptq, "qat": qat, "steps": steps}
        log(f"seed {seed}: {row.label:9s} PTQ {ptq:.4f} QAT {qat:.4f} ({time.perf_counter() - start:.0f} s)")
    return results


# ----------------------------------------------------------------------------- the table
def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: list[Config], runs: list[dict]) -> list[dict]:
    """Per row: mean and spread over the seeds of the PTQ and QAT perplexity
    and of their per-seed ratios to the float perplexity."""
    table = []
    for row in rows:
        mine = [run[row.label] for run in runs]
        entry = {"config": row, "steps": mine[0]["steps"]}
        for key in ("ptq", "qat"):
            entry[key] = mean_spread([m[key] for m in mine])
            entry[key + "_ratio"] = mean_spread([m[key] / m["float"] for m in mine])
        table.append(entry)
    return table


HEADER = ("config", "weights", "activations", "QAT steps", "PTQ ppl", "PTQ / float", "QAT ppl", "QAT / float")


def markdown_table(table: list[dict]) -> str:
    """The summarized table as Markdown, perplexities to 3 decimals, ratios to 4."""
    def cell(value: tuple[float, float], digits: int) -> str:
        return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"

    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for e in table:
        row = e["config"]
        label = "float (QAT column: fine-tuned in float)" if row.make() is None else row.label
        lines.append(f"| {label} | {row.weights} | {row.activations} | {e['steps']} | {cell(e['ptq'], 3)} | "
                     f"{cell(e['ptq_ratio'], 4)} | {cell(e['qat'], 3)} | {cell(e['qat_ratio'], 4)} |")
    return "\n".join(lines) + "\n"


def target_line(table: list[dict]) -> str:
    """Whether each W4A8 row's QAT perplexity is within the target of float."""
    name, margin = TARGET
    out = []
    for e in table:
        if e["config"].label.startswith(name):
            ratio = e["qat_ratio"][0]
            verdict = "met" if ratio <= 1 + margin else f"missed by {100 * (ratio - 1 - margin):.2f} points"
            out.append(f"{e['config'].label} ({e['config'].activations}) QAT: {100 * (ratio - 1):+.2f}% against "
                       f"float, target within {100 * margin:.0f}%: {verdict}.")
    return " ".join(out)


def machine() -> str:
    """CPU model, CPU count, torch threads and versions, for the document's header."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s); torch {torch.__version__}, "
            f"Python {platform.python_version()} ({platform.system()})")


def document(table: list[dict], corpus: Corpus, recipe: Recipe, seeds: list[int], command: str, wall: float,
             params: int) -> str:
    r = recipe
    low = ", ".join(f"{r.qat_steps * f} at {b} bits" for b, f in LOW_BIT_STEPS.items())
    learned = [e["config"].label for e in table if e["config"].lsq]
    lsq = f"{' and '.join(learned)} learn their scales" if learned else "no row learns its scales"
    if any(e["config"].label in FP_LABELS for e in table):
        quantized = ("Quantized: every layer (`prepare_qat(first_last_bits=None)`): the byte and position tables, the "
                     "tied head (one quantizer shared with the table), the attention and MLP projections; LayerNorm, "
                     "the attention core (scores, softmax) and GELU stay in float. FP8: E4M3 weights with a scale "
                     "per output channel and E4M3 activations with one per tensor, from the max on the calibration "
                     "batches (the residual adds' quantizers included). MXFP8 / MXFP4 / NVFP4: block scales computed "
                     "from each block of 32 (MX, E8M0 scales) or 16 (NVFP4, E4M3 scales and a tensor scale) "
                     "elements along the input dimension in every forward pass, weights and activations alike; "
                     "nothing calibrated or learned (docs/fp.md).")
    else:
        quantized = None
    if any("dynamic" in e["config"].activations for e in table):
        dynamic = ("Dynamic activations (the -dyn rows; `QConfig.int8_dynamic`, "
                   "`QConfig.int8_dynamic_int4_weight`): signed symmetric int8 with one scale per token computed "
                   "from the tensor in every forward pass, on the layer inputs and the residual adds alike; "
                   "nothing calibrated or learned.")
    else:
        dynamic = ("This library has no per-token dynamic activation presets (`QConfig.int8_dynamic`, "
                   "`QConfig.int8_dynamic_int4_weight`), so the W8A8-dyn and W4A8-dyn rows are absent and W4A8 "
                   "runs with static per-tensor int8 activations; the rows appear when the presets exist.")
    unigram = unigram_perplexity(corpus, r.context, r.eval_tokens)
    paragraphs = [
        "# Byte-level language model on the standard library (`examples/text_lm.py`)",
        f"```bash\n{command}\n```",
        f"Machine: {machine()}. Wall time {wall / 60:.1f} min for {len(seeds)} seed(s) and {len(table)} rows "
        f"(load average {os.getloadavg()[1]:.1f} over the last 5 minutes, other jobs included).",
        f"Corpus: the {corpus.train_files + corpus.heldout_files} top-level `*.py` modules of this Python's standard "
        f"library (`{corpus.root}`, sorted by name, `_sysconfigdata_*` left out), every {HELDOUT_EVERY}th file held "
        f"out: {len(corpus.train)} training bytes ({corpus.train_files} files), {len(corpus.heldout)} held-out bytes "
        f"({corpus.heldout_files} files); SHA-256 of names and contents `{corpus.sha256}`.",
        f"Model: byte-level GPT, {r.layers} pre-LayerNorm block(s), width {r.dim}, {r.heads} heads, context "
        f"{r.context}, GELU MLP 4x, learned positions, output head tied to the byte table; {params} parameters. "
        f"Float training: {r.float_steps} steps of {r.batch} random windows, AdamW lr {r.float_lr} (betas 0.9/0.95, "
        f"weight decay {r.weight_decay} on matrices), {r.warmup} warm-up steps, cosine to a tenth, gradients "
        f"clipped at 1.",
        markdown_table(table).rstrip(),
        f"Perplexity: exp of the mean next-byte cross-entropy on the first {r.eval_tokens} held-out bytes cut into "
        f"windows of {r.context} (every byte scored; a uniform guess gets 256, the training bytes' frequencies "
        f"{unigram:.2f}). Mean ± sample standard deviation over {len(seeds)} seed(s) (initialization and data "
        f"order); the ratios are per seed, then averaged.",
        quantized or
        "Quantized: every layer (`prepare_qat(first_last_bits=None)`): the byte and position tables, the tied head "
        "(one quantizer shared with the table), the attention and MLP projections; LayerNorm, the attention core "
        "(scores, softmax) and GELU stay in float. Static activations: per-tensor signed symmetric int8, range by "
        "MSE on the calibration batches, the quantizers that `prepare_qat` puts on the residual adds included. "
        f"{dynamic} Weights: per channel (int8, narrow range) or per group along the input dimension "
        "(`QConfig.weight_only`), ranges from the max.",
        f"PTQ: `qx.calibrate` on {r.calibration_batches} training batches, no training. QAT: the PTQ model "
        f"fine-tuned {r.qat_steps} steps at lr {r.qat_lr} ({low}), cosine to a tenth, no warm-up; {lsq} "
        f"(LSQ, lr {r.quant_lr} times the scale's size), the others keep the calibrated ones. The "
        "float row's QAT column is the float model fine-tuned with the same recipe: the part of a QAT gain that "
        "the extra steps alone give.",
        target_line(table),
    ]
    return "\n\n".join(paragraphs) + "\n"


def run(recipe: Recipe, seeds: list[int], rows: list[Config], out: str | None, command: str,
        log: Callable[[str], None] = print) -> list[dict]:
    """Every row for every seed; writes the Markdown document to ``out`` (when
    given) and returns the summarized table."""
    corpus = load_corpus()
    log(f"Python {platform.python_version()}, corpus {corpus.root}: {len(corpus.train)} training bytes "
        f"({corpus.train_files} files), {len(corpus.heldout)} held-out bytes ({corpus.heldout_files} files), "
        f"sha256 {corpus.sha256[:16]}")
    start = time.perf_counter()
    runs = [run_seed(seed, corpus, recipe, rows, log) for seed in seeds]
    table = summarize(rows, runs)
    params = sum(p.numel() for p in ByteGPT(recipe.dim, recipe.layers, recipe.heads, recipe.context).parameters())
    text = document(table, corpus, recipe, seeds, command, time.perf_counter() - start, params)
    if out is not None:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
    log(markdown_table(table) + "\n" + target_line(table))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    parser.add_argument("--steps", type=int, help=f"QAT steps at 4 bits and more, times {LOW_BIT_STEPS} below "
                        f"(default {Recipe.qat_steps}; --quick {QUICK.qat_steps})")
    parser.add_argument("--float-steps", type=int,
                        help=f"float training steps (default {Recipe.float_steps}; --quick {QUICK.float_steps})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default="docs/text_lm.md", help="Markdown output (default docs/text_lm.md)")
    parser.add_argument("--quick", action="store_true", help="smoke test: a tiny model, one seed, a few steps")
    parser.add_argument("--rows", choices=("int", "fp"), default="int",
                        help="the integer formats' rows (default) or the floating-point formats' (fp_configs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = QUICK if args.quick else Recipe()
    if args.steps is not None:
        recipe = dataclasses.replace(recipe, qat_steps=args.steps)
    if args.float_steps is not None:
        recipe = dataclasses.replace(recipe, float_steps=args.float_steps)
    seeds = [0] if args.quick else list(range(args.seeds))
    command = " ".join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:])
    rows = fp_configs() if args.rows == "fp" else configs()
    run(recipe, seeds, rows, args.out, command, log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    main()
