"""Draws a layer's activation histogram with the clipping threshold each
calibration method picks, and the KL and MSE objectives the searches minimize.

A small CNN is trained for a few epochs on scikit-learn's 8x8 digits (offline),
a HistogramObserver watches the output of its second convolution (before the
ReLU: a signed, heavy-tailed distribution), and every method of
quantext.calibration computes its clip for a signed symmetric grid.

    python examples/plot_calibration.py [--out out/calibration.png] [--bits 4]
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402

import quantext as qx  # noqa: E402
from quantext.calibration import magnitude_levels  # noqa: E402
from quantext.spec import QuantSpec  # noqa: E402


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16
    return x, torch.tensor(data.target)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 8) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/calibration.png", help="PNG path (default: out/calibration.png)")
    parser.add_argument("--bits", type=int, default=4, help="bit width of the grid (default 4)")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = digits()
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))
    train(model, x, y)
    accuracy = (model(x).argmax(1) == y).float().mean().item()

    observer = qx.HistogramObserver()
    model[2].register_forward_hook(lambda mod, inp, out: observer(out))
    with torch.no_grad():
        for batch in x.split(256):
            model(batch)

    spec = QuantSpec(bits=args.bits)
    choices = {
        "max": {},
        f"percentile {spec.percentile}": {},
        "mse (uniform)": {},
        "entropy (TensorRT)": {"kl_variant": "tensorrt"},
        "entropy (PPQ)": {"kl_variant": "ppq"},
        "aciq (Laplace)": {"aciq_prior": "laplace"},
        "aciq (Gaussian)": {"aciq_prior": "gaussian"},
    }
    thresholds = {}
    for label, options in choices.items():
        method = label.split()[0]
        thresholds[label] = observer.compute_range(spec.replace(calibration=method), **options)[1].item()

    stats = observer.stats()
    hist, amax = stats.hist.sum(1)[0], stats.amax[0].item()
    width = amax / observer.bins
    centers = (torch.arange(observer.bins) + 0.5) * width
    top = stats.max_val.abs().max().item()
    shown = centers <= 1.05 * max(top, -stats.min_val.item())

    fig, (ax, ax_obj) = plt.subplots(2, 1, figsize=(10, 8), sharex=True, height_ratios=[3, 2])
    ax.bar(centers[shown], hist[shown], width=width, color="0.6", label="|activation| histogram")
    ax.set_yscale("log")
    colors = plt.cm.tab10.colors
    for (label, t), color in zip(thresholds.items(), colors):
        ax.axvline(t, color=color, lw=1.6, label=f"{label}: {t:.3f}")
    ax.set_ylabel("count")
    ax.set_title(f"conv2 output of a digits CNN (train accuracy {accuracy:.1%}), {int(stats.count.item())} values; "
                 f"{args.bits}-bit signed clips")
    ax.legend(fontsize=8, loc="upper right")

    kl = qx.ops.calib_entropy(hist, torch.tensor(amax), 1 << (args.bits - 1))[1][: observer.bins]
    mse = qx.ops.calib_mse(hist, torch.tensor(amax), magnitude_levels(spec))[1]
    edges = torch.arange(observer.bins) * width
    finite = torch.isfinite(kl) & (edges <= centers[shown][-1])
    ax_obj.plot((edges + 0.5 * width)[finite], kl[finite], color=colors[3], label="KL(P||Q) (TensorRT), threshold i+0.5 bins")
    ax_obj.set_ylabel("KL divergence")
    ax_mse = ax_obj.twinx()
    keep = (edges + width) <= centers[shown][-1]
    ax_mse.plot((edges + width)[keep], mse[keep], color=colors[2], label="expected MSE (uniform)")
    ax_mse.set_yscale("log")
    ax_mse.set_ylabel("mean squared error")
    ax_obj.set_xlabel("clipping threshold")
    ax_obj.legend(loc="upper center", fontsize=8)
    ax_mse.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    for label, t in thresholds.items():
        print(f"  {label:22s} {t:.4f}")


if __name__ == "__main__":
    main()
