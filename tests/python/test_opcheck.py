"""torch.library.opcheck of every quantext op on every device present: schema,
fake (meta) kernel, autograd registration and AOT dispatch agree with the
real kernels."""

import pytest
import torch
from torch.library import opcheck

import quantext as qx

ops = qx.ops


def _cases(device: str):
    x = torch.randn(4, 6, 5, device=device)
    s, z = torch.full((6,), 0.05, device=device), torch.zeros(6, dtype=torch.int32, device=device)
    s_t = torch.tensor(0.05, device=device, requires_grad=True)
    z_t = torch.tensor(3.0, device=device, requires_grad=True)
    gs, gz = torch.full((4, 3, 5), 0.05, device=device), torch.zeros((4, 3, 5), dtype=torch.int32, device=device)
    alpha = torch.full((6,), 2.0, device=device)
    alpha_t = torch.tensor(2.0, device=device, requires_grad=True)
    grad = torch.randn_like(x)
    codes = torch.randint(-8, 8, x.shape, dtype=torch.int8, device=device)
    level_codes = torch.randint(-7, 8, x.shape, dtype=torch.int8, device=device)
    xg = x.clone().requires_grad_()
    return {
        "fake_quant_uniform per channel": (ops.fake_quant_uniform.default, (xg, s, z, -8, 7, 1, 0, 1.0)),
        "fake_quant_uniform LSQ+": (ops.fake_quant_uniform.default, (xg, s_t, z_t, 0, 15, None, 0, 0.1)),
        "fake_quant_uniform per group": (ops.fake_quant_uniform.default, (xg, gs, gz, -8, 7, 1, 2, 1.0)),
        "fake_quant_uniform_masked": (ops.fake_quant_uniform_masked.default, (x, s[:4], z[:4], -8, 7, 0, 0)),
        "fake_quant_uniform_masked per group": (ops.fake_quant_uniform_masked.default, (x, gs, gz, -8, 7, 1, 2)),
        "fake_quant_uniform_backward": (ops.fake_quant_uniform_backward.default,
                                        (grad, x, s, z, -8, 7, 1, 0, 1.0, True)),
        "fake_quant_levels": (ops.fake_quant_levels.default, (xg, alpha_t, "apot", 4, True, 2, "nearest", None, 1.0)),
        "fake_quant_levels per channel": (ops.fake_quant_levels.default,
                                          (xg, alpha, "pot", 4, True, 2, "nearest", 1, 1.0)),
        "fake_quant_levels_masked": (ops.fake_quant_levels_masked.default,
                                     (x, alpha[:1].reshape(()), "pot", 4, True, 2, "nearest", None)),
        "fake_quant_levels_masked innermost axis": (ops.fake_quant_levels_masked.default,
                                                    (x, alpha[:5], "apot", 4, False, 2, "nearest", 2)),
        "clip_mask_backward": (ops.clip_mask_backward.default, (grad, torch.randint(-2**31, 2**31 - 1, (4,),
                                                                                   dtype=torch.int32, device=device))),
        "fake_quant_levels_backward": (ops.fake_quant_levels_backward.default,
                                       (grad, x, alpha, "apot", 4, True, 2, "nearest", 1, 1.0, True)),
        "quantize_uniform": (ops.quantize_uniform.default, (x, s, z, -8, 7, 1, 0)),
        "dequantize_uniform": (ops.dequantize_uniform.default, (codes, s, z, 1, 0)),
        "quantize_levels": (ops.quantize_levels.default, (x, alpha, "apot", 4, True, 2, "nearest", 1)),
        "dequantize_levels": (ops.dequantize_levels.default, (level_codes, alpha, "apot", 4, True, 2, 1)),
        "fake_quant_dynamic per token": (ops.fake_quant_dynamic.default, (xg, -128, 127, True, True, 1e-8)),
        "fake_quant_dynamic per tensor": (ops.fake_quant_dynamic.default, (xg, 0, 255, False, False, 1e-8)),
        "fake_quant_dynamic channels_last": (ops.fake_quant_dynamic.default,
                                             (xg.detach().unsqueeze(0).to(memory_format=torch.channels_last)
                                              .requires_grad_(), -8, 7, True, False, 1e-8)),
        "fake_quant_dynamic_masked": (ops.fake_quant_dynamic_masked.default, (x, 0, 15, False, True, 1e-8)),
        "dynamic_qparams": (ops.dynamic_qparams.default, (x, -128, 127, True, True, 1e-8)),
        "fake_quant_fp per channel": (ops.fake_quant_fp.default, (xg, s, 4, 3, "fn", 1, 0, 1.0)),
        "fake_quant_fp learned": (ops.fake_quant_fp.default, (xg, s_t, 2, 1, "finite", None, 0, 0.1)),
        "fake_quant_fp per group": (ops.fake_quant_fp.default, (xg, gs, 5, 2, "ieee", 1, 2, 1.0)),
        "fake_quant_fp_masked": (ops.fake_quant_fp_masked.default, (x, s[:5], 3, 2, "finite", 2, 0)),
        "fake_quant_fp_backward": (ops.fake_quant_fp_backward.default,
                                   (grad, x, s, 4, 3, "fn", 1, 0, 1.0, True)),
        "fake_quant_fp_blocks mx": (ops.fake_quant_fp_blocks.default,
                                    (xg.detach()[..., :4].contiguous().requires_grad_(), 2, 1, "finite", 4, "e8m0",
                                     None)),
        "fake_quant_fp_blocks nvfp4": (ops.fake_quant_fp_blocks.default,
                                       (xg.detach()[..., :4].contiguous().requires_grad_(), 2, 1, "finite", 2, "e4m3",
                                        torch.tensor(0.01, device=device))),
        "fake_quant_fp_blocks nvfp4, its own tensor scale": (
            ops.fake_quant_fp_blocks.default,
            (xg.detach()[..., :4].contiguous().requires_grad_(), 2, 1, "finite", 2, "e4m3", None)),
        "fake_quant_fp_blocks_masked": (ops.fake_quant_fp_blocks_masked.default,
                                        (x[..., :4].contiguous(), 4, 3, "fn", 4, "e8m0", None)),
        "histogram": (ops.histogram.default, (x, 16, torch.tensor(-1.0, device=device),
                                              torch.tensor(1.0, device=device))),
        "magnitude_histogram": (ops.magnitude_histogram.default, (x, 16, torch.full((6,), 2.0, device=device), 1)),
    }


CASES = list(_cases("cpu"))


@pytest.mark.parametrize("case", CASES)
def test_opcheck(case, device):
    op, args = _cases(device)[case]
    opcheck(op, args)


def test_every_op_is_checked():
    """A new op must be added to the cases above."""
    checked = {op for op, _ in _cases("cpu").values()}
    names = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("quantext::")}
    # The range searches read histograms on the host (test_calibration.py); the tables and aciq_ratio take no tensor.
    tensor_ops = {getattr(ops, n).default for n in names
                  if not n.startswith("calib_") and n not in ("levels", "apot_decode_table", "aciq_ratio")}
    assert tensor_ops <= checked, sorted(str(op) for op in tensor_ops - checked)
