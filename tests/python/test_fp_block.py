"""Block-scaled minifloat formats (issue 20, item 2): MXFP8/MXFP6/MXFP4 (E8M0
block scales) and NVFP4 (E4M3 block scales and a tensor scale), scales from
each block's max, against torchao's emulation bit for bit and against the
OCP MX scale rule written here; gradients; QAT through prepare_qat."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import quantext as qx
from quantext.block_scales import block_scales
from quantext.spec import fp_spec

mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
nv = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
from torchao.prototype.mx_formats.kernels import unpack_uint4  # noqa: E402

ELEMENTS = {"mxfp8": torch.float8_e4m3fn, "mxfp8_e5m2": torch.float8_e5m2, "mxfp6_e2m3": "fp6_e2m3",
            "mxfp6_e3m2": "fp6_e3m2", "mxfp4": torch.float4_e2m1fn_x2}


def data(rows: int = 24, cols: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.logspace(-4, 4, rows)[:, None]
    x[0, :32] = 0.0  # an all-zero block
    x[1, 5] = 1e30  # one huge element among small ones
    return x


@pytest.mark.parametrize("name", ELEMENTS)
def test_mx_equals_torchao(name):
    x = data()
    scale, lp = mx.to_mx(x, ELEMENTS[name], 32)
    expected = mx.to_dtype(lp, scale, ELEMENTS[name], 32, torch.float32)
    assert torch.equal(qx.fake_quant(x, fp_spec(name)), expected)


def test_nvfp4_equals_torchao():
    x = data(cols=128)
    tensor_scale = x.abs().amax() / (448.0 * 6.0)
    scales, packed = nv.nvfp4_quantize(x, 16, tensor_scale)
    values = mx.f4_unpacked_to_f32(unpack_uint4(packed.view(torch.uint8)).view(x.shape))
    expected = (values.view(x.shape[0], -1, 16) * (scales.float() * tensor_scale).unsqueeze(-1)).view(x.shape)
    assert torch.equal(qx.fake_quant(x, fp_spec("nvfp4")), expected)


@pytest.mark.parametrize("name,emax", [("mxfp8", 8), ("mxfp8_e5m2", 15), ("mxfp6_e2m3", 2), ("mxfp6_e3m2", 4),
                                       ("mxfp4", 2)])
def test_e8m0_scales_follow_the_ocp_rule(name, emax):
    """X = 2^(floor(log2(max|block|)) - emax_elem), from math.frexp on each block."""
    x = data(seed=1)
    blocks = x.reshape(x.shape[0], -1, 32).abs().amax(-1)
    expected = torch.tensor([[math.ldexp(1.0, max(math.frexp(float(a))[1] - 1 - emax, -126)) if a > 0 else 2.0 ** -126
                              for a in row] for row in blocks.tolist()])
    assert torch.equal(block_scales(x, fp_spec(name)), expected)


def test_blocks_along_another_axis_and_non_finite_values():
    x = data(rows=8, cols=64)
    along_rows = qx.fake_quant(x.t(), fp_spec("mxfp4", axis=0))  # [64, 8], blocks down each column
    assert torch.equal(along_rows, qx.fake_quant(x, fp_spec("mxfp4")).t())
    x = torch.randn(2, 32)
    x[0, 3], x[1, 7] = float("inf"), float("nan")
    y = qx.fake_quant(x, fp_spec("mxfp8"))
    finite = torch.where(torch.isfinite(x), x, 0.0)  # non-finite values do not widen their block's scale
    expected = qx.fake_quant(finite, fp_spec("mxfp8"))
    others = torch.isfinite(x)
    assert torch.equal(y[others], expected[others]) and bool(y[1, 7].isnan())
    assert float(y[0, 3]) == float(block_scales(finite, fp_spec("mxfp8"))[0, 0]) * 448  # inf saturates


def test_straight_through_gradient():
    """dx = dy where x / scale lies in the format's range. An E8M0 scale is the
    power of two at or below max / 2^emax, so a block's largest values can
    exceed FP4's 6 (up to 8) and saturate: their gradient is 0."""
    x = data(rows=4).requires_grad_()
    dy = torch.randn_like(x)
    qx.fake_quant(x, fp_spec("mxfp4")).backward(dy)
    v = x.detach() / block_scales(x, fp_spec("mxfp4")).repeat_interleave(32, dim=1)
    inside = v.abs() <= 6
    assert bool((~inside).any()) and torch.equal(x.grad, torch.where(inside, dy, 0.0))


