"""prepare_qat on torchvision ResNet-18, MobileNetV2 and a plain CNN: module
swaps, add quantizers, first/last layers, skip, the module-walk fallback; and
calibrate."""

import itertools

import pytest
import torch
import torchvision
from torch import nn

import quantext as qx
from quantext.nn import Quantizer, QuantConv2d, QuantConvBn2d, QuantConvBnReLU2d, QuantLinear
from quantext.spec import QConfig, QuantSpec


def qconfig(bits: int = 8) -> QConfig:
    return QConfig(weight=QuantSpec(bits=bits, narrow_range=True, granularity="channel", calibration="max"),
                   activation=QuantSpec(bits=bits, calibration="max"))


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN parameters and statistics, so that folding is exercised."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def plain_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "plain_cnn": plain_cnn,
}


def count(model: nn.Module, cls: type) -> int:
    return sum(type(m) is cls for m in model.modules())


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    return model, x, qx.prepare_qat(model, qconfig(4), example_inputs=(x,))


@pytest.mark.parametrize("name", list(MODELS))
def test_disabled_quantizers_reproduce_the_float_model(name):
    model = randomize_bn(MODELS[name]()).eval()
    x = torch.randn(2, 3, 32, 32)
    prepared = qx.prepare_qat(model, qconfig(), example_inputs=(x,))
    qx.disable_quant(prepared).eval()
    with torch.no_grad():
        torch.testing.assert_close(prepared(x), model(x), rtol=1e-4, atol=1e-5)
    assert count(model, nn.BatchNorm2d) > 0 and count(model, QuantConvBn2d) == 0  # the input model is untouched
    assert count(prepared, nn.BatchNorm2d) == count(prepared, QuantConvBn2d) + count(prepared, QuantConvBnReLU2d)


def test_resnet18_structure(resnet):
    _, _, p = resnet
    assert count(p, QuantConvBnReLU2d) == 9  # stem + conv1 of 8 blocks (the block's shared ReLU is stateless)
    assert count(p, QuantConvBn2d) == 8 + 3  # conv2 of 8 blocks + 3 downsample convs
    assert count(p, QuantLinear) == 1 and count(p, QuantConv2d) == 0
    adds = sorted(n for n, m in p.named_modules() if type(m) is Quantizer and "add" in n)
    assert count(p, Quantizer) == 2 * 21 + len(adds)
    assert len(adds) == 16 and "layer1.0.add_input0_quantizer" in adds and "layer4.1.add_input1_quantizer" in adds
    code = p.code
    assert "layer2_0_add_input0_quantizer" in code and "bn" not in code.replace("QuantConvBn", "")


def test_first_and_last_layers_at_8_bits(resnet):
    _, _, p = resnet
    assert p.conv1.weight_quantizer.spec.bits == 8 and p.conv1.input_quantizer.spec.bits == 8
    assert p.fc.weight_quantizer.spec.bits == 8 and p.fc.input_quantizer.spec.bits == 8
    assert p.get_submodule("layer1.0.conv1").weight_quantizer.spec.bits == 4
    assert p.get_submodule("layer1.0.add_input0_quantizer").spec.bits == 4


def test_first_layer_input_is_signed_at_8_bits():
    unsigned = QConfig(weight=qconfig(4).weight, activation=QuantSpec(bits=4, signed=False, calibration="max"))
    p = qx.prepare_qat(torchvision.models.resnet18(num_classes=10), unsigned)
    first, last = p.conv1.input_quantizer.spec, p.fc.input_quantizer.spec
    assert (first.bits, first.signed) == (8, True) and (last.bits, last.signed) == (8, False)


