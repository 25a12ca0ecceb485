"""Draws the three quantization schemes side by side: input against
fake-quantized output for uniform, powers-of-two (PoT) and additive
powers-of-two (APoT) at 3 and 4 bits, on [0, 1] (unsigned) and [-1, 1]
(signed, one of the bits is the sign), plus each grid's levels as dots.

Clipping value / range 1 everywhere: uniform uses scale 1 / qmax (signed:
narrow range, so all three grids are symmetric), PoT and APoT ``alpha = 1``.

    python examples/plot_schemes.py [--out out/schemes.png]
"""

from __future__ import annotations

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import quantext as qx  # noqa: E402

SCHEMES = ("uniform", "pot", "apot")
BITS = (3, 4)
COLORS = {"uniform": "tab:blue", "pot": "tab:orange", "apot": "tab:green"}
WIDTHS = {"uniform": 1.4, "pot": 3.0, "apot": 1.4}  # PoT drawn wide: APoT equals it at 3 bits signed


def spec(scheme: str, bits: int, signed: bool) -> qx.QuantSpec:
    return qx.QuantSpec(scheme=scheme, bits=bits, signed=signed, narrow_range=signed and scheme == "uniform")


def quantize(x: torch.Tensor, scheme: str, bits: int, signed: bool) -> torch.Tensor:
    """Fake quantization with clipping value 1."""
    s = spec(scheme, bits, signed)
    if scheme == "uniform":
        qmax = qx.uniform_bounds(bits, signed, s.narrow_range)[1]
        return qx.fake_quant(x, s, scale=torch.tensor(1.0 / qmax))
    return qx.fake_quant(x, s, alpha=torch.tensor(1.0))


def levels(scheme: str, bits: int, signed: bool) -> torch.Tensor:
    """The grid's values for clipping value 1 (uniform: its integers times the scale)."""
    if scheme == "uniform":
        qmin, qmax = qx.uniform_bounds(bits, signed, narrow_range=signed)
        return torch.arange(qmin, qmax + 1, dtype=torch.float64) / qmax
    return qx.levels(scheme, bits, signed=signed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/schemes.png", help="PNG path (default: out/schemes.png)")
    args = parser.parse_args()

    fig, axes = plt.subplots(2, 3, figsize=(15, 9), width_ratios=[1, 1, 1.15])
    for row, signed in enumerate((False, True)):
        domain = "[-1, 1], signed" if signed else "[0, 1], unsigned"
        x = torch.linspace(-1.15 if signed else -0.1, 1.15, 4001)
        for col, bits in enumerate(BITS):
            ax = axes[row, col]
            ax.plot(x, x, color="0.75", lw=1, ls="--", label="identity")
            for scheme in SCHEMES:
                ax.plot(x, quantize(x, scheme, bits, signed), color=COLORS[scheme], lw=WIDTHS[scheme],
                        label=f"{scheme} ({len(levels(scheme, bits, signed))} levels)")
            ax.set_title(f"{bits} bits on {domain}")
            ax.set_xlabel("input x")
            ax.set_ylabel("fake-quantized output")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="upper left")
        ax = axes[row, 2]
        ticks = []
        for i, (scheme, bits) in enumerate((s, b) for b in BITS for s in SCHEMES):
            grid = levels(scheme, bits, signed)
            ax.axhline(i, color="0.85", lw=0.8, zorder=0)
            ax.plot(grid, [i] * len(grid), "o", ms=4, color=COLORS[scheme])
            ticks.append(f"{scheme} {bits}-bit")
        ax.set_yticks(range(len(ticks)), ticks)
        ax.set_ylim(-0.7, len(ticks) - 0.3)
        ax.set_xlabel("level")
        ax.set_title(f"level sets on {domain}")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("quantext schemes: uniform, powers of two (PoT), additive powers of two (APoT, k=2); "
                 "clipping value 1")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
