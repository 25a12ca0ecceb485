"""Issue #17 item 2: activation signedness follows the data.

A ``sign_from_data`` spec becomes signed when its calibration data held a
negative value and unsigned when not; an explicit unsigned spec without a zero
point on data with negative values warns (quantizer name, fraction clipped).
The reference values are ATen's ``fake_quantize_per_tensor_affine`` with the
grid the data call for; the zoo check runs torchvision's MobileNetV2 (random
initialization, 32x32), whose projection convolutions and residual adds see
negative values and whose other convolutions follow a ReLU6.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision

import quantext as qx
from quantext import QConfig, QuantSpec
from quantext.nn import Quantizer

AUTO8 = QuantSpec(bits=8, signed=False, sign_from_data=True, calibration="max")


def calibrated(spec: QuantSpec, x: torch.Tensor, name: str = "act") -> Quantizer:
    q = Quantizer(spec)
    q.name = name
    q.observe(True).disable()
    q(x)
    q.observe(False)
    return q.compute_qparams().enable()


def test_spec_rejects_sign_from_data_where_it_means_nothing():
    with pytest.raises(ValueError, match="sign_from_data=True is for grids without a zero point"):
        QuantSpec(symmetric=False, signed=False, sign_from_data=True)
    with pytest.raises(ValueError, match="narrow_range=False"):
        QuantSpec(narrow_range=True, sign_from_data=True)
    with pytest.raises(TypeError, match="sign_from_data must be a bool"):
        QuantSpec(sign_from_data=1)


def test_negative_data_make_the_quantizer_signed():
    x = torch.randn(1000)
    q = calibrated(AUTO8, x)
    assert q.spec.signed and q.bounds == (-128, 127)
    scale = float(x.abs().max()) / 127
    assert q.scale.item() == pytest.approx(scale, rel=1e-6)
    expected = torch.fake_quantize_per_tensor_affine(x, q.scale.item(), 0, -128, 127)
    assert torch.equal(q(x), expected)
    assert (q(x) < 0).float().mean() > 0.4  # the negative half survives
    assert q.findings.signed and q.findings.clipped_fraction == 0.0


def test_non_negative_data_keep_the_extra_bit():
    x = torch.rand(1000)
    q = calibrated(AUTO8, x)
    assert not q.spec.signed and q.bounds == (0, 255)
    assert q.scale.item() == pytest.approx(float(x.max()) / 255, rel=1e-6)
    assert torch.equal(q(x), torch.fake_quantize_per_tensor_affine(x, q.scale.item(), 0, 0, 255))


@pytest.mark.parametrize("scheme", ["pot", "apot"])
def test_levels_schemes_follow_the_data(scheme):
    spec = QuantSpec(scheme=scheme, bits=4, signed=False, sign_from_data=True, calibration="max")
    x = torch.randn(500)
    q = calibrated(spec, x)
    assert q.spec.signed
    ref = qx.fake_quant(x, spec.replace(signed=True, sign_from_data=False), alpha=x.abs().max())
    assert torch.equal(q(x), ref)


@pytest.mark.parametrize("calibration", ["max", "entropy"])
def test_explicit_unsigned_spec_on_negative_data_warns_once(calibration):
    x = torch.cat([-torch.rand(250), torch.rand(750)])  # 25% negative
    spec = QuantSpec(bits=8, signed=False, calibration=calibration)
    with pytest.warns(UserWarning, match=r"Quantizer 'block.add' clips negative values: 25.0% of the values"):
        q = calibrated(spec, x, name="block.add")
    assert q.findings.clipped_fraction == pytest.approx(0.25)
    assert torch.equal(q(-torch.rand(10)), torch.zeros(10))  # what it warned about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q.compute_qparams()  # once per quantizer


def test_signed_or_asymmetric_specs_do_not_warn():
    x = torch.randn(1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spec in (QuantSpec(bits=8), QuantSpec(bits=8, signed=False, symmetric=False), AUTO8):
            assert calibrated(spec, x).findings.clipped_fraction == 0.0


def test_sign_decided_by_calibration_round_trips_through_the_state_dict():
    x = torch.randn(1000)
    saved = calibrated(AUTO8, x).state_dict()
    assert saved["_extra_state"]["quantext_spec"]["signed"] is True
    fresh = Quantizer(AUTO8)  # before calibration: unsigned
    fresh.load_state_dict(saved)
    assert fresh.spec.signed and fresh.calibrated
    assert torch.equal(fresh(x), calibrated(AUTO8, x)(x))
    # a quantizer pinned to unsigned does not silently take a signed state
    with pytest.raises(RuntimeError, match="they differ in"):
        Quantizer(AUTO8.replace(sign_from_data=False)).load_state_dict(saved)


def test_failed_load_keeps_the_sign():
    saved = calibrated(AUTO8, torch.randn(100)).state_dict()
    del saved["zero_point"]
    fresh = Quantizer(AUTO8)
    with pytest.raises(RuntimeError, match="has no"):
        fresh.load_state_dict(saved)
    assert not fresh.spec.signed


def _mobilenet(qconfig: QConfig):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = qx.prepare_qat(model, qconfig, example_inputs=(x,))
    return prepared, x


def _unsigned_without_zero_point_on_negative_data(prepared) -> list[str]:
    return [name for name, q in qx.quantizers(prepared) if q.role == "activation" and q.spec.symmetric
            and not q.spec.signed and bool((q.observer.min_val < 0).any())]


_APOT_AUTO = QConfig(weight=QuantSpec(scheme="apot", bits=4, granularity="channel"),
                     activation=QuantSpec(scheme="apot", bits=4, signed=False, sign_from_data=True))
_UNIFORM_AUTO = QConfig(activation=QuantSpec(bits=8, signed=False, sign_from_data=True))


@pytest.mark.parametrize("qconfig", [QConfig.uniform(8, backend="onnxruntime"), QConfig.uniform(8), _UNIFORM_AUTO,
                                     _APOT_AUTO], ids=["ort", "trt", "uniform-auto", "apot-auto"])
def test_mobilenet_v2_no_negative_data_into_an_unsigned_grid(qconfig):
    prepared, x = _mobilenet(qconfig)
    qx.calibrate(prepared, [x], progress=False)
    assert _unsigned_without_zero_point_on_negative_data(prepared) == []
    if qconfig.activation.sign_from_data:
        signs = qx.calibration_report(prepared).signs
        # a block's input (the previous projection's output, no ReLU) and residual adds became signed,
        # ReLU6 outputs stayed unsigned
        assert signs["features.2.conv.0.0.input_quantizer"] is True
        assert signs["features.3.add_input1_quantizer"] is True
        assert signs["features.2.conv.1.0.input_quantizer"] is False
        assert signs["features.2.conv.2.input_quantizer"] is False


def test_mobilenet_v2_explicit_unsigned_activations_warn_with_names_and_fractions():
    prepared, x = _mobilenet(QConfig(activation=QuantSpec(bits=8, signed=False)))
    with pytest.warns(UserWarning, match=r"quantizers have an unsigned spec without a zero point but saw negative "
                                         r"values.*features\.\d+\.\w+.*\(\d+\.\d%\)"):
        qx.calibrate(prepared, [x], progress=False)
    clipped = qx.calibration_report(prepared).clipped
    assert clipped and clipped == {name: pytest.approx(frac) for name, frac in clipped.items()}
    assert set(clipped) == set(_unsigned_without_zero_point_on_negative_data(prepared))
    assert all(0 < f < 1 for f in clipped.values())
