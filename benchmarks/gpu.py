"""GPU kernel benchmark: every fake-quant kernel against the measured
device-to-device copy (the bandwidth ceiling) and against ATen's ops on the
same tensors. Timed with CUDA events (median of many runs), inputs rotated
so that the L2 cache does not serve them. The kernel tables run with the
value checks off; a last table shows what the checks' one host sync per
forward costs.

    python benchmarks/gpu.py                 # on a CUDA machine
    python benchmarks/gpu.py --dry-run       # tiny sizes on the CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, markdown_table  # noqa: E402

import quantext as qx  # noqa: E402

ROTATE_BYTES = 512 << 20  # several times any L2 cache
CHANNELS = 256
GROUP = 128


class Timer:
    """Median time of a callable over rotating input sets."""

    def __init__(self, device: str, repeats: int) -> None:
        self.device, self.repeats = device, repeats

    def __call__(self, fn: Callable[[int], object], sets: int) -> float:
        for i in range(min(sets, 3)):
            fn(i)
        if self.device != "cuda":
            times = []
            for r in range(self.repeats):
                t0 = time.perf_counter()
                fn(r % sets)
                times.append(time.perf_counter() - t0)
            return statistics.median(times)
        torch.cuda.synchronize()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(self.repeats)]
        for r in range(self.repeats):
            starts[r].record()
            fn(r % sets)
            ends[r].record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3


def copy_bandwidth(timer: Timer, numel: int, device: str) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    t = timer(lambda i: dst.copy_(src), sets=1)
    return 2 * numel * 4 / t


def make_sets(numel: int, dtype: torch.dtype, device: str, count: int) -> list[torch.Tensor]:
    return [(torch.randn(CHANNELS, numel // CHANNELS, device=device) * 3).to(dtype) for _ in range(count)]


def kernel_cases(dtype: torch.dtype, device: str):
    """(name, quantext(x, g), ATen(x, g) or None, passes over x) with g=None for forward only."""
    s1 = torch.tensor([0.02], device=device)
    z1 = torch.zeros(1, dtype=torch.int32, device=device)
    sc = torch.rand(CHANNELS, device=device) * 0.05 + 0.01
    zc = torch.zeros(CHANNELS, dtype=torch.int32, device=device)
    sl = torch.tensor([0.02], device=device, requires_grad=True)
    zl = torch.tensor([3.0], device=device, requires_grad=True)

    def run(f, needs_param_grad=False):
        def go(x, g):
            if g is None:
                with torch.no_grad():
                    return f(x)
            xg = x.detach().requires_grad_()
            f(xg).backward(g)
        return go

    def per_group(x):
        shape = (x.shape[0], x.shape[1] // GROUP)
        s = torch.full(shape, 0.02, device=device)
        return qx.fake_quant_uniform(x, s, torch.zeros(shape, dtype=torch.int32, device=device), -8, 7, axis=1,
                                     group_size=GROUP)

    yield ("uniform per-tensor", run(lambda x: qx.fake_quant_uniform(x, s1, z1, -128, 127)),
           run(lambda x: torch.fake_quantize_per_tensor_affine(x, 0.02, 0, -128, 127)))
    aten_channel = None if dtype == torch.bfloat16 else run(
        lambda x: torch.fake_quantize_per_channel_affine(x, sc, zc, 0, -128, 127))
    yield ("uniform per-channel", run(lambda x: qx.fake_quant_uniform(x, sc, zc, -128, 127, axis=0)), aten_channel)
    yield ("uniform per-group", run(per_group), None)
    aten_lsq = run(lambda x: torch._fake_quantize_learnable_per_tensor_affine(x, sl, zl, 0, 255, 0.01)) \
        if dtype == torch.float32 else None
    yield ("LSQ+ per-tensor", run(lambda x: qx.fake_quant_uniform(x, sl, zl, 0, 255, grad_factor=0.01)), aten_lsq)


def kernel_table(timer: Timer, exponents: list[int], dtypes: list[torch.dtype], device: str, ceiling: float) -> str:
    rows = []
    for dtype in dtypes:
        for e in exponents:
            numel = 1 << e
            elem = torch.tensor([], dtype=dtype).element_size()
            sets = max(1, min(16, ROTATE_BYTES // (numel * elem)))
            xs = make_sets(numel, dtype, device, sets)
            gs = [torch.randn_like(x) for x in xs[: min(sets, 2)]]
            for name, ours, aten in kernel_cases(dtype, device):
                for mode, passes in (("fwd", 2), ("fwd+bwd", 4)):
                    def call(f):
                        return lambda i: f(xs[i], None if mode == "fwd" else gs[i % len(gs)])
                    t = timer(call(ours), sets)
                    bw = passes * numel * elem / t
                    ratio = f"{timer(call(aten), sets) / t:.2f}" if aten is not None else "n/a"
                    rows.append([str(dtype).replace("torch.", ""), f"2^{e}", name, mode, t * 1e6, bw / 1e9,
                                 f"{100 * bw / ceiling:.0f}%", ratio])
            del xs, gs
    return markdown_table(["dtype", "elements", "kernel", "pass", "µs", "GB/s", "of copy", "ATen/quantext"], rows)


def histogram_table(timer: Timer, device: str, ceiling: float, exponent: int) -> str:
    """Calibration histogram (2048 bins) bandwidth: bytes of x read once."""
    rows = []
    x = torch.randn(1 << exponent, device=device)
    amax = x.abs().max()
    bound = amax.item()
    for name, fn in (("histogram", lambda i: qx.histogram(x, 2048, -amax, amax)),
                     ("magnitude_histogram", lambda i: qx.magnitude_histogram(x, 2048, amax)),
                     ("torch.histc (peer)", lambda i: torch.histc(x, 2048, -bound, bound))):
        t = timer(fn, sets=1)
        bw = x.numel() * 4 / t
        rows.append([name, f"2^{exponent}", t * 1e6, bw / 1e9, f"{100 * bw / ceiling:.0f}%"])
    return markdown_table(["kernel", "elements", "µs", "GB/s", "of copy"], rows)


def value_check_table(timer: Timer, device: str) -> str:
    """Forward of a small tensor (launch-bound) with and without the value checks."""
    x = torch.randn(CHANNELS, 256, device=device)
    s, z = torch.tensor([0.02], device=device), torch.zeros(1, dtype=torch.int32, device=device)
    rows = []
    for checks in (True, False):
        qx.set_value_checks(checks)
        t = timer(lambda i: qx.fake_quant_uniform(x, s, z, -128, 127), sets=1)
        rows.append([f"quantext, value checks {'on' if checks else 'off'}", t * 1e6])
    rows.append(["ATen fake_quantize_per_tensor_affine", timer(
        lambda i: torch.fake_quantize_per_tensor_affine(x, 0.02, 0, -128, 127), sets=1) * 1e6])
    return markdown_table([f"uniform per-tensor forward, {x.numel()} elements", "µs per call"], rows)


def run(quick: bool = False, device: str = "cuda", dry_run: bool = False) -> str:
    if dry_run:
        device, exponents, dtypes, repeats = "cpu", [16, 18], [torch.float32, torch.bfloat16], 3
    else:
        exponents = [16, 20, 24] if quick else [16, 20, 24, 26, 28]
        dtypes, repeats = [torch.float32, torch.float16, torch.bfloat16], 50
    timer = Timer(device, repeats)
    ceiling = copy_bandwidth(timer, 1 << (20 if dry_run else 28), device)
    qx.set_value_checks(False)
    out = [f"GPU kernels ({machine()})", "", f"Device-to-device copy: {ceiling / 1e9:.0f} GB/s (read + write)", "",
           kernel_table(timer, exponents, dtypes, device, ceiling), "",
           histogram_table(timer, device, ceiling, 18 if dry_run else 26), "", value_check_table(timer, device)]
    qx.set_value_checks(True)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, to check the script")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA device (use --dry-run to check the script on a CPU)")
    print(run(args.quick, dry_run=args.dry_run))
