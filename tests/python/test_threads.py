"""Stress: the CPU kernels (uniform and PoT/APoT forward and backward, codes,
histograms) called from several Python threads at once give the results of
serial calls, and intra-op thread counts change nothing: forward values, dx,
codes and histograms are bit-identical for any ``torch.set_num_threads``; the
parameter-gradient sums are bit-identical from run to run at a given thread
count."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest
import torch

import quantext as qx

ops = torch.ops.quantext
THREAD_COUNTS = (1, 2, 3, 4)
N = 1 << 20  # enough items (8192 elements each per tensor) to split across threads


def uniform_job(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, axis: int | None,
                qmin: int = -8, qmax: int = 7) -> Callable[[], dict[str, torch.Tensor]]:
    """Forward and backward with learnable scale and zero point (LSQ+), from fresh leaves."""
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x.dtype)

    def run() -> dict[str, torch.Tensor]:
        xl = x.detach().requires_grad_()
        sl, zl = scale.clone().requires_grad_(), zero.clone().requires_grad_()
        y = qx.fake_quant_uniform(xl, sl, zl, qmin, qmax, axis, 0, 0.01)
        dx, ds, dz = torch.autograd.grad(y, (xl, sl, zl), dy)
        return {"y": y.detach(), "dx": dx, "dscale": ds, "dzero": dz}

    return run


def levels_job(x: torch.Tensor, alpha: torch.Tensor, scheme: str, axis: int | None) -> Callable[[], dict]:
    """PoT/APoT forward and backward with a learnable alpha, and the integer codes."""
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(x.dtype)

    def run() -> dict[str, torch.Tensor]:
        xl, al = x.detach().requires_grad_(), alpha.clone().requires_grad_()
        y = qx.functional.fake_quant_levels(xl, al, scheme, 5, True, axis=axis, grad_factor=0.01)
        dx, da = torch.autograd.grad(y, (xl, al), dy)
        codes = ops.quantize_levels(x, alpha, scheme, 5, True, 2, "nearest", axis)
        return {"y": y.detach(), "dx": dx, "dalpha": da, "codes": codes}

    return run


def histogram_job(x: torch.Tensor) -> Callable[[], dict[str, torch.Tensor]]:
    def run() -> dict[str, torch.Tensor]:
        return {"hist": qx.histogram(x, 2048, -3.0, 3.0), "mag": qx.magnitude_histogram(x, 1000, 2.5),
                "per_channel": qx.histogram(x.view(64, -1), 256, torch.full((64,), -2.0), torch.full((64,), 2.0), 0)}

    return run


def jobs() -> dict[str, Callable[[], dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, generator=g) * 2
    x[::997] = float("nan")
    rows = x.view(64, -1)
    per_channel_scale = torch.rand(64, generator=g) * 0.3 + 0.05
    return {
        "uniform per tensor": uniform_job(x, torch.tensor([0.2]), torch.tensor([1.0]), None),
        "uniform per channel": uniform_job(rows, per_channel_scale, torch.zeros(64), 0),
        "uniform per channel, channels_last": uniform_job(
            x.view(16, 4, 128, 128).contiguous(memory_format=torch.channels_last), torch.rand(4, generator=g) + 0.1,
            torch.zeros(4), 1),
        "uniform bfloat16": uniform_job(x.bfloat16(), torch.tensor([0.1]), torch.tensor([0.0]), None, 0, 255),
        "pot per tensor": levels_job(x, torch.tensor(2.5), "pot", None),
        "apot per channel": levels_job(rows, per_channel_scale * 10, "apot", 0),
        "histogram": histogram_job(x),
    }


def assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str,
                     keys: tuple[str, ...] | None = None) -> None:
    for key in keys or want:
        a, b = got[key], want[key]
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.nan_to_num(), b.nan_to_num()) and \
            torch.equal(a.isnan(), b.isnan())
        assert same, f"{what}: {key} differs"


@pytest.fixture
def num_threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_concurrent_python_threads_match_serial(num_threads):
    num_threads(2)
    work = jobs()
    serial = {name: job() for name, job in work.items()}
    tasks = [name for name in work for _ in range(3)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda name: (name, work[name]()), tasks))
    assert len(results) == len(tasks)
    for name, result in results:
        assert_identical(result, serial[name], f"{name} (concurrent)")


THREAD_INVARIANT = ("y", "dx", "codes", "hist", "mag", "per_channel")


def test_thread_count_does_not_change_values(num_threads):
    work = jobs()
    num_threads(1)
    reference = {name: job() for name, job in work.items()}
    for threads in THREAD_COUNTS:
        num_threads(threads)
        for name, job in work.items():
            first = job()
            keys = tuple(k for k in first if k in THREAD_INVARIANT)
            assert_identical(first, reference[name], f"{name} at {threads} threads vs 1", keys)
            # Reduced sums: identical from run to run at this thread count.
            assert_identical(job(), first, f"{name}, second run at {threads} threads")
