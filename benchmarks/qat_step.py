"""Training-step time of ResNet-18 (or another torchvision classification model,
``--model``; 10 classes, 32x32 inputs):
FP32 vs quantext QAT (BN folded, W8A8 / W4A4) vs torch.ao QAT
(``prepare_qat_fx`` with Conv-BN fusion, the fbgemm QAT qconfig mapping).

A step is forward, cross-entropy, backward and an SGD step. The configurations
are timed round-robin (one step each per round) so that machine noise hits
them alike; the table shows medians after warm-up and the ratio to FP32
(> 1: slower than FP32).

Compiled rows: FP32, quantext W8A8 and torch.ao QAT with the model under
``torch.compile`` (inductor; the loss, backward and optimizer step eager), their
ratio taken to the compiled FP32 step. "first step" is the first call (it
includes the compilation); "recompiles" counts graphs compiled in the later
steps (0: the first compilation is reused, see docs/compile.md). Compiling
takes minutes on a small CPU, so ``--quick`` leaves the compiled rows out
unless ``--compile`` is given.

    python benchmarks/qat_step.py [--quick] [--device cpu|cuda] [--batch N] [--size S] [--[no-]compile]
                                  [--model NAME] [--profile]

``--profile`` prints instead the torch.profiler table (operators by self time)
of one FP32 step and one quantext W4A4 step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch
import torch._dynamo
import torchvision
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, markdown_table  # noqa: E402

import quantext as qx  # noqa: E402
from quantext.spec import QConfig, QuantSpec  # noqa: E402

BATCH = 64
SIZE = 32


def quantext_qconfig(bits: int) -> QConfig:
    return QConfig(weight=QuantSpec(bits=bits, narrow_range=True, granularity="channel", calibration="max"),
                   activation=QuantSpec(bits=bits, calibration="max"))


COMPILED = " (compiled)"


def models(x: torch.Tensor, compile: bool = True, model: str = "resnet18") -> dict[str, nn.Module]:
    """The configurations, each a fresh ``torchvision.models.<model>`` with the same
    initial weights; with ``compile``, also FP32, quantext W8A8 and torch.ao under
    ``torch.compile``."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping  # noqa: PLC0415
    from torch.ao.quantization.quantize_fx import prepare_qat_fx  # noqa: PLC0415

    def resnet() -> nn.Module:
        torch.manual_seed(0)
        return getattr(torchvision.models, model)(num_classes=10).to(x.device)

    def quantext(bits: int, bn_stats: str = "exact") -> nn.Module:
        model = qx.prepare_qat(resnet(), quantext_qconfig(bits), example_inputs=(x,), bn_stats=bn_stats)
        return qx.calibrate(model, [x], progress=False)

    def torch_ao() -> nn.Module:
        return prepare_qat_fx(resnet().train(), get_default_qat_qconfig_mapping("fbgemm"), (x,))

    configs = {
        "FP32": resnet(),
        "quantext W8A8": quantext(8),
        "quantext W4A4": quantext(4),
        "quantext W8A8, bn_stats=approx": quantext(8, "approx"),
        "torch.ao QAT (fbgemm)": torch_ao(),
    }
    if compile:
        compiled = {"FP32": resnet, "quantext W8A8": lambda: quantext(8), "torch.ao QAT (fbgemm)": torch_ao}
        configs.update({name + COMPILED: make() for name, make in compiled.items()})
    return configs


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, compile: bool = False) -> Callable[[], None]:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model, backend="inductor") if compile else model

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(forward(x), y).backward()
        opt.step()

    return step


def _graphs_compiled() -> int:
    """Graphs Dynamo has compiled in this process."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def run(quick: bool, device: str = "cpu", batch: int = BATCH, size: int = SIZE, compile: bool | None = None,
        model: str = "resnet18") -> str:
    """Times every configuration (the compiled ones with ``compile``, by default
    unless ``quick``); returns the Markdown report."""
    compile = not quick if compile is None else compile
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    torch._dynamo.reset()
    steps = {name: train_step(m, x, y, name.endswith(COMPILED)) for name, m in models(x, compile, model).items()}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    warmup, repeats = (2, 7) if quick else (3, 21)
    times: dict[str, list[float]] = {name: [] for name in steps}
    first: dict[str, float] = {}
    recompiles = dict.fromkeys(steps, 0)
    for r in range(warmup + repeats):
        for name, step in steps.items():
            graphs = _graphs_compiled()
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            elapsed = time.perf_counter() - t0
            if r == 0:
                first[name] = elapsed
            else:
                recompiles[name] += _graphs_compiled() - graphs
            if r >= warmup:
                times[name].append(elapsed)
    medians = {name: statistics.median(t) for name, t in times.items()}
    rows = []
    for name, t in medians.items():
        compiled = name.endswith(COMPILED)
        base = medians["FP32" + COMPILED if compiled else "FP32"]
        rows.append([name, f"{1e3 * t:.1f}", f"{t / base:.2f}"])
        if compile:
            rows[-1] += [f"{first[name]:.1f}", str(recompiles[name])] if compiled else ["", ""]
    header = ["configuration", "step (ms)", "time / FP32"] + (["first step (s)", "recompiles"] if compile else [])
    note = (" Compiled rows: the model under torch.compile (inductor), the ratio to the compiled FP32 step."
            if compile else "")
    versus = (f"\n\nquantext W8A8 / FP32: default (bn_stats=exact) {medians['quantext W8A8'] / medians['FP32']:.2f}, "
              f"bn_stats=approx {medians['quantext W8A8, bn_stats=approx'] / medians['FP32']:.2f}; "
              f"torch.ao QAT / FP32: {medians['torch.ao QAT (fbgemm)'] / medians['FP32']:.2f}; "
              f"default quantext / torch.ao: {medians['quantext W8A8'] / medians['torch.ao QAT (fbgemm)']:.2f}.")
    return (f"### QAT training step, {model}, batch {batch} at {size}x{size}, {device}\n\n"
            f"{machine()}; median of {repeats} steps after {warmup} warm-up rounds, configurations interleaved."
            f"{note}\n\n" + markdown_table(header, rows) + versus)


def profile(device: str, batch: int, size: int, model: str, rows: int = 12) -> str:
    """torch.profiler tables (by self time) of one FP32 and one quantext W4A4 step, after two warm-up steps."""
    from torch.profiler import profile as profiler  # noqa: PLC0415

    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    configs = models(x, compile=False, model=model)
    out = []
    for name in ("FP32", "quantext W4A4"):
        step = train_step(configs[name], x, y)
        step()
        step()
        with profiler() as p:
            step()
        out.append(f"### {name} step, {model}, batch {batch} at {size}x{size}, {device}\n\n"
                   + p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="add the torch.compile rows (default: on, off with --quick)")
    parser.add_argument("--model", default="resnet18", help="a torchvision classification model (default resnet18)")
    parser.add_argument("--profile", action="store_true", help="operator profile of one FP32 and one W4A4 step")
    args = parser.parse_args()
    if args.profile:
        print(profile(args.device, args.batch, args.size, args.model))
        return
    print(run(args.quick, args.device, args.batch, args.size, args.compile, args.model))


if __name__ == "__main__":
    main()