def test_first_and_last_layers_of_a_levels_qconfig_keep_the_fields_uniform_shares():
    """PoT/APoT first/last layers become uniform: the scheme's own fields go, the
    shared ones (calibration, percentile, sign_from_data, learnable) stay."""
    levels = QConfig(weight=QuantSpec(scheme="pot", bits=4, granularity="channel", learnable=True, rounding="log"),
                     activation=QuantSpec(scheme="apot", bits=4, signed=False, calibration="percentile",
                                          percentile=99.5, sign_from_data=True, weight_norm=True))
    p = qx.prepare_qat(plain_cnn(), levels, example_inputs=(torch.randn(1, 3, 8, 8),))
    first, last = p.get_submodule("0"), p.get_submodule("10")
    for layer in (first, last):
        w, a = layer.weight_quantizer.spec, layer.input_quantizer.spec
        assert w == QuantSpec(bits=8, narrow_range=True, granularity="channel", learnable=True)
        assert a == QuantSpec(bits=8, signed=False, calibration="percentile", percentile=99.5, sign_from_data=True)
    assert p.get_submodule("3").weight_quantizer.spec == levels.weight


@pytest.mark.parametrize("first_last_bits", ["float", None])
def test_first_and_last_layers_float_or_unchanged(first_last_bits):
    model = torchvision.models.resnet18(num_classes=10)
    p = qx.prepare_qat(model, qconfig(4), first_last_bits=first_last_bits)
    if first_last_bits == "float":
        assert type(p.conv1) is nn.Conv2d and isinstance(p.bn1, nn.BatchNorm2d) and type(p.fc) is nn.Linear
    else:
        assert p.conv1.weight_quantizer.spec.bits == 4 and p.fc.weight_quantizer.spec.bits == 4


def test_mobilenet_v2_structure():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    p = qx.prepare_qat(model, qconfig(), example_inputs=(torch.randn(1, 3, 32, 32),))
    fused = [m for m in p.modules() if isinstance(m, QuantConvBn2d)]
    assert len(fused) == 52 and count(p, QuantConvBnReLU2d) == 0  # MobileNetV2 uses ReLU6
    assert any(m.groups == m.in_channels > 1 for m in fused)  # depthwise
    assert count(p, nn.ReLU6) == 35
    assert count(p, Quantizer) - 2 * (len(fused) + 1) == 2 * 10  # 10 inverted-residual adds


def test_skip_by_name_and_type():
    model = torchvision.models.resnet18(num_classes=10)
    p = qx.prepare_qat(model, qconfig(), skip=("layer4", nn.Linear), first_last_bits=None)
    assert type(p.fc) is nn.Linear
    assert all(not isinstance(m, (Quantizer, QuantConvBn2d)) for m in p.layer4.modules())
    assert isinstance(p.get_submodule("layer3.1.conv1"), QuantConvBnReLU2d)
    with pytest.raises(TypeError, match="skip entries"):
        qx.prepare_qat(model, qconfig(), skip=(3,))


