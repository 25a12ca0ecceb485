"""Which activation calibration method should be the default? Measures the
relative output error of calibrated (not trained) quantized torchvision
models against their float versions, for each range method.

Per model and bit width (W8A8, W4A4; ``QConfig.uniform``, ``--backend``):
``prepare_qat`` once, observe the calibration batches once (histogram
observers, ``qx.calibrate``), then set every activation quantizer's range with
each method in turn from the same statistics (weights keep ``max``) and run a
held-out batch in eval mode. Error: ``||y_q - y_f|| / ||y_f||`` of the logits,
and the top-1 agreement with the float model.

The models are randomly initialized (no weights are downloaded). So that eval
mode is not an untrained network's (BatchNorm running statistics of 0 and 1,
activations that shrink layer by layer), the float model first runs in
training mode over the calibration batches with cumulative BatchNorm
averaging: its running statistics are then those of the data, as in a trained
network. Inputs: standard normal images.

    python scripts/calibration_choice.py                 # the table of docs/calibration.md
    python scripts/calibration_choice.py --models resnet18 --bits 8
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
import warnings

import torch
import torchvision
from torch import nn

import quantext as qx

METHODS = ("max", "percentile", "mse", "entropy")
MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf", "shufflenet_v2_x0_5", "convnext_tiny")


@torch.no_grad()
def fit_bn_statistics(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Running BatchNorm statistics = the cumulative statistics of ``batches``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x in batches:
        model(x)
    model.eval()


@torch.no_grad()
def measure(name: str, bits: int, backend: str, size: int, batch: int, num_batches: int,
            seed: int) -> dict[str, tuple[float, float]]:
    """``{method: (relative output error, top-1 agreement)}`` of one model at W``bits``A``bits``."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(num_classes=100)
    calib = [torch.randn(batch, 3, size, size) for _ in range(num_batches)]
    held_out = torch.randn(2 * batch, 3, size, size)
    fit_bn_statistics(model, calib)
    reference = model(held_out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing / coverage notes of prepare_qat
        prepared = qx.prepare_qat(copy.deepcopy(model), qx.QConfig.uniform(bits=bits, backend=backend),
                                  example_inputs=(calib[0],))
        qx.calibrate(prepared, calib, method="entropy", progress=False)  # histogram observers: every method reads them
    prepared.eval()
    out = {}
    for method in METHODS:
        for _, q in qx.quantizers(prepared):
            if q.role == "activation":
                q.spec = q.spec.replace(calibration=method)
                q.compute_qparams(warn=False)
        y = prepared(held_out)
        error = float((y - reference).norm() / reference.norm())
        agree = float((y.argmax(1) == reference.argmax(1)).float().mean())
        out[method] = (error, agree)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 4])
    parser.add_argument("--backend", default="tensorrt", choices=("tensorrt", "onnxruntime"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4, help="images per calibration batch (held out: twice that)")
    parser.add_argument("--num-batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, torchvision {torchvision.__version__}; backend={args.backend}, {args.size}x"
          f"{args.size}, {args.num_batches} calibration batches of {args.batch}, held-out batch of {2 * args.batch}, "
          f"seed {args.seed}")
    print("\n| model | W/A | " + " | ".join(METHODS) + " | best |")
    print("|---|---|" + "---|" * (len(METHODS) + 1))
    wins: dict[str, int] = {m: 0 for m in METHODS}
    errors: dict[str, list[float]] = {m: [] for m in METHODS}
    for bits in args.bits:
        for name in args.models:
            start = time.time()
            result = measure(name, bits, args.backend, args.size, args.batch, args.num_batches, args.seed)
            best = min(result, key=lambda m: result[m][0])
            wins[best] += 1
            for m, (e, _) in result.items():
                errors[m].append(e)
            cells = " | ".join(f"{e:.3f} ({a:.0%})" for e, a in result.values())
            print(f"| {name} | W{bits}A{bits} | {cells} | {best} |  <!-- {time.time() - start:.0f} s -->", flush=True)
    geo = {m: torch.tensor(v).log().mean().exp().item() for m, v in errors.items()}
    print("\n| | " + " | ".join(METHODS) + " |")
    print("|---|" + "---|" * len(METHODS))
    print("| rows won | " + " | ".join(str(wins[m]) for m in METHODS) + " |")
    print("| geometric mean error | " + " | ".join(f"{geo[m]:.3f}" for m in METHODS) + " |")


if __name__ == "__main__":
    main()
