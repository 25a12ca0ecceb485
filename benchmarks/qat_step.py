"""Training-step time of ResNet-18 (torchvision, 10 classes, 32x32 inputs):
FP32 vs quantext QAT (BN folded, W8A8 / W4A4) vs torch.ao QAT
(``prepare_qat_fx`` with Conv-BN fusion, the fbgemm QAT qconfig mapping).

A step is forward, cross-entropy, backward and an SGD step. The configurations
are timed round-robin (one step each per round) so that machine noise hits
them alike; the table shows medians after warm-up and the ratio to FP32
(> 1: slower than FP32).

    python benchmarks/qat_step.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch
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


def models(x: torch.Tensor) -> dict[str, nn.Module]:
    """The configurations, each a fresh ResNet-18 with the same initial weights."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping  # noqa: PLC0415
    from torch.ao.quantization.quantize_fx import prepare_qat_fx  # noqa: PLC0415

    def resnet() -> nn.Module:
        torch.manual_seed(0)
        return torchvision.models.resnet18(num_classes=10).to(x.device)

    def quantext(bits: int, bn_stats: str = "exact") -> nn.Module:
        model = qx.prepare_qat(resnet(), quantext_qconfig(bits), example_inputs=(x,), bn_stats=bn_stats)
        return qx.calibrate(model, [x], progress=False)

    return {
        "FP32": resnet(),
        "quantext W8A8": quantext(8),
        "quantext W4A4": quantext(4),
        "quantext W8A8, bn_stats=approx": quantext(8, "approx"),
        "torch.ao QAT (fbgemm)": prepare_qat_fx(resnet().train(), get_default_qat_qconfig_mapping("fbgemm"), (x,)),
    }


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def run(quick: bool, device: str = "cpu", batch: int = BATCH, size: int = SIZE) -> str:
    """Times every configuration; returns the Markdown report."""
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    steps = {name: train_step(m, x, y) for name, m in models(x).items()}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    warmup, repeats = (2, 7) if quick else (3, 21)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(warmup + repeats):
        for name, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["FP32"]
    rows = [[name, f"{1e3 * t:.1f}", f"{t / base:.2f}"] for name, t in medians.items()]
    return (f"### QAT training step, ResNet-18, batch {batch} at {size}x{size}, {device}\n\n"
            f"{machine()}; median of {repeats} steps after {warmup} warm-up rounds, configurations interleaved.\n\n"
            + markdown_table(["configuration", "step (ms)", "time / FP32"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(run(args.quick, args.device))


if __name__ == "__main__":
    main()
