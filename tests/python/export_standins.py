"""Test-only stand-ins for quantext's converted QAT modules (the contract the
exporter is built against): Quantizer / QuantConv2d / QuantLinear that call the
quantext ops exactly as the real modules do, a level-table quantizer over a
test-only op (slow reference forward), BN folding, and quantized residual adds
for torchvision's ResNet and MobileNetV2.

The exporter reads only the ops in the traced graph plus a few duck-typed
attributes (``spec``, ``calibrated``, ``weight_quantizer``), so the real
qx.nn modules can replace Quantizer / QuantConv2d / QuantLinear here (the tests
build them through this module, and models through ``quantize()`` and
``calibrate()``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock

import quantext as qx
from quantext.export import LevelsArgs, register_levels_op
from quantext.spec import QuantSpec

INT8_WEIGHT = QuantSpec(bits=8, signed=True, narrow_range=True, granularity="channel", axis=0)
INT8_ACT = QuantSpec(bits=8, signed=True)


class Quantizer(nn.Module):
    """Uniform fake quantizer; ``observe=True`` records max |x| for calibration."""

    def __init__(self, spec: QuantSpec, channels: int = 1) -> None:
        super().__init__()
        self.spec = spec
        self.qmin, self.qmax = qx.uniform_bounds(spec.bits, spec.signed, spec.narrow_range)
        n = channels if spec.granularity == "channel" else 1
        self.register_buffer("scale", torch.zeros(n))
        self.register_buffer("zero_point", torch.zeros(n, dtype=torch.int32))
        self.observe = False

    def calibrate_from(self, x: torch.Tensor) -> None:
        x = x.detach()
        axis, g = self.spec.per_channel_axis, self.spec.group_size
        if g:  # one scale per group of g along axis: the scale keeps x's rank
            shape = list(x.shape)
            shape[axis:axis + 1] = [shape[axis] // g, g]
            amax = x.reshape(shape).abs().amax(axis + 1)
            self.scale = (amax / self.qmax).clamp_min(1e-8)
            self.zero_point = torch.zeros(amax.shape, dtype=torch.int32)
        elif axis is not None:
            self.scale.copy_((x.abs().transpose(0, axis).flatten(1).amax(1) / self.qmax).clamp_min(1e-8))
        elif self.spec.symmetric or not self.spec.signed:
            self.scale.fill_(max(float(x.abs().max()) / self.qmax, 1e-8))
        else:  # asymmetric signed: a range that uses the zero point
            lo = min(float(x.min()), 0.0)
            self.scale.fill_((float(x.abs().max()) - lo) / (self.qmax - self.qmin) + 1e-8)
            self.zero_point.fill_(int(self.qmin - round(lo / float(self.scale[0]))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe:
            self.calibrate_from(x)
            return x
        return torch.ops.quantext.fake_quant_uniform(x, self.scale, self.zero_point, self.qmin, self.qmax,
                                                     self.spec.per_channel_axis, self.spec.group_size or 0, 1.0)


def pot_levels(bits: int, signed: bool) -> list[float]:
    """PoT normalized magnitudes {0} U {2^-j : j = 0..2^B-2}, B = bits-1 when signed."""
    b = bits - 1 if signed else bits
    return [0.0] + [2.0 ** -j for j in reversed(range(2 ** b - 1))]


# APoT tables of DESIGN 2.3 (normalized, B magnitude bits, k = 2)
APOT_LEVELS = {
    2: [0, 1 / 4, 1 / 2, 1],
    3: [0, .1, .2, .3, .4, .6, .8, 1],
    4: [0, 1 / 48, 1 / 24, 1 / 16, 1 / 12, 1 / 8, 1 / 6, 3 / 16, 1 / 4, 1 / 3, 3 / 8, 1 / 2, 2 / 3, 11 / 16, 3 / 4, 1],
}


def levels_reference(x: torch.Tensor, alpha: torch.Tensor, levels: list[float], signed: bool,
                     axis: int | None = None) -> torch.Tensor:
    """Slow, obviously correct nearest-level rounding (DESIGN 2.3): ``v = x / alpha``
    clipped to [-1, 1] (signed) or [0, 1], then the full distance table in
    float64 and its first minimum (= the smaller magnitude on a tie)."""
    a = alpha.reshape([-1 if d == axis else 1 for d in range(x.dim())]) if axis is not None else alpha.reshape(())
    v = x / a
    table = torch.tensor(levels, dtype=torch.float32)
    mag = v.abs().clamp(max=1) if signed else v.clamp(0, 1)
    idx = (mag.double().unsqueeze(-1) - table.double()).abs().argmin(-1)
    y = table[idx] * a
    return y * torch.sign(v) if signed else y


torch.library.define("quantext_test::fake_quant_levels",
                     "(Tensor x, Tensor alpha, float[] levels, bool signed, int? axis=None) -> Tensor")
torch.library.impl("quantext_test::fake_quant_levels", "CompositeExplicitAutograd", levels_reference)
torch.library.register_fake("quantext_test::fake_quant_levels")(
    lambda x, alpha, levels, signed, axis=None: torch.empty_like(x))
register_levels_op(torch.ops.quantext_test.fake_quant_levels.default,
                   lambda a: LevelsArgs(a["x"], a["alpha"], a["levels"], a["signed"], a["axis"]))


class LevelsQuantizer(nn.Module):
    """PoT/APoT fake quantizer over the test-only op; ``alpha`` = max |x|."""

    def __init__(self, levels: list[float], signed: bool, channels: int = 0) -> None:
        super().__init__()
        self.spec = QuantSpec(scheme="pot", bits=4, signed=signed, granularity="channel" if channels else "tensor")
        self.levels, self.signed, self.axis = levels, signed, 0 if channels else None
        self.register_buffer("alpha", torch.zeros(max(channels, 1)))
        self.observe = False

    def calibrate_from(self, x: torch.Tensor) -> None:
        if self.axis is None:
            self.alpha.fill_(float(x.detach().abs().max()))
        else:
            self.alpha.copy_(x.detach().abs().flatten(1).amax(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observe:
            self.calibrate_from(x)
            return x
        return torch.ops.quantext_test.fake_quant_levels(x, self.alpha, self.levels, self.signed, self.axis)


class QuantConv2d(nn.Conv2d):
    """Float weight + bias; fake-quantized weight and input."""

    weight_quantizer: nn.Module | None
    input_quantizer: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quantizer(x) if self.input_quantizer is not None else x
        w = self.weight_quantizer(self.weight) if self.weight_quantizer is not None else self.weight
        return self._conv_forward(x, w, self.bias)


class QuantLinear(nn.Linear):
    weight_quantizer: nn.Module | None
    input_quantizer: nn.Module | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quantizer(x) if self.input_quantizer is not None else x
        w = self.weight_quantizer(self.weight) if self.weight_quantizer is not None else self.weight
        return F.linear(x, w, self.bias)


def fold_bn(model: nn.Module) -> nn.Module:
    """Folds each BatchNorm2d into the Conv2d registered just before it (the
    order torchvision's Sequentials and blocks define them in)."""
    for module in list(model.modules()):
        names = [n for n, _ in module.named_children()]
        for prev, name in zip(names, names[1:]):
            pair = (getattr(module, prev), getattr(module, name))
            if isinstance(pair[0], nn.Conv2d) and isinstance(pair[1], nn.BatchNorm2d):
                setattr(module, prev, fuse_conv_bn_eval(*pair))
                setattr(module, name, nn.Identity())
    return model


def _make_quantizer(spec, channels: int = 0) -> nn.Module:
    """``channels``: a weight's output channels (per-channel), 0 for an activation."""
    if isinstance(spec, QuantSpec):
        return Quantizer(spec, max(channels, 1))
    levels, signed = spec  # (levels, signed): a level-table quantizer
    return LevelsQuantizer(levels, signed, channels)


class QuantBasicBlock(BasicBlock):
    """torchvision BasicBlock with both residual-add inputs quantized."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(self.add_quantizer_a(out) + self.add_quantizer_b(identity))


class QuantInvertedResidual(InvertedResidual):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return self.add_quantizer_a(x) + self.add_quantizer_b(self.conv(x))
        return self.conv(x)


_ADD_BLOCKS = {BasicBlock: QuantBasicBlock, InvertedResidual: QuantInvertedResidual}


def quantize(model: nn.Module, weight=INT8_WEIGHT, act=INT8_ACT, add_act=None, first_act=None) -> nn.Module:
    """Swaps every Conv2d/Linear for the stand-ins and quantizes residual adds.

    ``weight``/``act`` are a QuantSpec (uniform) or ``(levels, signed)``;
    ``first_act`` overrides the first layer's input quantizer (signed images),
    ``add_act`` the residual-add quantizers (default: ``act``).
    """
    model = fold_bn(model.eval())
    first = True
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) in (nn.Conv2d, nn.Linear):
                cls = QuantConv2d if isinstance(child, nn.Conv2d) else QuantLinear
                child.__class__ = cls
                child.weight_quantizer = _make_quantizer(weight, child.out_channels if cls is QuantConv2d
                                                         else child.out_features)
                child.input_quantizer = _make_quantizer(first_act if first and first_act is not None else act)
                first = False
        if type(module) in _ADD_BLOCKS:
            module.__class__ = _ADD_BLOCKS[type(module)]
            module.add_quantizer_a = _make_quantizer(add_act or act)
            module.add_quantizer_b = _make_quantizer(add_act or act)
    return model


def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Max calibration: weights from themselves, activations from one batch."""
    quantizers = [m for m in model.modules() if isinstance(m, (Quantizer, LevelsQuantizer))]
    for m in model.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)) and m.weight_quantizer is not None:
            m.weight_quantizer.calibrate_from(m.weight)
    for q in quantizers:
        q.observe = True
    with torch.no_grad():
        model(x)
    for q in quantizers:
        q.observe = False
    return model
