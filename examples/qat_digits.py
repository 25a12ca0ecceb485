"""The main job: QAT of a small ResNet on scikit-learn's handwritten digits,
end to end, for uniform, powers-of-two (PoT) and additive powers-of-two (APoT)
quantization, with an ONNX Runtime check of every exported model.

Per seed (a stratified train/test split, the initialization and the data order):

1. train a float ResNet-style CNN (BatchNorm, residual adds) on the 8x8 digits;
2. QAT rows, for every scheme and bit width WbAb: ``qx.prepare_qat`` (first and
   last layer at 8 bits), ``qx.calibrate`` (the PTQ accuracy), QAT fine-tuning
   with learned quantizer parameters, ``qx.freeze_bn`` for the last epochs,
   ``qx.convert``, ``qx.export_onnx(verify=True)``, accuracy in ONNX Runtime;
3. PTQ rows: uniform, every calibration method, prepare + calibrate + convert
   (no fine-tuning).

It prints one table (mean and spread over the seeds) and writes it as Markdown
and CSV, the per-seed numbers, and the ONNX files to ``--out``.

    python examples/qat_digits.py [--out out/demo] [--seeds 3] [--epochs 4] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import time
from dataclasses import dataclass, replace

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm.auto import tqdm

import quantext as qx
from quantext.nn import QuantConv2d, QuantLinear

SCHEMES = ("uniform", "pot", "apot")
QAT_BITS = (8, 4, 3, 2)
PTQ_METHODS = ("max", "percentile", "mse", "entropy", "aciq")
PTQ_BITS = (8, 4)
FIRST_LAST_BITS = 8
BATCH = 64
LOW_BIT_EPOCHS = {3: 2, 2: 3}  # QAT epochs are multiplied by this at these bit widths


# ----------------------------------------------------------------------------- data
@dataclass
class Split:
    """Train and test tensors of one seed: images ``[N, 1, 8, 8]`` in [-1, 1]."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits_split(seed: int, test_size: float = 0.25, subset: int | None = None) -> Split:
    """A stratified split of the 1797 digits (``subset``: the first ``subset`` images only)."""
    data = load_digits()
    images, labels = data.images[:subset], data.target[:subset]
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 8 - 1  # pixel values 0..16 -> [-1, 1]
    y = torch.tensor(labels)
    train, test = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=labels)
    return Split(x[train], y[train], x[test], y[test])


