"""BN-folded QAT convolution (DESIGN 3) against torch.ao's ConvBn2d/ConvBnReLU2d
and against float Conv2d + BatchNorm2d: forward, gradients, running statistics,
before and after freezing."""

import copy

import pytest
import torch
from torch import nn
from torch.ao.nn.intrinsic.qat import ConvBn2d as AoConvBn2d
from torch.ao.nn.intrinsic.qat import ConvBnReLU2d as AoConvBnReLU2d
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver, PerChannelMinMaxObserver
from torch.ao.quantization import QConfig as AoQConfig

from quantext.nn import QuantConv2d, QuantConvBn2d, QuantConvBnReLU2d
from quantext.spec import QConfig, QuantSpec

WEIGHT_SPEC = QuantSpec(bits=8, narrow_range=True, granularity="channel", calibration="max")


def float_parts(bias: bool, momentum: float | None = 0.1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=bias)
    bn = nn.BatchNorm2d(6, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5).mul_(torch.tensor([1, -1, 1, 1, -1, 1.0]))
        bn.bias.normal_()
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return conv, bn


def weight_scales(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Per-channel scales of the folded weight, a little tight so that some weights clip."""
    w_f = conv.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(-1, 1, 1, 1)
    return (w_f.detach().abs().amax(dim=(1, 2, 3)) * 0.9 / 127).contiguous()


def ours(conv, bn, relu: bool, scales, bn_stats: str = "exact", **kw) -> QuantConvBn2d:
    cls = QuantConvBnReLU2d if relu else QuantConvBn2d
    parts = [copy.deepcopy(conv), copy.deepcopy(bn)] + ([nn.ReLU()] if relu else [])
    m = cls.from_float(nn.Sequential(*parts), QConfig(weight=WEIGHT_SPEC, activation=None), bn_stats=bn_stats, **kw)
    if scales is None:
        m.weight_quantizer.disable()
    else:
        m.weight_quantizer.set_qparams(scale=scales)
    return m


def torch_ao(conv, bn, relu: bool, scales, slow: bool) -> AoConvBn2d:
    """torch.ao's module with a fixed per-channel symmetric int8 weight quantizer."""
    weight_fq = FakeQuantize.with_args(observer=PerChannelMinMaxObserver, quant_min=-127, quant_max=127,
                                       dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    qconfig = AoQConfig(activation=FakeQuantize.with_args(observer=MovingAverageMinMaxObserver), weight=weight_fq)
    cls = AoConvBnReLU2d if relu else AoConvBn2d
    m = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            bias=conv.bias is not None, eps=bn.eps, momentum=bn.momentum, qconfig=qconfig)
    with torch.no_grad():
        m.weight.copy_(conv.weight)
        if conv.bias is not None:
            m.bias.copy_(conv.bias)
    m.bn.load_state_dict(bn.state_dict())
    m.weight_fake_quant.disable_observer()
    if scales is None:
        m.weight_fake_quant.disable_fake_quant()
    else:
        m.weight_fake_quant.scale = scales.clone()
        m.weight_fake_quant.zero_point = torch.zeros(len(scales), dtype=torch.int32)
    m._enable_slow_path_for_better_numerical_stability = slow
    return m


def params_of(m) -> tuple[list[torch.Tensor], nn.BatchNorm2d]:
    """(W, gamma, beta[, conv bias]) and the BatchNorm of a fused module or of Sequential(conv, bn)."""
    conv, bn = (m, m.bn) if hasattr(m, "bn") else (m[0], m[1])
    return [conv.weight, bn.weight, bn.bias] + ([conv.bias] if conv.bias is not None else []), bn


def step(m: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> list[torch.Tensor]:
    """One forward/backward: output, grads of x, W, gamma, beta (, b), BN buffers."""
    params, bn = params_of(m)
    for p in params:
        p.grad = None
    xg = x.clone().requires_grad_()
    y = m(xg)
    y.backward(dy)
    return [y.detach(), xg.grad] + [p.grad for p in params] + \
        [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def compare(a: nn.Module, b: nn.Module, freeze, steps_before_freeze: int = 2, tol: float = 1e-5) -> None:
    """Runs a and b on the same batches (training, frozen training, eval) and compares everything."""
    for k in range(steps_before_freeze + 2):
        x, dy = torch.randn(4, 4, 8, 8), torch.randn(4, 6, 8, 8)
        if k == steps_before_freeze:
            freeze(a, b)
        if k == steps_before_freeze + 1:
            a.eval(), b.eval()
        got, want = step(a, x, dy), step(b, x, dy)
        assert len(got) == len(want)
        for i, (u, v) in enumerate(zip(got, want)):
            torch.testing.assert_close(u, v, rtol=tol, atol=tol, msg=lambda msg: f"step {k}, item {i}: {msg}")


def freeze_torch_ao(a, b):
    a.freeze_bn()
    b.freeze_bn_stats()


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("quant", [False, True])
@pytest.mark.parametrize("bn_stats", ["exact", "approx"])
def test_matches_torch_ao(relu, bias, quant, bn_stats):
    conv, bn = float_parts(bias)
    scales = weight_scales(conv, bn) if quant else None
    # torch.ao's slow path is the exact folding, its default path the approximation.
    ref = torch_ao(conv, bn, relu, scales, slow=bn_stats == "exact")
    compare(ours(conv, bn, relu, scales, bn_stats), ref, freeze_torch_ao)


@pytest.mark.parametrize("bn_stats", ["exact", "approx"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_without_fake_quant_equals_float_conv_bn(bn_stats, momentum):
    conv, bn = float_parts(bias=True, momentum=momentum)
    ref = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn))
    m = ours(conv, bn, False, None, bn_stats)

    def freeze(a, b):
        a.freeze_bn()
        b[1].eval()

    compare(m, ref, freeze, tol=1e-4)  # a different formula: rounding differs more than torch.ao's


@pytest.mark.parametrize("bn_stats", ["exact", "approx"])
def test_zero_gamma_gives_no_nan(bn_stats):
    conv, bn = float_parts(bias=True)
    with torch.no_grad():
        bn.weight[2] = 0.0
    m = ours(conv, bn, False, weight_scales(conv, bn).clamp_min(1e-3), bn_stats)
    for training in (True, False):
        m.train(training)
        x = torch.randn(4, 4, 8, 8, requires_grad=True)
        y = m(x)
        y.square().sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())
        assert torch.equal(y[:, 2], torch.full_like(y[:, 2], bn.bias[2].item()))
        assert torch.isfinite(m.bn.running_mean).all() and torch.isfinite(m.bn.running_var).all()


def test_zero_gamma_approx_keeps_tracking_the_float_statistics():
    conv, bn = float_parts(bias=False)
    with torch.no_grad():
        bn.weight[2] = 0.0
    m = ours(conv, bn, False, None, "approx")
    ref = nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn))
    x = torch.randn(4, 4, 8, 8)
    torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.bn.running_var, ref[1].running_var)


