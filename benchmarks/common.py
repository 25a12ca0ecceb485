"""Timing and reporting shared by the benchmarks: medians over repeats after
warm-up, and Markdown tables.

Importing it keeps freed memory in the process (glibc malloc): PyTorch's CPU
allocator does not cache, and by default glibc hands large freed buffers back
to the kernel, so the next op's output faults its pages in again (1-3 ms for
4 MB on the development VM), in phases that depend on the allocation history
rather than on the op. Set QUANTEXT_BENCH_MALLOC=default to measure with
glibc's defaults.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import time
from typing import Callable

import torch


def _steady_allocator() -> str:
    """Raise glibc's mmap and trim thresholds; returns how malloc is set."""
    if os.environ.get("QUANTEXT_BENCH_MALLOC") == "default":
        return "glibc malloc defaults"
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "system malloc"
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    return "glibc malloc, no trim, mmap above 32 MiB" if ok else "glibc malloc defaults"


MALLOC = _steady_allocator()


def median_seconds(fn: Callable[[], object], repeats: int = 15, warmup: int = 3, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()``; on CUDA, synchronizes around each call."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() and torch.cuda.is_initialized() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_time:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fwd_bwd(f: Callable[[], torch.Tensor], grad: torch.Tensor, inputs: tuple) -> Callable[[], None]:
    """A call of the forward ``f`` and the backward of ``grad`` into ``inputs``."""
    def run():
        torch.autograd.grad(f(), inputs, grad)
    return run


def interleaved_medians(fns: dict, repeats: int, device: str, warmup: int = 2) -> dict:
    """Median seconds of each function, timed in rounds that call every
    function once, so that load from other processes hits all alike and the
    ratios stay meaningful on a shared machine."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        if device == "cuda":
            events = {}
            for name, fn in fns.items():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                events[name] = (start, end)
            torch.cuda.synchronize()
            for name, (start, end) in events.items():
                times[name].append(start.elapsed_time(end) / 1e3)
            continue
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def machine() -> str:
    """One line naming the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} threads{gpu}; torch {torch.__version__}; {MALLOC}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def sizes(quick: bool, full: bool = False) -> list[int]:
    """Element counts 1e4 .. 1e7 (1e8 with ``full``; up to 1e6 when ``quick``)."""
    top = 8 if full else (6 if quick else 7)
    return [10**k for k in range(4, top + 1)]


def size_sweep_table(title: str, header: list[str], measure: Callable[[int, int, str], list[list[object]]],
                     quick: bool, full: bool, device: str) -> str:
    """``measure(n, repeats, device)``'s rows over the sizes of :func:`sizes`, as a titled Markdown table."""
    rows = [row for n in sizes(quick, full) for row in measure(n, 21 if n <= 10**6 else 7, device)]
    return f"{title}, {device.upper()} ({machine()})\n\n{markdown_table(header, rows)}\n"


def size_sweep_main(run: Callable[[bool, bool, str], str], doc: str | None) -> None:
    """Command line of the size-sweep benchmarks: ``[--quick] [--full] [--device D]``, prints ``run``'s report."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes up to 1e6")
    parser.add_argument("--full", action="store_true", help="sizes up to 1e8")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    print(run(args.quick, args.full, args.device))
