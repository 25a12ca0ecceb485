"""PoT / APoT fake quantization vs the uniform kernel and vs a pure-PyTorch
composition written the way the published APoT code does it (distance from
every element to every level: an N x levels tensor, then argmin).

Per size and grid: forward and forward+backward time (learned alpha / scale
with gradients), quantext's achieved bandwidth on forward+backward (x in, y
out, dy in, dx out), its ratio to the 4-bit uniform kernel with a learned scale
(target <= 1.3) and the speed-up over the composition (target >= 10 at 1e6+).

    python benchmarks/schemes.py [--quick] [--full]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, markdown_table, median_seconds, sizes  # noqa: E402

import quantext as qx  # noqa: E402
from quantext.functional import fake_quant_levels  # noqa: E402

GRIDS = [("pot", 4), ("apot", 4), ("pot", 8), ("apot", 8)]  # signed: B = bits - 1 magnitude bits
# The composition materializes N x levels floats; skip it beyond this many.
MAX_COMPOSITION_FLOATS = 4e8


def apot_reference(x: torch.Tensor, alpha: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The APoT repository's weight quantizer: clip, nearest level by distance
    to every level, straight-through estimator via detach, times alpha."""
    data = (x / alpha).clamp(-1, 1)
    idx = (data.abs().unsqueeze(-1) - levels).abs().argmin(dim=-1)
    q = levels[idx] * data.sign()
    return ((q - data).detach() + data) * alpha


def fwd_bwd(f, grad, inputs):
    def run():
        torch.autograd.grad(f(), inputs, grad)
    return run


def measure(n: int, repeats: int) -> list[list[object]]:
    x = torch.randn(n) * 0.7
    g = torch.randn(n)
    xg = x.clone().requires_grad_()
    scale = torch.tensor([0.15], requires_grad=True)
    zero = torch.zeros(1, dtype=torch.int32)
    with torch.no_grad():
        t_uni_f = median_seconds(lambda: qx.fake_quant_uniform(x, scale, zero, -8, 7), repeats)
    t_uni = median_seconds(fwd_bwd(lambda: qx.fake_quant_uniform(xg, scale, zero, -8, 7), g, (xg, scale)), repeats)
    rows = [[f"{n:.0e}", "uniform", 4, t_uni_f * 1e3, t_uni * 1e3, 16 * n / t_uni / 1e9, 1.0, "-"]]
    for scheme, bits in GRIDS:
        alpha = torch.tensor(1.2, requires_grad=True)
        with torch.no_grad():
            t_f = median_seconds(lambda: fake_quant_levels(x, alpha, scheme, bits, True), repeats)
        t = median_seconds(fwd_bwd(lambda: fake_quant_levels(xg, alpha, scheme, bits, True), g, (xg, alpha)),
                           repeats)
        levels = qx.levels(scheme, bits - 1, signed=False).float()
        if n * len(levels) <= MAX_COMPOSITION_FLOATS:
            t_ref = median_seconds(fwd_bwd(lambda: apot_reference(xg, alpha, levels), g, (xg, alpha)),
                                   max(3, repeats // 3))
            speedup = t_ref / t
        else:
            speedup = "skipped (N x levels too large)"
        rows.append([f"{n:.0e}", scheme, bits, t_f * 1e3, t * 1e3, 16 * n / t / 1e9, t / t_uni, speedup])
    return rows


def run(quick: bool = False, full: bool = False) -> str:
    rows = []
    for n in sizes(quick, full):
        rows += measure(n, 25 if n <= 10**6 else 5)
    table = markdown_table(["elements", "scheme", "bits (signed)", "fwd ms", "fwd+bwd ms", "fwd+bwd GB/s",
                            "fwd+bwd / uniform", "composition / quantext"], rows)
    return f"PoT / APoT fake quant, CPU ({machine()})\n\n{table}\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes up to 1e6")
    parser.add_argument("--full", action="store_true", help="sizes up to 1e8")
    args = parser.parse_args()
    print(run(args.quick, args.full))
