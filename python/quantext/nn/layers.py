"""QAT versions of ``nn.Conv2d`` and ``nn.Linear``.

The float ``weight`` stays the ``nn.Parameter`` the optimizer updates (the
"shadow" weight); every forward fake-quantizes it with ``weight_quantizer``
(per output channel, axis 0) and the input with ``input_quantizer`` (per
tensor). Either quantizer is ``None`` when the :class:`QConfig` leaves that
tensor in float.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import QConfig
from .quantizer import Quantizer


def quantize_or_identity(quantizer: Quantizer | None, x: torch.Tensor) -> torch.Tensor:
    """``quantizer(x)``, or ``x`` when the tensor stays in float."""
    return x if quantizer is None else quantizer(x)


def _uniform_scale(quantizer: Quantizer | None, granularities: tuple[str, ...]) -> torch.Tensor | None:
    """The scale a uniform quantizer uses now (detached), or ``None`` when it
    is absent, off, uncalibrated, of another scheme or granularity."""
    if quantizer is None or quantizer.spec.scheme != "uniform" or quantizer.spec.dynamic \
            or quantizer.spec.granularity not in granularities \
            or not (quantizer.enabled and quantizer.calibrated):
        return None
    return quantizer._effective()["scale"].detach()


def layer_bias(module: nn.Module, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``bias`` as the layer uses it: with ``qconfig.int32_bias``, rounded onto
    the int32 grid of step ``input scale * weight scale`` (see
    :class:`~quantext.QConfig`; saturating at the int32 range like the
    integer kernels), with a straight-through gradient for the bias and none
    for the scales; otherwise unchanged."""
    if bias is None or not module.qconfig.int32_bias:
        return bias
    s_in = _uniform_scale(module.input_quantizer, ("tensor",))
    s_w = _uniform_scale(module.weight_quantizer, ("tensor", "channel"))
    if s_in is None or s_w is None:
        return bias
    step = (s_in * s_w).reshape(-1)  # float32 product, as ONNX Runtime forms it
    codes = torch.round(bias.detach() / step).clamp(-(2**31), 2**31 - 1)  # int32 saturates
    return codes * step + (bias - bias.detach())  # exactly the grid value; gradient straight through


def attach_quantizers(module: nn.Module, qconfig: QConfig, weight_shape: Sequence[int],
                      quantize_input: bool = True) -> None:
    """Gives ``module`` its ``qconfig``, ``weight_quantizer`` and ``input_quantizer``
    (``None`` without ``quantize_input``: an embedding's indices)."""
    if not isinstance(qconfig, QConfig):
        raise TypeError(f"qconfig must be a quantext.QConfig, got {type(qconfig).__name__}")
    module.qconfig = qconfig
    device = module.weight.device  # a model moved to its device before prepare_qat keeps its quantizers there
    module.weight_quantizer = None if qconfig.weight is None else \
        Quantizer(qconfig.weight, weight_shape, role="weight").to(device)
    module.input_quantizer = None if qconfig.activation is None or not quantize_input else \
        Quantizer(qconfig.activation).to(device)


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weight and input.

    Build it with :meth:`from_float`; the constructor takes ``nn.Conv2d``'s
    arguments plus ``qconfig``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, qconfig: QConfig,
                 device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        attach_quantizers(self, qconfig, self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize_or_identity(self.input_quantizer, x)
        w = quantize_or_identity(self.weight_quantizer, self.weight)
        return self._conv_forward(x, w, layer_bias(self, self.bias))

    @classmethod
    def from_float(cls, module: nn.Conv2d, qconfig: QConfig) -> "QuantConv2d":
        """A QAT copy of ``module`` sharing its weight and bias parameters."""
        if type(module) is not nn.Conv2d:
            raise TypeError(f"QuantConv2d.from_float expects an nn.Conv2d, got {type(module).__name__}")
        new = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                  module.dilation, module.groups, module.bias is not None, module.padding_mode, qconfig=qconfig,
                  device=module.weight.device, dtype=module.weight.dtype)
        new.weight, new.bias = module.weight, module.bias
        return new.train(module.training)


class QuantLinear(nn.Linear):
    """``nn.Linear`` with fake-quantized weight (per output feature) and input."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, qconfig: QConfig,
                 device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        attach_quantizers(self, qconfig, self.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize_or_identity(self.input_quantizer, x)
        return F.linear(x, quantize_or_identity(self.weight_quantizer, self.weight), layer_bias(self, self.bias))

    @classmethod
    def from_float(cls, module: nn.Linear, qconfig: QConfig) -> "QuantLinear":
        """A QAT copy of ``module`` sharing its weight and bias parameters."""
        if type(module) is not nn.Linear:
            raise TypeError(f"QuantLinear.from_float expects an nn.Linear, got {type(module).__name__}")
        new = cls(module.in_features, module.out_features, module.bias is not None, qconfig=qconfig,
                  device=module.weight.device, dtype=module.weight.dtype)
        new.weight, new.bias = module.weight, module.bias
        return new.train(module.training)