def test_constant_adds_are_not_quantized():
    class AddConst(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(x) + 1.0 + x.shape[0]

    p = qx.prepare_qat(AddConst(), qconfig(), example_inputs=(torch.randn(1, 3, 4, 4),))
    assert count(p, Quantizer) == 2  # the conv's weight and input only


def test_untraceable_model_falls_back_to_module_swapping():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            y = self.body(x)
            if y.sum() > 0:  # data-dependent control flow: not traceable
                y = -y
            return self.head(y.mean((2, 3)))

    model = randomize_bn(Branchy()).eval()
    with pytest.warns(UserWarning, match="could not trace Branchy"):
        p = qx.prepare_qat(model, qconfig())
    assert type(p) is Branchy and isinstance(p.body[0], QuantConvBnReLU2d)
    assert type(p.body[1]) is nn.Identity and type(p.body[2]) is nn.Identity
    assert isinstance(p.body[3], QuantConv2d) and isinstance(p.head, QuantLinear)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(qx.disable_quant(p).eval()(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("weight_scheme", ["uniform", "apot"])
def test_model_moved_before_prepare_keeps_its_device(device, weight_scheme):
    # Users often move the model first: every quantizer must follow it, adds included.
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(device)
    x = torch.randn(2, 3, 32, 32, device=device)
    spec = QuantSpec(scheme=weight_scheme, bits=4, granularity="channel", learnable=True)
    p = qx.prepare_qat(model, QConfig(weight=spec, activation=QuantSpec(bits=4, learnable=True)), example_inputs=(x,))
    qx.calibrate(p, [x], progress=False)
    for name, t in itertools.chain(p.named_parameters(), p.named_buffers()):
        assert t.device == x.device, f"{name} is on {t.device}"
    p(x).sum().backward()
    assert all(q.grad is not None and q.grad.device == x.device for n, q in p.named_parameters() if "quantizer" in n)


def test_quantizers_and_bn_state_follow_the_model_device():
    # On the meta device: every tensor prepare_qat creates must be on the model's device.
    model = torchvision.models.resnet18(num_classes=10).to("meta")
    p = qx.prepare_qat(model, qconfig(4), example_inputs=(torch.empty(2, 3, 32, 32, device="meta"),))
    elsewhere = [n for n, t in itertools.chain(p.named_parameters(), p.named_buffers()) if not t.is_meta]
    assert not elsewhere and count(p, Quantizer) > 40


def test_uncalibrated_model_names_the_quantizer(resnet):
    _, x, p = resnet
    with pytest.raises(RuntimeError, match="Quantizer 'conv1.input_quantizer'.*never calibrated"):
        p(x)


def test_calibrate_sets_ranges_and_restores_modes():
    model = plain_cnn()
    p = qx.prepare_qat(model, qconfig(), example_inputs=(torch.randn(1, 3, 16, 16),)).train()
    batches = [(torch.randn(2, 3, 16, 16) * s, torch.zeros(2)) for s in (1.0, 3.0, 10.0)]
    qx.calibrate(p, batches, num_batches=2, progress=False)
    first = p.get_submodule("0").input_quantizer
    amax = torch.cat([b[0] for b in batches[:2]]).abs().max()
    torch.testing.assert_close(first.scale, amax / 127, rtol=0, atol=0)
    assert p.training and all(m.training for m in p.modules())
    assert all(q.enabled and q.calibrated and not q.observing for _, q in qx.quantizers(p))
    w = p.get_submodule("6")  # plain conv: weight quantizer per output channel
    torch.testing.assert_close(w.weight_quantizer.scale, w.weight.abs().amax((1, 2, 3)) / 127, rtol=0, atol=0)
    p(batches[2][0]).sum().backward()  # and it trains


def test_prepare_rejects_bad_arguments():
    with pytest.raises(TypeError, match="QConfig"):
        qx.prepare_qat(plain_cnn(), QuantSpec())
    with pytest.raises(ValueError, match="first_last_bits"):
        qx.prepare_qat(plain_cnn(), qconfig(), first_last_bits="int8")


def test_first_and_last_layers_turn_pot_into_uniform():
    pot = QConfig(weight=QuantSpec(scheme="pot", bits=4, granularity="channel", calibration="max"),
                  activation=QuantSpec(scheme="apot", bits=4, signed=False, calibration="max"))
    p = qx.prepare_qat(plain_cnn(), pot)
    first, middle, last = (p.get_submodule(n) for n in ("0", "3", "10"))
    assert (first.weight_quantizer.spec.scheme, first.weight_quantizer.spec.narrow_range) == ("uniform", True)
    assert first.input_quantizer.spec == QuantSpec(bits=8, signed=True, calibration="max")
    assert last.input_quantizer.spec == QuantSpec(bits=8, signed=False, calibration="max")
    assert middle.weight_quantizer.spec == pot.weight and middle.input_quantizer.spec == pot.activation
    assert middle.weight_quantizer.alpha.shape == (8,) and middle.weight_quantizer.scale is None
