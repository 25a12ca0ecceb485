"""Uniform fake quantization vs ATen's fake-quant ops on the same tensors.

Prints, per size: quantext time, ATen time, the ratio ATen/quantext (> 1 means
quantext is faster), the bytes per element each design moves and quantext's
achieved bandwidth over them. Forward: x in, y out, and ATen's 1-byte mask
(its forward always writes it). Forward+backward with fixed parameters: ATen
reads the byte mask back with dy and writes dx (18 B per float32 element);
quantext saves a bit-packed mask instead of x (16.25 B). LSQ+ needs x in the
backward in both (20 B, a lower bound for ATen's composition). The smallest size
(128 elements) measures the per-call overhead: argument and value checks,
dispatch, autograd; there a module-path row also times a calibrated
``qx.nn.Quantizer`` (per tensor, 8-bit) against the same ATen op, i.e. what a
QAT layer pays per quantizer call. A second table times the per-channel ops on
the same values with the channel axis outermost and innermost in memory, a
third the int4 op per group of 32 against per tensor.

    python benchmarks/uniform.py [--quick] [--full]
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, markdown_table, median_seconds, size_sweep_main, sizes  # noqa: E402

import quantext as qx  # noqa: E402
from quantext.functional import fake_quant_levels  # noqa: E402

CHANNELS = 64
GROUP = 32
OVERHEAD_SIZE = 128  # elements: the call costs more than the arithmetic


def cases(n: int, device: str):
    """(name, quantext fn, ATen fn, quantext bytes, ATen bytes) per element, for n elements."""
    x = torch.randn(CHANNELS, n // CHANNELS, device=device) * 3
    g = torch.randn_like(x)
    s1, z1 = torch.tensor([0.02], device=device), torch.tensor([3], dtype=torch.int32, device=device)
    sc = torch.rand(CHANNELS, device=device) * 0.05 + 0.01
    zc = torch.zeros(CHANNELS, dtype=torch.int32, device=device)
    xg = x.clone().requires_grad_()
    sl = torch.tensor([0.02], device=device, requires_grad=True)
    zl = torch.tensor([3.0], device=device, requires_grad=True)
    e = x.element_size()
    fwd_bytes, masked_bytes = (2 * e, 2 * e + 1), (4 * e + 0.25, 4 * e + 2)

    def fwd_bwd(f):
        def run():
            y = f()
            y.backward(g)
        return run

    with torch.no_grad():
        if n == OVERHEAD_SIZE:
            quantizer = qx.nn.Quantizer(qx.QuantSpec(bits=8)).to(device).set_qparams(scale=torch.tensor(0.02))
            yield ("Quantizer module, per-tensor fwd", lambda: quantizer(x),
                   lambda: torch.fake_quantize_per_tensor_affine(x, 0.02, 0, -128, 127), *fwd_bytes)
        yield ("per-tensor fwd", lambda: qx.fake_quant_uniform(x, s1, z1, -128, 127),
               lambda: torch.fake_quantize_per_tensor_affine(x, 0.02, 3, -128, 127), *fwd_bytes)
        yield ("per-channel fwd", lambda: qx.fake_quant_uniform(x, sc, zc, -128, 127, axis=0),
               lambda: torch.fake_quantize_per_channel_affine(x, sc, zc, 0, -128, 127), *fwd_bytes)
    yield ("per-tensor fwd+bwd", fwd_bwd(lambda: qx.fake_quant_uniform(xg, s1, z1, -128, 127)),
           fwd_bwd(lambda: torch.fake_quantize_per_tensor_affine(xg, 0.02, 3, -128, 127)), *masked_bytes)
    yield ("per-channel fwd+bwd", fwd_bwd(lambda: qx.fake_quant_uniform(xg, sc, zc, -128, 127, axis=0)),
           fwd_bwd(lambda: torch.fake_quantize_per_channel_affine(xg, sc, zc, 0, -128, 127)), *masked_bytes)
    yield ("LSQ+ per-tensor fwd+bwd",
           fwd_bwd(lambda: qx.fake_quant_uniform(xg, sl, zl, 0, 255, grad_factor=0.01)),
           fwd_bwd(lambda: torch._fake_quantize_learnable_per_tensor_affine(xg, sl, zl, 0, 255, 0.01)), 5 * e, 5 * e)


def run(quick: bool = False, full: bool = False, device: str = "cpu") -> str:
    rows = []
    for n in [OVERHEAD_SIZE] + sizes(quick, full):
        n -= n % CHANNELS
        for name, ours, aten, ours_bytes, aten_bytes in cases(n, device):
            repeats = 30 if n <= 10**6 else 7
            t_ours = median_seconds(ours, repeats=repeats)
            t_aten = median_seconds(aten, repeats=repeats)
            rows.append([name, f"{n:.0e}" if n >= 1000 else str(n), t_ours * 1e6, t_aten * 1e6, t_aten / t_ours,
                         f"{ours_bytes:g}", f"{aten_bytes:g}", ours_bytes * n / t_ours / 1e9])
    table = markdown_table(["op", "elements", "quantext µs", "ATen µs", "ATen/quantext", "quantext B/elem",
                            "ATen B/elem", "quantext GB/s"], rows)
    layout_rows = [row for n in sizes(quick, full)[1:] for row in axis_layout_rows(n - n % CHANNELS, device)]
    layouts = markdown_table(["op", "elements", "axis outermost µs", "axis innermost µs", "innermost/outermost"],
                             layout_rows)
    group_rows = [row for n in sizes(quick, full)[1:] for row in group_size_rows(n - n % CHANNELS, device)]
    groups = markdown_table(["op", "elements", "per tensor µs", "per group µs", "group/tensor"], group_rows)
    return (f"Uniform fake quant ({device}; {machine()})\n\n{table}\n\n"
            f"Per channel, channel axis outermost ([C, N], axis 0) vs innermost ([N, C], axis 1), same values:\n\n"
            f"{layouts}\n\nPer group of {GROUP} along the last dimension (int4, the transformer weights' layout) "
            f"vs per tensor, same values:\n\n{groups}\n")


def group_size_rows(n: int, device: str) -> list[list[object]]:
    """The int4 op per tensor and per group of GROUP on the same [n / 256, 256] values."""
    x = torch.randn(n // 256, 256, device=device)
    g = torch.randn_like(x)
    per_tensor = (torch.tensor(0.4, device=device), torch.zeros((), device=device))
    per_group = (x.abs().unflatten(1, (-1, GROUP)).amax(-1) / 7, torch.zeros(x.shape[0], 256 // GROUP, device=device))

    def call(params, learned, backward):
        xg = x.detach().requires_grad_(backward)
        s, z = (p.clone().requires_grad_(learned) for p in params)
        axis, group = (None, 0) if s.dim() == 0 else (1, GROUP)

        def f():
            y = qx.fake_quant_uniform(xg, s, z, -8, 7, axis=axis, group_size=group)
            if backward:
                y.backward(g)
        return f

    rows = []
    for name, learned, backward in (("fwd", False, False), ("fwd+bwd", False, True), ("LSQ+ fwd+bwd", True, True)):
        repeats = 15 if n <= 10**6 else 5
        t_tensor = median_seconds(call(per_tensor, learned, backward), repeats=repeats)
        t_group = median_seconds(call(per_group, learned, backward), repeats=repeats)
        rows.append([name, f"{n:.0e}", t_tensor * 1e6, t_group * 1e6, t_group / t_tensor])
    return rows


def axis_layout_rows(n: int, device: str) -> list[list[object]]:
    """Per-channel ops on the same values laid out with the channel axis outermost and innermost."""
    outer = torch.randn(CHANNELS, n // CHANNELS, device=device) * 3
    inner = outer.t().contiguous().t()  # the same [C, N] view, channel axis innermost in memory
    g = torch.randn_like(outer)
    sc = torch.rand(CHANNELS, device=device) * 0.05 + 0.01
    zc = torch.zeros(CHANNELS, device=device)
    alpha = torch.rand(CHANNELS, device=device) + 2

    def step(x, learned):
        x = x.detach().requires_grad_()
        s = sc.clone().requires_grad_(learned)
        z = zc.clone().requires_grad_(learned)
        dy = torch.empty_like(x).copy_(g)  # laid out like x, as a channels_last network's gradients are
        return lambda: qx.fake_quant_uniform(x, s, z, -128, 127, axis=0).backward(dy)

    ops = [("per-channel fwd", lambda x: lambda: qx.fake_quant_uniform(x, sc, zc, -128, 127, axis=0)),
           ("per-channel fwd+bwd", lambda x: step(x, False)),
           ("LSQ+ per-channel fwd+bwd", lambda x: step(x, True)),
           ("APoT-8 per-channel fwd", lambda x: lambda: fake_quant_levels(x, alpha, "apot", 8, True, axis=0))]
    rows = []
    for name, make in ops:
        repeats = 15 if n <= 10**6 else 5
        t_outer = median_seconds(make(outer), repeats=repeats)
        t_inner = median_seconds(make(inner), repeats=repeats)
        rows.append([name, f"{n:.0e}", t_outer * 1e6, t_inner * 1e6, t_inner / t_outer])
    return rows


if __name__ == "__main__":
    size_sweep_main(run, __doc__)
