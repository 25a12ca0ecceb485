"""qx.nn.Quantizer: parameters from observed ranges, forward against ATen's
fake-quant ops, LSQ gradients, projection of learned values, flags and state."""

import io

import pytest
import torch
from torch.ao.quantization.observer import MinMaxObserver as AoMinMaxObserver

import quantext as qx
from quantext.nn import MIN_SCALE, Quantizer
from quantext.spec import QuantSpec

SYM8 = QuantSpec(bits=8, calibration="max")


def calibrated(spec: QuantSpec, *xs: torch.Tensor, **kwargs) -> Quantizer:
    q = Quantizer(spec, **kwargs).observe(True).disable()
    for x in xs:
        q(x)
    return q.observe(False).compute_qparams().enable()


def test_per_tensor_symmetric_matches_aten():
    x1, x2 = torch.randn(64, 10), torch.randn(64, 10) * 3
    q = calibrated(SYM8, x1, x2)
    amax = torch.cat([x1, x2]).abs().max()
    assert q.scale.shape == () and q.zero_point.dtype == torch.int32
    torch.testing.assert_close(q.scale, amax / 127, rtol=0, atol=0)
    expected = torch.fake_quantize_per_tensor_affine(x1, q.scale.item(), 0, -128, 127)
    assert torch.equal(q(x1), expected)


def test_per_channel_lazy_shape_matches_aten():
    spec = QuantSpec(bits=4, narrow_range=True, granularity="channel", axis=1, calibration="max")
    x = torch.randn(8, 5, 3)
    q = calibrated(spec, x)
    assert q.scale.shape == (5,)
    torch.testing.assert_close(q.scale, x.abs().amax(dim=(0, 2)) / 7, rtol=0, atol=0)
    expected = torch.fake_quantize_per_channel_affine(x, q.scale, q.zero_point, 1, -7, 7)
    assert torch.equal(q(x), expected)


def test_asymmetric_qparams_match_torch_ao():
    spec = QuantSpec(bits=8, signed=False, symmetric=False, calibration="max")
    x = torch.randn(1000) * 2 + 1.5
    q = calibrated(spec, x)
    ref = AoMinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    ref(x)
    scale, zp = ref.calculate_qparams()
    torch.testing.assert_close(q.scale.reshape(1), scale)
    assert q.zero_point.item() == zp.item()
    expected = torch.fake_quantize_per_tensor_affine(x, q.scale.item(), q.zero_point.item(), 0, 255)
    assert torch.equal(q(x), expected)


def test_positive_only_range_keeps_zero_exact():
    spec = QuantSpec(bits=8, signed=False, symmetric=False, calibration="max")
    q = calibrated(spec, torch.linspace(2.0, 5.0, 100))
    assert q.zero_point.item() == 0
    torch.testing.assert_close(q.scale, torch.tensor(5.0 / 255))


def test_all_zero_tensor_gets_min_scale():
    q = calibrated(SYM8, torch.zeros(10))
    assert q.scale.item() == pytest.approx(MIN_SCALE)
    assert torch.equal(q(torch.zeros(10)), torch.zeros(10))


def test_group_granularity_against_reference():
    spec = QuantSpec(bits=4, narrow_range=True, granularity="group", axis=1, group_size=4, calibration="max")
    w = torch.randn(6, 8, 3)
    q = calibrated(spec, w, shape=w.shape, role="weight")
    groups = w.unflatten(1, (2, 4))  # [6, 2, 4, 3]
    scale = groups.abs().amax(dim=2) / 7  # [6, 2, 3]
    torch.testing.assert_close(q.scale, scale, rtol=0, atol=0)
    s = scale.repeat_interleave(4, dim=1)
    reference = torch.clamp(torch.round(w * (1 / s)), -7, 7) * s
    assert torch.equal(q(w), reference)


def test_uncalibrated_use_is_an_error_naming_the_module():
    model = torch.nn.Sequential(Quantizer(SYM8))
    qx.prepare.name_quantizers(model)
    with pytest.raises(RuntimeError, match="Quantizer '0'.*never calibrated"):
        model(torch.randn(3))
    x = torch.randn(3)
    assert model[0].disable()(x) is x


def test_observing_with_fake_quant_on_follows_the_observer():
    q = calibrated(SYM8, torch.ones(4)).observe(True)
    y = q(torch.tensor([4.0, -2.0]))
    torch.testing.assert_close(q.scale, torch.tensor(4.0 / 127))
    torch.testing.assert_close(y, torch.tensor([4.0, -2.0]), atol=q.scale.item() / 2, rtol=0)


