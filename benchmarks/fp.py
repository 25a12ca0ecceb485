"""Minifloat fake quantization (scheme="fp") against the uniform op and the
peers' emulations, measured in the same run on ``[n / 256, 256]`` tensors:

- FP8 E4M3 with a float32 scale per tensor against the uniform int8 op per
  tensor and against the PyTorch composition (``(x / s).clamp(-448, 448)``,
  a ``torch.float8_e4m3fn`` round trip, ``* s``, straight-through by detach);
- MXFP8 / MXFP4 (blocks of 32, E8M0 scales) and NVFP4 (blocks of 16, E4M3
  scales and a tensor scale), scales computed from each block's max, against
  the uniform int4 op per group of 32 and against torchao's emulation
  (``to_mx`` + ``to_dtype``, ``nvfp4_quantize`` + dequantization) where
  torchao imports; "nvfp4 static" is NVFP4 with a given tensor scale (one
  pass over the input; the dynamic tensor scale needs a second).

Ratios above 1: quantext is faster; "/ uniform" is quantext's time over the
uniform op's (target: at most 1.3).

    python benchmarks/fp.py [--quick] [--full] [--device cpu|cuda]
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import fwd_bwd, interleaved_medians, size_sweep_main, size_sweep_table  # noqa: E402

import quantext as qx  # noqa: E402
from quantext.spec import fp_spec  # noqa: E402

COLS = 256


def torchao_emulation(name: str):
    """torchao's MX / NVFP4 quantize-dequantize, or None where it does not import."""
    try:
        from torchao.prototype.mx_formats import mx_tensor, nvfp4_tensor
        from torchao.prototype.mx_formats.kernels import unpack_uint4
    except Exception:  # not installed, or built for another torch
        return None
    if name == "nvfp4":
        def nvfp4(x: torch.Tensor) -> torch.Tensor:
            tensor_scale = x.abs().amax() / (448.0 * 6.0)
            scales, packed = nvfp4_tensor.nvfp4_quantize(x, 16, tensor_scale)
            values = mx_tensor.f4_unpacked_to_f32(unpack_uint4(packed.view(torch.uint8)).view(x.shape))
            return (values.view(x.shape[0], -1, 16) * (scales.float() * tensor_scale).unsqueeze(-1)).view(x.shape)
        return nvfp4
    elem = {"mxfp8": torch.float8_e4m3fn, "mxfp4": torch.float4_e2m1fn_x2}[name]

    def mx(x: torch.Tensor) -> torch.Tensor:
        scale, data = mx_tensor.to_mx(x, elem, 32)
        return mx_tensor.to_dtype(data, scale, elem, 32, torch.float32)
    return mx


def fp8_composition(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    y = (x / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float() * s
    return x + (y - x).detach()


def measure(n: int, repeats: int, device: str) -> list[list[object]]:
    x = torch.randn(n // COLS, COLS, device=device) * torch.rand(n // COLS, 1, device=device) * 4
    xg = x.clone().requires_grad_()
    g = torch.randn_like(x)
    s = torch.tensor(float(x.abs().max()) / 448.0, device=device)
    u8 = qx.QuantSpec(bits=8)
    u4 = qx.QuantSpec(bits=4, granularity="group", axis=1, group_size=32)
    s8 = torch.tensor(float(x.abs().max()) / 127.0, device=device)
    z8 = torch.zeros((), dtype=torch.int32, device=device)
    s4 = x.abs().unflatten(1, (-1, 32)).amax(-1) / 7
    e4m3 = fp_spec("e4m3")
    fns = {"uniform8": lambda: qx.fake_quant(x, u8, scale=s8, zero_point=z8),
           "uniform8 bwd": fwd_bwd(lambda: qx.fake_quant(xg, u8, scale=s8, zero_point=z8), g, (xg,)),
           "uniform4": lambda: qx.fake_quant(x, u4, scale=s4),
           "uniform4 bwd": fwd_bwd(lambda: qx.fake_quant(xg, u4, scale=s4), g, (xg,)),
           "e4m3": lambda: qx.fake_quant(x, e4m3, scale=s),
           "e4m3 bwd": fwd_bwd(lambda: qx.fake_quant(xg, e4m3, scale=s), g, (xg,)),
           "e4m3 peer": lambda: fp8_composition(x, s),
           "e4m3 peer bwd": fwd_bwd(lambda: fp8_composition(xg, s), g, (xg,))}
    for name in ("mxfp8", "mxfp4", "nvfp4"):
        spec = fp_spec(name)
        fns[name] = lambda spec=spec: qx.fake_quant(x, spec)
        fns[name + " bwd"] = fwd_bwd(lambda spec=spec: qx.fake_quant(xg, spec), g, (xg,))
        peer = torchao_emulation(name)
        if peer is not None:
            fns[name + " peer"] = lambda peer=peer: peer(x)
    # NVFP4 with a given tensor scale (the op's tensor_scale): one pass over x instead of two
    ts = x.abs().amax() / (448.0 * 6.0)
    fns["nvfp4 static"] = lambda: qx.ops.fake_quant_fp_blocks(x, 2, 1, "finite", 16, "e4m3", ts)
    fns["nvfp4 static bwd"] = fwd_bwd(lambda: qx.ops.fake_quant_fp_blocks(xg, 2, 1, "finite", 16, "e4m3", ts), g, (xg,))
    t = interleaved_medians(fns, repeats, device)
    rows = []
    for name, uniform, peer_name in (("e4m3", "uniform8", "composition"), ("mxfp8", "uniform4", "torchao"),
                                     ("mxfp4", "uniform4", "torchao"), ("nvfp4", "uniform4", "torchao"),
                                     ("nvfp4 static", "uniform4", "torchao")):
        peer = t.get(name.split()[0] + " peer")  # (static NVFP4 against torchao's NVFP4)
        peer_bwd = t.get(name + " peer bwd")
        rows.append([f"{n:.0e}", name, t[name] * 1e3, t[name + " bwd"] * 1e3, t[name] / t[uniform],
                     t[name + " bwd"] / t[uniform + " bwd"], peer_name,
                     peer / t[name] if peer else "not run", peer_bwd / t[name + " bwd"] if peer_bwd else "-"])
    return rows


def run(quick: bool = False, full: bool = False, device: str = "cpu") -> str:
    return size_sweep_table("Minifloat fake quant", ["elements", "format", "fwd ms", "fwd+bwd ms", "fwd / uniform",
                                                     "fwd+bwd / uniform", "peer", "peer / quantext fwd",
                                                     "peer / quantext fwd+bwd"], measure, quick, full, device)


if __name__ == "__main__":
    size_sweep_main(run, __doc__)
