"""How far a zoo model's converted (quantized) output moves, in PyTorch alone,
when its input is perturbed by a tiny relative amount: the scale of the drift to
expect from any other float rounding order, such as ONNX Runtime's.

    .venv/bin/python scripts/zoo_sensitivity.py efficientnet_b0 w8a8-tensorrt [resnet18 w8a8-tensorrt ...]

Each model goes through scripts/model_zoo.py's flow up to convert (same seed,
same data); three perturbations per size, the largest output change printed.
"""

from __future__ import annotations

import sys

import torch

import model_zoo
import quantext as qx


def sensitivity(name: str, scheme: str, eps: float) -> tuple[float, float]:
    """(output range, largest output change for a relative input perturbation ``eps``)."""
    entry = model_zoo.MODELS[name]
    torch.manual_seed(0)
    model = entry.build()
    model_zoo._bn_statistics(model, entry)
    model.eval()
    x = entry.inputs()
    prepared = qx.prepare_qat(model, model_zoo.SCHEMES[scheme](), example_inputs=(x,))
    qx.calibrate(prepared, [entry.inputs() for _ in range(2)], progress=False)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01, momentum=0.9)
    prepared.train()
    for _ in range(2):
        opt.zero_grad()
        model_zoo._loss(prepared(entry.inputs())).backward()
        opt.step()
    converted = qx.convert(qx.freeze_bn(prepared)).eval()
    with torch.no_grad():
        y = converted(x)
        change = max(float((y - converted(x * (1 + eps * torch.randn_like(x)))).abs().max()) for _ in range(3))
    return float(y.abs().max()), change


def main() -> None:
    args = sys.argv[1:]
    if not args or len(args) % 2:
        raise SystemExit(__doc__)
    for name, scheme in zip(args[::2], args[1::2]):
        for eps in (1e-7, 1e-6):
            top, change = sensitivity(name, scheme, eps)
            print(f"{name} {scheme}: outputs up to {top:.3g}; a {eps:.0e} relative input perturbation moves "
                  f"them by up to {change:.3g}")


if __name__ == "__main__":
    main()
