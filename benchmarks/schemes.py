"""PoT / APoT fake quantization vs the uniform kernel and vs a pure-PyTorch
composition written the way the published APoT code does it (distance from
every element to every level: an N x levels tensor, then argmin).

Per size and grid: forward and forward+backward time (learned alpha / scale
with gradients), quantext's achieved bandwidth on forward+backward (x in, y
out, dy in, dx out), its ratio to the 4-bit uniform kernel with a learned scale
(target <= 1.3), the speed-up over the composition (target >= 10 at 1e6+) and
the integer-code op (quantize_uniform / quantize_levels, what export and
inspection run) against the forward.

    python benchmarks/schemes.py [--quick] [--full] [--device cpu|cuda]

On CUDA each call is timed with device events, with the value checks off
(qx.set_value_checks(False)): they cost every op alike one host sync per
forward, which benchmarks/gpu.py measures on its own.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (fwd_bwd, interleaved_medians, median_seconds, size_sweep_main,  # noqa: E402
                    size_sweep_table)

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


def measure(n: int, repeats: int, device: str) -> list[list[object]]:
    x = torch.randn(n, device=device) * 0.7
    g = torch.randn(n, device=device)
    xg = x.clone().requires_grad_()
    scale = torch.tensor([0.15], device=device, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.int32, device=device)
    alpha = torch.tensor(1.2, device=device, requires_grad=True)
    ops = torch.ops.quantext
    fns = {("uniform", 4, "fwd"): lambda: qx.fake_quant_uniform(x, scale.detach(), zero, -8, 7),
           ("uniform", 4, "codes"): lambda: ops.quantize_uniform(x, scale.detach(), zero, -8, 7),
           ("uniform", 4, "fwd+bwd"): fwd_bwd(lambda: qx.fake_quant_uniform(xg, scale, zero, -8, 7), g, (xg, scale))}
    for scheme, bits in GRIDS:
        fns[(scheme, bits, "fwd")] = (lambda s=scheme, b=bits: fake_quant_levels(x, alpha.detach(), s, b, True))
        fns[(scheme, bits, "codes")] = (lambda s=scheme, b=bits: ops.quantize_levels(x, alpha.detach(), s, b, True))
        fns[(scheme, bits, "fwd+bwd")] = fwd_bwd(lambda s=scheme, b=bits: fake_quant_levels(xg, alpha, s, b, True),
                                                 g, (xg, alpha))
    t = interleaved_medians(fns, repeats, device)
    # Timed apart: its N x levels temporaries would disturb the others.
    for scheme, bits in GRIDS:
        levels = qx.levels(scheme, bits - 1, signed=False).float().to(device)
        if n * len(levels) <= MAX_COMPOSITION_FLOATS:
            t[(scheme, bits, "composition")] = median_seconds(
                fwd_bwd(lambda: apot_reference(xg, alpha, levels), g, (xg, alpha)), max(3, repeats // 3))
    uniform = t[("uniform", 4, "fwd+bwd")]
    rows = []
    for scheme, bits in [("uniform", 4)] + GRIDS:
        both = t[(scheme, bits, "fwd+bwd")]
        composition = t.get((scheme, bits, "composition"))
        fwd = t[(scheme, bits, "fwd")]
        rows.append([f"{n:.0e}", scheme, bits, fwd * 1e3, both * 1e3, 16 * n / both / 1e9,
                     both / uniform, "-" if scheme == "uniform" else
                     (composition / both if composition else "skipped (N x levels too large)"),
                     t[(scheme, bits, "codes")] / fwd])
    return rows


def run(quick: bool = False, full: bool = False, device: str = "cpu") -> str:
    qx.set_value_checks(device == "cpu")  # CPU values are checked regardless, at no sync
    return size_sweep_table("PoT / APoT fake quant", ["elements", "scheme", "bits (signed)", "fwd ms", "fwd+bwd ms",
                                                      "fwd+bwd GB/s", "fwd+bwd / uniform", "composition / quantext",
                                                      "codes / fwd"], measure, quick, full, device)


if __name__ == "__main__":
    size_sweep_main(run, __doc__)