def shifted(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Augmentation: every image moved by up to one pixel in each direction
    (background -1 fills the border)."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(8))[:, :, None].expand(n, 8, 8)
    cols = (dx[:, None] + torch.arange(8))[:, None, :].expand(n, 8, 8)
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


# ----------------------------------------------------------------------------- model
class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 Conv-BN, a residual add, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class DigitsResNet(nn.Module):
    """Stem (8x8, 16 channels), two basic blocks (the second to 4x4, 32
    channels), global average pooling, a linear classifier."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- recipe
@dataclass(frozen=True)
class Recipe:
    """Training settings (float and QAT) shared by every row."""

    float_epochs: int = 30
    float_lr: float = 3e-3
    qat_epochs: int = 4  # at 8 and 4 bits; low bit widths need more (LOW_BIT_EPOCHS)
    qat_lr: float = 1e-3
    quant_lr: float = 1e-2  # learned scales / clipping values, relative to their size (see optimizer())
    freeze_bn_epochs: int = 1  # the last epochs run with frozen BN statistics
    calibration: str = "mse"  # activations, QAT rows (weights: max)
    calibration_batches: int = 8
    learnable: bool = True  # LSQ scales (uniform), learned clipping alpha (PoT/APoT)
    augment: bool = True
    bn_stats: str = "exact"  # BN folding while training, as prepare_qat (docs/bn_folding.md)


def qconfig(scheme: str, bits: int, calibration: str, learnable: bool) -> qx.QConfig:
    """Per-channel signed weights (narrow range for uniform: the symmetric grid
    TensorRT wants), per-tensor unsigned activations (conv inputs follow a
    ReLU; ONNX Runtime fuses uint8 with zero point 0 into QLinearConv), and
    uniform layers' biases on the int32 grid ONNX Runtime rounds them to."""
    weight = qx.QuantSpec(scheme=scheme, bits=bits, signed=True, narrow_range=scheme == "uniform",
                          granularity="channel", axis=0, learnable=learnable, calibration="max")
    activation = qx.QuantSpec(scheme=scheme, bits=bits, signed=False, learnable=learnable, calibration=calibration)
    return qx.QConfig(weight=weight, activation=activation, int32_bias=True)


@torch.no_grad()
def signed_add_inputs(model: nn.Module, batch: torch.Tensor) -> None:
    """``prepare_qat`` gives the quantizers on residual-add inputs the
    (unsigned) activation spec; those whose input takes negative values on
    ``batch`` in float (a BN output: the residual branch, a projection
    shortcut) get its signed variant, or the negative half would be clipped.
    An identity shortcut after a ReLU stays unsigned and keeps the extra bit."""
    adds = {name: q for name, q in qx.quantizers(model)
            if name.rpartition(".")[2] not in ("input_quantizer", "weight_quantizer")}
    lows: dict[str, float] = {}
    hooks = [q.register_forward_pre_hook(lambda m, args, name=name: lows.__setitem__(name, args[0].min().item()))
             for name, q in adds.items()]
    qx.disable_quant(model)
    model.eval()(batch)
    for hook in hooks:
        hook.remove()
    for name, q in adds.items():
        if lows[name] < 0:
            q.spec = q.spec.replace(signed=True)
            q.reset_observer()


def prepare(float_model: nn.Module, scheme: str, bits: int, calibration: str, learnable: bool,
            calibration_batch: torch.Tensor, bn_stats: str = Recipe.bn_stats) -> nn.Module:
    """``prepare_qat`` with first and last layer at 8 bits, add inputs signed where needed."""
    model = qx.prepare_qat(float_model, qconfig(scheme, bits, calibration, learnable),
                           example_inputs=(calibration_batch[:16],), first_last_bits=FIRST_LAST_BITS,
                           bn_stats=bn_stats)
    signed_add_inputs(model, calibration_batch)
    return model


# ----------------------------------------------------------------------------- training, evaluation
def optimizer(model: nn.Module, lr: float, quant_lr: float) -> torch.optim.Optimizer:
    """Adam. Its steps are about ``lr`` whatever a gradient's size, so each
    quantizer parameter (scale, clipping value) gets ``quant_lr`` times its
    own size as learning rate: a relative rate, since an 8-bit weight scale
    of 1e-3 would go negative in a few steps at the weights' rate while a
    2-bit clipping value of 0.5 would hardly move."""
    quant = {id(p): p for _, q in qx.quantizers(model) for p in q.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in quant], "lr": lr}]
    groups += [{"params": [p], "lr": quant_lr * p.detach().abs().mean().item()} for p in quant.values()]
    return torch.optim.Adam(groups)