def test_bad_block_specs():
    with pytest.raises(ValueError, match="granularity='group'"):
        fp_spec("mxfp4", granularity="tensor")
    with pytest.raises(ValueError, match="dynamic"):
        qx.QuantSpec(scheme="fp", bits=4, exp_bits=2, scale_format="e8m0", granularity="group", group_size=32)
    with pytest.raises(ValueError, match="scale_format='e8m0' is for block-scaled"):
        qx.QuantSpec(scale_format="e8m0")
    with pytest.raises(ValueError, match="block size 32 does not divide size 40 of axis 1"):
        qx.fake_quant(torch.randn(3, 40), fp_spec("mxfp4"))
    with pytest.raises(ValueError, match="power of two up to 32"):
        fp_spec("mxfp4", group_size=48)


@pytest.mark.parametrize("name", ["mxfp8", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp4", "nvfp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_fused_op_equals_the_block_scales_composition(name, dtype):
    """The op computes each block's scale in its kernel; quantext.block_scales (tensor ops) and the
    scaled fp op give the same values, and the same clip mask (gradient)."""
    spec = fp_spec(name)
    x = data(rows=12, cols=128, seed=3)
    x[2, 7], x[3, 9], x[4, 0] = float("inf"), float("nan"), 3e-41  # non-finite, float32 subnormal
    x = x.to(dtype)
    scales = block_scales(x, spec)
    expected = qx.ops.fake_quant_fp(x, scales, spec.exp_bits, spec.bits - 1 - spec.exp_bits,
                                    spec.resolved_fp_special, 1, spec.group_size)
    xg = x.clone().requires_grad_()
    y = qx.fake_quant(xg, spec)
    assert torch.equal(y.detach().nan_to_num(7.0), expected.nan_to_num(7.0))
    dy = torch.randn_like(y)
    y.backward(dy)
    acc = torch.float64 if dtype == torch.float64 else torch.float32  # the kernels' compute type
    inv = (1.0 / scales).to(acc).repeat_interleave(spec.group_size, dim=1)  # the reciprocal in float32
    assert torch.equal(xg.grad, torch.where((x.to(acc) * inv).abs() <= spec.fp_max, dy, 0.0))


def test_qat_with_mxfp4_weights_and_mxfp8_activations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    x, target = torch.randn(32, 64), torch.randint(0, 8, (32,))
    qconfig = qx.QConfig(weight=fp_spec("mxfp4"), activation=fp_spec("mxfp8"))
    prepared = qx.prepare_qat(model, qconfig, example_inputs=(x,))
    middle = prepared.get_submodule("2")
    assert middle.weight_quantizer.spec.bits == 4 and prepared.get_submodule("0").weight_quantizer.spec.bits == 8
    assert "weight_quantizer.scale" not in "".join(prepared.state_dict())  # scales come from each block
    opt = torch.optim.Adam(prepared.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = nn.functional.cross_entropy(prepared(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    with torch.no_grad():
        w = middle.weight_quantizer(middle.weight)
        assert torch.equal(w, qx.fake_quant(middle.weight, fp_spec("mxfp4")))


def test_nvfp4_tensor_scale_given_or_computed_by_the_op():
    """Without a tensor scale the op computes NVFP4's own (amax / (448 * 6), 1 for an all-zero tensor);
    a given one (say, calibrated) is used as it is; MX formats take none."""
    x = data(rows=4, cols=64, seed=5)
    x[0, 1] = float("inf")  # non-finite values do not count towards the tensor's max
    own = qx.ops.fake_quant_fp_blocks(x, 2, 1, "finite", 16, "e4m3")
    explicit = qx.ops.fake_quant_fp_blocks(x, 2, 1, "finite", 16, "e4m3", x[x.isfinite()].abs().amax() / 2688.0)
    assert torch.equal(own, explicit)
    given = torch.tensor(0.125)
    scales = (x.abs().where(x.isfinite(), 0.0).unflatten(-1, (-1, 16)).amax(-1) / (6 * given)).clamp(max=448)
    scales = scales.to(torch.float8_e4m3fn).float()
    scales = torch.where(scales > 0, scales, 2.0 ** -9) * given
    expected = qx.ops.fake_quant_fp(x, scales, 2, 1, "finite", 1, 16)
    assert torch.equal(qx.ops.fake_quant_fp_blocks(x, 2, 1, "finite", 16, "e4m3", given), expected)
    zeros = torch.zeros(2, 16)
    assert torch.equal(qx.ops.fake_quant_fp_blocks(zeros, 2, 1, "finite", 16, "e4m3"), zeros)
    with pytest.raises(ValueError, match="takes no tensor_scale"):
        qx.ops.fake_quant_fp_blocks(x, 2, 1, "finite", 32, "e8m0", given)