def test_freeze_bn_after_steps():
    conv, bn = float_parts(bias=False)
    m = ours(conv, bn, False, weight_scales(conv, bn), freeze_bn_after=2)
    seen = []
    for _ in range(4):
        m(torch.randn(4, 4, 8, 8))
        seen.append(m.bn.running_mean.clone())
    assert not torch.equal(seen[0], seen[1]) and torch.equal(seen[1], seen[2]) and torch.equal(seen[2], seen[3])
    assert m.is_bn_frozen and int(m.qat_steps) == 2 and int(m.bn.num_batches_tracked) == 2


@pytest.mark.parametrize("bn_stats", ["exact", "approx"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_freeze_bn_after_equals_explicit_freeze(bn_stats, momentum):
    """freeze_bn_after=N is decided on the device (the Python flag catches up at train()/eval()):
    before and after step N, before and after that sync, it computes what freeze_bn() at step N does."""
    conv, bn = float_parts(bias=True, momentum=momentum)
    scales = weight_scales(conv, bn)
    a = ours(conv, bn, True, scales, bn_stats, freeze_bn_after=2)
    b = ours(conv, bn, True, scales, bn_stats)
    for k in range(7):
        x, dy = torch.randn(4, 4, 8, 8), torch.randn(4, 6, 8, 8)
        if k == 2:
            b.freeze_bn()
            assert a._get_mirrored("bn_frozen") == 0 and int(a.bn_frozen) == 1  # frozen on the device only
        if k == 4:
            a.train()  # a sync point
            assert a._get_mirrored("bn_frozen") == 1
        if k == 6:
            a.eval(), b.eval()
        got, want = step(a, x, dy), step(b, x, dy)
        for i, (u, v) in enumerate(zip(got, want)):
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5, msg=lambda msg: f"step {k}, item {i}: {msg}")
    assert a.is_bn_frozen and int(a.qat_steps) == 2 == int(b.qat_steps)


def test_is_bn_frozen_reads_the_device_flag():
    conv, bn = float_parts(bias=False)
    m = ours(conv, bn, False, None, freeze_bn_after=1)
    assert not m.is_bn_frozen
    m(torch.randn(4, 4, 8, 8))
    assert m.is_bn_frozen and m._get_mirrored("bn_frozen") == 1
    assert "bn_frozen=True" in repr(m)
    assert ours(conv, bn, False, None, freeze_bn_after=0).is_bn_frozen


@pytest.mark.parametrize("relu", [False, True])
def test_fold_equals_frozen_forward_bit_exactly(relu):
    conv, bn = float_parts(bias=True)
    m = ours(conv, bn, relu, weight_scales(conv, bn))
    m.input_quantizer = None
    m(torch.randn(4, 4, 8, 8))  # one step of batch statistics
    m.freeze_bn()
    folded = m.fold()
    inner = folded.conv if relu else folded
    assert isinstance(inner, QuantConv2d) and inner.weight_quantizer is m.weight_quantizer
    x = torch.randn(4, 4, 8, 8)
    assert torch.equal(folded(x), m(x))


def test_from_float_rejects_other_modules():
    conv, bn = float_parts(bias=False)
    qconfig = QConfig(weight=WEIGHT_SPEC, activation=None)
    with pytest.raises(TypeError, match=r"nn.Sequential\(Conv2d, BatchNorm2d, ReLU\)"):
        QuantConvBnReLU2d.from_float(nn.Sequential(conv, bn), qconfig)
    with pytest.raises(ValueError, match="affine BatchNorm2d"):
        QuantConvBn2d.from_float(nn.Sequential(conv, nn.BatchNorm2d(6, affine=False)), qconfig)
    with pytest.raises(ValueError, match="bn_stats"):
        QuantConvBn2d.from_float(nn.Sequential(conv, bn), qconfig, bn_stats="fast")