def train(model: nn.Module, split: Split, epochs: int, lr: float, seed: int, augment: bool,
          on_epoch=None, quant_lr: float = 0.0) -> None:
    """Adam with a cosine schedule; ``on_epoch(epoch)`` runs before each epoch."""
    g = torch.Generator().manual_seed(seed)
    opt = optimizer(model, lr, quant_lr)
    steps = epochs * math.ceil(len(split.y_train) / BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    for epoch in range(epochs):
        if on_epoch is not None:
            on_epoch(epoch)
        for idx in torch.randperm(len(split.y_train), generator=g).split(BATCH):
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x = shifted(split.x_train[idx], g) if augment else split.x_train[idx]
            opt.zero_grad()
            F.cross_entropy(model(x), split.y_train[idx]).backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item() * 100


def ort_accuracy(path: str, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Accuracy of the ONNX file in ONNX Runtime (CPU provider, default
    optimizations: the int8 kernels where it fuses them) and its predictions."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    pred = torch.from_numpy(logits).argmax(1)
    return (pred == y).float().mean().item() * 100, pred


def model_bytes(model: nn.Module) -> int:
    """Bytes to store a converted model: every weight at its bit width
    (bit-packed), the float32 quantizer parameters (per-channel weight scales,
    or clipping values for PoT/APoT, and one scale per activation quantizer)
    and the float32 biases (BN folded). Zero points are all 0 (symmetric
    grids) and not stored."""
    bits = 0
    for _, q in qx.quantizers(model):
        bits += 32 * sum(p.numel() for p in q.qparams().values() if p.is_floating_point())
    for module in model.modules():
        if isinstance(module, (QuantConv2d, QuantLinear)):
            bits += module.weight.numel() * module.weight_quantizer.spec.bits
            bits += 32 * module.bias.numel() if module.bias is not None else 0
    return math.ceil(bits / 8)


def float_bytes(model: nn.Module) -> int:
    """float32 bytes of the model with BatchNorm folded (weights and one bias per output channel)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return 4 * sum(m.weight.numel() + m.weight.shape[0] for m in layers)


# ----------------------------------------------------------------------------- one table row, one seed
@dataclass(frozen=True)
class Job:
    """One row of the table: QAT (``qat=True``) or PTQ only."""

    scheme: str
    bits: int
    calibration: str
    qat: bool

    @property
    def method(self) -> str:
        return f"{'QAT' if self.qat else 'PTQ'}, {self.calibration}"

    @property
    def label(self) -> str:
        return f"{self.scheme} W{self.bits}A{self.bits} {self.method}"



def make_jobs(schemes=SCHEMES, qat_bits=QAT_BITS, ptq_methods=PTQ_METHODS, ptq_bits=PTQ_BITS,
              recipe: Recipe = Recipe()) -> list[Job]:
    jobs = [Job(s, b, recipe.calibration, True) for s in schemes for b in qat_bits]
    return jobs + [Job("uniform", b, m, False) for b in ptq_bits for m in ptq_methods]


def run_job(job: Job, float_model: nn.Module, split: Split, recipe: Recipe, seed: int, onnx_dir: str) -> dict:
    """prepare -> calibrate; QAT rows then fine-tune (BN frozen for the last
    epochs), convert, export (verified) and run in ONNX Runtime. PTQ rows stop
    after convert (an export costs seconds; the QAT rows cover it).
    Accuracies in percent."""
    calibration = split.x_train[: recipe.calibration_batches * BATCH]
    model = prepare(float_model, job.scheme, job.bits, job.calibration, recipe.learnable and job.qat, calibration,
                    recipe.bn_stats)
    qx.calibrate(model, calibration.split(BATCH), progress=False)
    result = {"ptq": accuracy(model, split.x_test, split.y_test), "qat": None, "ort": None, "ort_differs": None}
    if job.qat:
        epochs = recipe.qat_epochs * LOW_BIT_EPOCHS.get(job.bits, 1)
        freeze_at = epochs - recipe.freeze_bn_epochs
        train(model, split, epochs, recipe.qat_lr, seed, recipe.augment,
              on_epoch=lambda epoch: epoch == freeze_at and qx.freeze_bn(model), quant_lr=recipe.quant_lr)
    converted = qx.convert(model)
    result["bytes"] = model_bytes(converted)
    if not job.qat:
        return result
    result["qat"] = accuracy(converted, split.x_test, split.y_test)
    path = os.path.join(onnx_dir, f"{job.scheme}_w{job.bits}a{job.bits}_seed{seed}.onnx")
    qx.export_onnx(converted, (split.x_test[:16],), path, verify=True, dynamic_batch=True, input_names=["image"],
                   output_names=["logits"])
    result["ort"], ort_pred = ort_accuracy(path, split.x_test, split.y_test)
    with torch.no_grad():
        result["ort_differs"] = int((converted(split.x_test).argmax(1) != ort_pred).sum())
    return result


# ----------------------------------------------------------------------------- the table
COLUMNS = ("scheme", "bits", "method", "float", "ptq", "qat", "ort", "ort_differs", "bytes")
HEADER = ("scheme", "W/A bits", "method", "float acc. %", "PTQ acc. %", "QAT acc. %", "ONNX Runtime acc. %",
          "ORT != PyTorch", "size (bytes)")


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(jobs: list[Job], runs: list[dict]) -> list[dict]:
    """One row per job: mean and spread over the seeds of every accuracy,
    the total count of test images where ONNX Runtime and PyTorch predict
    differently, and the model size."""
    rows = []
    for job in jobs:
        mine = [r for r in runs if r["job"] == job]
        row = {"scheme": job.scheme, "bits": job.bits, "method": job.method}
        for key in ("float", "ptq", "qat", "ort"):
            values = [r[key] for r in mine if r[key] is not None]
            row[key] = mean_spread(values) if values else None
        row["ort_differs"] = sum(r["ort_differs"] for r in mine) if job.qat else None
        row["bytes"] = mine[0]["bytes"]
        rows.append(row)
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return f"{value[0]:.2f} ± {value[1]:.2f}"
    return str(value)


def markdown(rows: list[dict], caption: str) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n\n" + caption + "\n"


def write_csv(rows: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        stats = ("float", "ptq", "qat", "ort")
        writer.writerow(["scheme", "bits", "method"] + [f"{k}_{s}" for k in stats for s in ("mean", "std")]
                        + ["ort_differs", "bytes"])
        for row in rows:
            values = [v for k in stats for v in (row[k] if row[k] is not None else ("", ""))]
            writer.writerow([row["scheme"], row["bits"], row["method"]] + [
                f"{v:.4f}" if isinstance(v, float) else v for v in values] + [row["ort_differs"], row["bytes"]])


def caption(recipe: Recipe, seeds: list[int], split: Split, float_size: int) -> str:
    e = recipe.qat_epochs
    low = ", ".join(f"{e * f} at {b}" for b, f in LOW_BIT_EPOCHS.items())
    learned = (f"learned scales (LSQ) and clipping values (relative lr {recipe.quant_lr})" if recipe.learnable
               else "fixed quantizer parameters")
    return (f"Digits (scikit-learn, 8x8 images), test split {len(split.y_test)} images; mean ± sample standard "
            f"deviation over {len(seeds)} seed(s) (split, initialization, data order). WbAb: b-bit weights (per "
            f"channel, signed) and activations (per tensor: unsigned after ReLU; signed on the residual-add inputs "
            f"that take negative values) in every layer except the first and the last, which stay at "
            f"{FIRST_LAST_BITS}-bit uniform as the seed advises (prepare_qat's first_last_bits={FIRST_LAST_BITS}). "
            f"PTQ: calibration only ({recipe.calibration_batches} batches of {BATCH} training images; activations "
            f"by the method named, weights max); in QAT rows, the accuracy after calibration, before fine-tuning. "
            f"QAT: Adam lr {recipe.qat_lr} with a cosine schedule for {e} epochs at 8 and 4 bits ({low} bits), "
            f"{learned}, "
            f"BN folded with bn_stats={recipe.bn_stats!r}, statistics frozen for the last "
            f"{recipe.freeze_bn_epochs} epoch(s), uniform layers' biases on the "
            f"int32 grid (QConfig.int32_bias); accuracy of the converted model in PyTorch. ONNX Runtime: the "
            f"exported file (qx.export_onnx, verify=True) in a default CPU session (all graph optimizations, int8 "
            f"QLinearConv kernels where it fuses them); 'ORT != PyTorch' counts the test images, over all seeds, "
            f"whose predicted class differs. Size: weights bit-packed at their bit width, plus float32 per-channel "
            f"weight scales (PoT/APoT: clipping values), activation scales and 32-bit biases (BN folded); the "
            f"float32 model with BN folded takes {float_size} bytes. Float model: {recipe.float_epochs} epochs, "
            f"Adam lr {recipe.float_lr} (cosine){', one-pixel random shifts' if recipe.augment else ''}.")


def run_demo(jobs: list[Job], seeds: list[int], recipe: Recipe, out: str, subset: int | None = None,
             progress: bool = True) -> list[dict]:
    """Runs every job for every seed, writes ``table.md``, ``table.csv``,
    ``runs.csv`` and the ONNX files under ``out``; returns the table rows."""
    onnx_dir = os.path.join(out, "onnx")
    os.makedirs(onnx_dir, exist_ok=True)
    runs = []
    start = time.perf_counter()
    bar = tqdm(total=len(seeds) * (1 + len(jobs)), desc="demo", disable=not progress)
    for seed in seeds:
        split = digits_split(seed, subset=subset)
        torch.manual_seed(seed)
        float_model = DigitsResNet()
        bar.set_postfix_str(f"seed {seed}: float training")
        train(float_model, split, recipe.float_epochs, recipe.float_lr, seed, recipe.augment)
        float_acc = accuracy(float_model, split.x_test, split.y_test)
        bar.update()
        for job in jobs:
            bar.set_postfix_str(f"seed {seed}: {job.label}")
            runs.append({"job": job, "seed": seed, "float": float_acc,
                         **run_job(job, float_model, split, recipe, seed, onnx_dir)})
            bar.update()
    bar.close()
    rows = summarize(jobs, runs)
    timing = (f"Wall time {time.perf_counter() - start:.0f} s for {len(seeds)} seed(s) and {len(jobs)} rows "
              f"({os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s)).")
    text = markdown(rows, caption(recipe, seeds, split, float_bytes(float_model)) + "\n\n" + timing)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    write_csv(rows, os.path.join(out, "table.csv"))
    with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
        fields = ["seed", "scheme", "bits", "method", "float", "ptq", "qat", "ort", "ort_differs", "bytes"]
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for r in runs:
            job = r["job"]
            writer.writerow({**{k: r[k] for k in fields if k in r}, "scheme": job.scheme, "bits": job.bits,
                             "method": job.method})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    parser.add_argument("--epochs", type=int, default=Recipe.qat_epochs,
                        help=f"QAT epochs at 8 and 4 bits, times {LOW_BIT_EPOCHS} at lower bit widths "
                             f"(default {Recipe.qat_epochs})")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    parser.add_argument("--bn-stats", default=Recipe.bn_stats, choices=("exact", "approx"),
                        help=f"BN folding while training (default {Recipe.bn_stats})")
    parser.add_argument("--quick", action="store_true", help="smoke test: one seed, 10 float and 1 QAT epoch")
    args = parser.parse_args()
    recipe, seeds = Recipe(qat_epochs=args.epochs, bn_stats=args.bn_stats), list(range(args.seeds))
    if args.quick:
        recipe, seeds = replace(recipe, float_epochs=10, qat_epochs=1), [0]
    # The tensors are tiny: one thread per process is fastest, and on a shared
    # machine intra-op threads that wait for each other are much slower.
    torch.set_num_threads(1)
    rows = run_demo(make_jobs(args.schemes, QAT_BITS, PTQ_METHODS, PTQ_BITS, recipe), seeds, recipe, args.out)
    with open(os.path.join(args.out, "table.md")) as f:
        print(f.read())
    print(f"{len(rows)} rows; wrote {args.out}/table.md, table.csv, runs.csv and onnx/")


if __name__ == "__main__":
    main()