@pytest.mark.parametrize("symmetric", [True, False])
def test_lsq_gradients_match_the_design_formulas(symmetric):
    spec = QuantSpec(bits=8, signed=symmetric, symmetric=symmetric, learnable=True, calibration="max")
    q = calibrated(spec, torch.randn(200) * 2)
    assert isinstance(q.scale, torch.nn.Parameter)
    assert isinstance(q.zero_point, torch.nn.Parameter) != symmetric
    x = torch.randn(300) * 3
    dy = torch.randn_like(x)
    xa = x.clone().requires_grad_()
    q(xa).backward(dy)
    # x: clipped STE, as ATen's (non-learnable) fake-quant op.
    qmin, qmax = q.bounds
    s, z = q.scale.detach(), q.zero_point.detach()
    xr = x.clone().requires_grad_()
    torch.fake_quantize_per_tensor_affine(xr, s.item(), int(z.item()), qmin, qmax).backward(dy)
    torch.testing.assert_close(xa.grad, xr.grad, rtol=0, atol=0)
    # scale / zero point: DESIGN 2.1 (LSQ / LSQ+), g = 1/sqrt(n * qmax), in float64.
    x64, dy64, s64, z64 = x.double(), dy.double(), s.double(), z.double()
    code = torch.round(x64 * (1 / s64)) + z64
    y = (code.clamp(qmin, qmax) - z64) * s64
    inside = (code >= qmin) & (code <= qmax)
    g = 1 / (x.numel() * qmax) ** 0.5
    ds = g * (dy64 * torch.where(inside, (y - x64) / s64, torch.where(code < qmin, qmin - z64, qmax - z64))).sum()
    torch.testing.assert_close(q.scale.grad.double(), ds, rtol=1e-4, atol=1e-7)
    if not symmetric:
        dz = g * (dy64 * torch.where(inside, 0.0, -s64)).sum()
        torch.testing.assert_close(q.zero_point.grad.double(), dz, rtol=1e-4, atol=1e-7)


def test_learned_values_are_projected_with_straight_through_gradient():
    spec = QuantSpec(bits=8, signed=False, symmetric=False, learnable=True, calibration="max")
    q = calibrated(spec, torch.rand(100))
    x = torch.rand(100)
    with torch.no_grad():
        q.scale.fill_(-0.5)
    y = q(x)
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, MIN_SCALE, 0, 0, 255))
    y.sum().backward()
    assert q.scale.grad.abs().item() > 0  # the raw parameter still learns
    assert q.qparams()["scale"].item() == pytest.approx(MIN_SCALE)
    with torch.no_grad():
        q.scale.fill_(0.01)
        q.zero_point.fill_(300.0)
    assert torch.equal(q(x), torch.fake_quantize_per_tensor_affine(x, 0.01, 255, 0, 255))
    assert q.qparams()["zero_point"].item() == 255


def test_freeze_turns_learned_parameters_into_buffers():
    spec = QuantSpec(bits=8, signed=False, symmetric=False, learnable=True, calibration="max")
    q = calibrated(spec, torch.rand(100) * 3 - 1)
    with torch.no_grad():
        q.zero_point.add_(0.4)
    x = torch.randn(50)
    before = q(x).detach()
    q.freeze()
    assert not list(q.parameters()) and not q.spec.learnable and not q.observing
    assert q.zero_point.dtype == torch.int32 and set(q.qparams()) == {"scale", "zero_point"}
    assert torch.equal(q(x), before)


def test_set_qparams_validates():
    q = Quantizer(SYM8)
    with pytest.raises(ValueError, match="scale must be positive"):
        q.set_qparams(scale=torch.tensor(0.0))
    with pytest.raises(ValueError, match="zero_point 0"):
        q.set_qparams(scale=torch.tensor(0.1), zero_point=torch.tensor(3))
    with pytest.raises(ValueError, match="alpha is not a parameter"):
        q.set_qparams(alpha=torch.tensor(1.0))
    asym = Quantizer(QuantSpec(bits=8, signed=False, symmetric=False, calibration="max"))
    with pytest.raises(ValueError, match=r"zero_point must lie in \[0, 255\]"):
        asym.set_qparams(scale=torch.tensor(0.1), zero_point=torch.tensor(256, dtype=torch.int32))
    assert not q.calibrated and q.set_qparams(scale=torch.tensor(0.5)).calibrated


def test_wrong_tensor_shape_is_an_error():
    spec = QuantSpec(bits=8, granularity="channel", calibration="max")
    q = Quantizer(spec, shape=(4, 3)).observe(True)
    with pytest.raises(ValueError, match=r"needs parameters of shape \(5,\)"):
        q(torch.randn(5, 3))


def _roundtrip(src: Quantizer, dst: Quantizer, strict: bool = True):
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    return dst.load_state_dict(torch.load(buf), strict=strict)


def test_state_dict_carries_flags_and_lazy_shapes():
    spec = QuantSpec(bits=8, granularity="channel", calibration="max")
    src = calibrated(spec, torch.randn(6, 4)).disable()
    dst = Quantizer(spec)
    _roundtrip(src, dst)
    assert dst.scale.shape == (6,) and torch.equal(dst.scale, src.scale)
    assert dst.calibrated and not dst.enabled and not dst.observing
    x = torch.randn(6, 4)
    assert torch.equal(dst.enable()(x), src.enable()(x))


def test_state_dict_mismatches_are_errors():
    spec = QuantSpec(bits=8, granularity="channel", calibration="max")
    src = calibrated(spec, torch.randn(6, 4))
    with pytest.raises(RuntimeError, match="size mismatch"):
        _roundtrip(src, Quantizer(spec, shape=(5, 4)))
    state = src.state_dict()
    del state["scale"]
    with pytest.raises(RuntimeError, match=r"Quantizer.*has no \['scale'\]"):
        Quantizer(spec).load_state_dict(state, strict=False)
    state = src.state_dict()
    state["zero_point"] = torch.zeros(3, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="disagree in shape"):
        Quantizer(spec).load_state_dict(state)
