"""Dynamic activation fake quantization (``QuantSpec(dynamic=True)``) against
torchao's per-token fake quantizer (``IntxFakeQuantizer`` with an
``IntxFakeQuantizeConfig(torch.int8, "per_token")``, when torchao imports) and
against the pure-PyTorch composition (row min/max, scale, zero point, round,
clamp, straight-through estimator by detach), measured in the same run.

Activations ``[n / 1000, 1000]`` (tokens x features), int8 per token,
asymmetric (torchao's default) and symmetric, and per tensor (uint8
asymmetric, ONNX's DynamicQuantizeLinear), forward and forward+backward
(gradient for x). Ratios above 1 mean quantext is faster (target: faster than
torchao at every size). torchao 0.18 has neither a symmetric per-token nor a
per-tensor dynamic fake quantizer ("not supported").

    python benchmarks/dynamic.py [--quick] [--full] [--device cpu|cuda]
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fwd_bwd, interleaved_medians, size_sweep_main, size_sweep_table  # noqa: E402

import quantext as qx  # noqa: E402

COLS = 1000
CASES = [("token", False), ("token", True), ("tensor", False)]  # granularity, symmetric


def composition(x: torch.Tensor, qmin: int, qmax: int, symmetric: bool, per_token: bool) -> torch.Tensor:
    """Dynamic fake quant from PyTorch ops, the way QAT code without a fused op writes it."""
    dims = (-1,) if per_token else tuple(range(x.dim()))
    lo = x.amin(dims, keepdim=True).clamp(max=0)
    hi = x.amax(dims, keepdim=True).clamp(min=0)
    if symmetric:
        scale = (torch.maximum(-lo, hi) / qmax).clamp_min(1e-8)
        zero_point = torch.zeros_like(scale)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(1e-8)
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    y = (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale
    return x + (y - x).detach()


def torchao_quantizer():
    """torchao's per-token int8 fake quantizer (asymmetric: its per-token path has no
    symmetric form), or None where torchao does not import."""
    try:
        from torchao.quantization.qat import IntxFakeQuantizeConfig
        from torchao.quantization.qat.fake_quantizer import IntxFakeQuantizer
    except Exception:  # not installed, or built for another torch
        return None
    return IntxFakeQuantizer(IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False))


def measure(n: int, repeats: int, device: str) -> list[list[object]]:
    x = torch.randn(n // COLS, COLS, device=device) * torch.rand(n // COLS, 1, device=device) * 4
    xg = x.clone().requires_grad_()
    g = torch.randn_like(x)
    rows = []
    for granularity, symmetric in CASES:
        spec = qx.QuantSpec(bits=8, signed=symmetric, symmetric=symmetric, granularity=granularity, dynamic=True)
        qmin, qmax = spec.bounds
        per_token = granularity == "token"
        fns = {"fwd": lambda: qx.fake_quant(x, spec),
               "fwd+bwd": fwd_bwd(lambda: qx.fake_quant(xg, spec), g, (xg,)),
               "composition fwd": lambda: composition(x, qmin, qmax, symmetric, per_token),
               "composition fwd+bwd": fwd_bwd(lambda: composition(xg, qmin, qmax, symmetric, per_token), g, (xg,))}
        fq = torchao_quantizer() if per_token and not symmetric else None
        if fq is not None:
            fq = fq.to(device)
            fns["torchao fwd"] = lambda: fq(x)
            fns["torchao fwd+bwd"] = fwd_bwd(lambda: fq(xg), g, (xg,))
        t = interleaved_medians(fns, repeats, device)
        ours, both = t["fwd"], t["fwd+bwd"]
        ao = [t[k] / ref if k in t else "not supported"
              for k, ref in (("torchao fwd", ours), ("torchao fwd+bwd", both))]
        rows.append([f"{n:.0e}", granularity, "symmetric int8" if symmetric else "asymmetric " +
                     ("int8" if per_token else "uint8"), ours * 1e3, both * 1e3, *ao,
                     t["composition fwd"] / ours, t["composition fwd+bwd"] / both])
    return rows


def run(quick: bool = False, full: bool = False, device: str = "cpu") -> str:
    return size_sweep_table("Dynamic fake quant", ["elements", "per", "grid", "fwd ms", "fwd+bwd ms",
                                                   "torchao / quantext fwd", "torchao / quantext fwd+bwd",
                                                   "composition / quantext fwd", "composition / quantext fwd+bwd"],
                            measure, quick, full, device)


if __name__ == "__main__":
    size_sweep_main(run, __doc__)
