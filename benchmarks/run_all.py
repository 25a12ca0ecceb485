"""Runs every benchmark module of this folder and writes one report.

Each module ``benchmarks/<topic>.py`` that defines ``run(quick: bool) -> str``
is run in turn in this process (``gpu.py`` only where CUDA is available); the
report gets the machine, the date, the exact command, each module's table and
how long it took.

    python benchmarks/run_all.py [--quick] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import shlex
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import machine  # noqa: E402

NOT_BENCHMARKS = {"common", "run_all"}
NEEDS_CUDA = {"gpu"}


def modules() -> list[str]:
    """Benchmark module names, alphabetical; those needing CUDA only where it is available."""
    names = sorted(f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and f[:-3] not in NOT_BENCHMARKS)
    return [n for n in names if n not in NEEDS_CUDA or torch.cuda.is_available()]


def report(quick: bool, command: str) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()[0]
    parts = ["# Benchmarks", "", f"- Machine: {machine()}", f"- Date: {date}", f"- Command: `{command}`"]
    if quick:
        parts.append("- Quick mode: fewer sizes and repeats. Compare the ratios, which are measured against "
                     "peers in the same process on the same tensors, not absolute times.")
    skipped = sorted(NEEDS_CUDA - set(modules()))
    if skipped:
        parts.append(f"- Not run (no CUDA device): {', '.join(f'{n}.py' for n in skipped)}")
    for name in modules():
        module = importlib.import_module(name)
        if not callable(getattr(module, "run", None)):
            continue
        print(f"running benchmarks/{name}.py ...", flush=True)
        start = time.perf_counter()
        table = module.run(quick).strip()
        elapsed = time.perf_counter() - start
        title = " ".join((module.__doc__ or name).strip().split("\n\n")[0].split()).rstrip(":")
        parts += ["", f"## {name}.py: {title}", "", table, "", f"({elapsed:.0f} s)"]
    # Other processes' load shows up as scheduler stalls in the medians.
    parts.insert(5, f"- Load average (1 min) at the start and the end: {load_before:.1f} and "
                    f"{os.getloadavg()[0]:.1f}, on {os.cpu_count()} CPUs")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="quick mode of every benchmark")
    parser.add_argument("--out", default=os.path.join(HERE, "..", "docs", "benchmarks.md"),
                        help="Markdown file to write (default: docs/benchmarks.md)")
    args = parser.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    text = report(args.quick, command)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
