"""Fake-quantizes a Gaussian tensor and a small CNN's weights at every bit
width and prints the error: the smallest end-to-end use of quantext.

    python examples/error_per_bits.py
"""

from __future__ import annotations

import torch
from torch import nn

import quantext as qx


def symmetric_per_channel(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric fake quantization with max calibration."""
    qmin, qmax = qx.uniform_bounds(bits, signed=True, narrow_range=True)
    absmax = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12)
    scale = (absmax / qmax).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return qx.fake_quant_uniform(w, scale, zero, qmin, qmax, axis=0)


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(1 << 16)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(10))
    model(torch.randn(1, 3, 12, 12))
    weights = {name: p for name, p in model.named_parameters() if p.dim() > 1}

    print(f"{'bits':>4} | {'tensor SQNR dB':>14} | " + " | ".join(f"{n:>14}" for n in weights))
    for bits in (16, 8, 6, 4, 3, 2):
        qmin, qmax = qx.uniform_bounds(bits, signed=True)
        scale = torch.tensor([x.abs().max().item() / qmax])
        y = qx.fake_quant_uniform(x, scale, torch.zeros(1, dtype=torch.int32), qmin, qmax)
        sqnr = 10 * torch.log10(x.pow(2).mean() / (x - y).pow(2).mean())
        errs = [((w - symmetric_per_channel(w, bits)).norm() / w.norm()).item() for w in weights.values()]
        print(f"{bits:>4} | {sqnr.item():>14.2f} | " + " | ".join(f"{e:>14.2e}" for e in errs))
    print("(weights: relative L2 error of per-channel symmetric fake quantization)")


if __name__ == "__main__":
    main()
