"""QAT form of a Linear layer that stores its weight transposed, ``[in, out]``:
Hugging Face's ``transformers.pytorch_utils.Conv1D`` (GPT-2's ``c_attn``,
``c_proj``, ``c_fc``), which computes ``addmm(bias, x, W)``.

The weight is quantized as a Linear's is: per output feature by default, which
is axis 1 of the stored ``[in, out]`` weight (and per group along the input
dimension, axis 0, for ``QConfig.weight_only``); the input per tensor. The
parameters are shared with the float layer, so the state-dict keys and shapes
stay those of the Hugging Face model. transformers is not imported here: the
class is looked up among the loaded modules (a model holding one has loaded it).
"""

from __future__ import annotations

import dataclasses
import sys

import torch
from torch import nn

from ..spec import QConfig, QuantSpec
from .layers import attach_quantizers, layer_bias, quantize_or_identity


def hf_conv1d_class() -> type | None:
    """``transformers.pytorch_utils.Conv1D`` when transformers has loaded it, else ``None``."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None)


def transposed_spec(spec: QuantSpec | None) -> QuantSpec | None:
    """``spec`` (written for a Linear's ``[out, in]`` weight) for the same weight
    stored ``[in, out]``: a per-channel or per-group axis moves to the other
    dimension. An axis out of range for a matrix is left for the Quantizer to refuse."""
    if spec is None or spec.per_channel_axis is None or not -2 <= spec.axis < 2:
        return spec
    return spec.replace(axis=1 - spec.axis % 2)


class QuantTransposedLinear(nn.Module):
    """``y = x @ FQ(W) + b`` with ``W`` stored ``[in_features, out_features]``
    (Hugging Face's ``Conv1D``), weight and input fake-quantized.

    Build it with :meth:`from_float`. ``qconfig`` is the configuration as
    applied to the stored layout (its weight axis moved by :func:`transposed_spec`);
    ``nf``/``nx`` are the Hugging Face names of ``out_features``/``in_features``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, qconfig: QConfig,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        nn.init.normal_(self.weight, std=0.02)  # Conv1D's initialization
        applied = dataclasses.replace(qconfig, weight=transposed_spec(qconfig.weight))
        attach_quantizers(self, applied, self.weight.shape)

    @property
    def nf(self) -> int:
        return self.out_features

    @property
    def nx(self) -> int:
        return self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize_or_identity(self.input_quantizer, x)
        w = quantize_or_identity(self.weight_quantizer, self.weight)
        rows = x.reshape(-1, x.shape[-1])
        bias = layer_bias(self, self.bias)
        out = rows @ w if bias is None else torch.addmm(bias, rows, w)
        return out.reshape(*x.shape[:-1], self.out_features)

    @classmethod
    def from_float(cls, module: nn.Module, qconfig: QConfig) -> "QuantTransposedLinear":
        """A QAT copy of a ``transformers.pytorch_utils.Conv1D`` sharing its weight and bias parameters."""
        conv1d = hf_conv1d_class()
        if conv1d is None or type(module) is not conv1d:
            raise TypeError(f"QuantTransposedLinear.from_float expects transformers' Conv1D, got "
                            f"{type(module).__name__}")
        if not isinstance(qconfig, QConfig):
            raise TypeError(f"qconfig must be a quantext.QConfig, got {type(qconfig).__name__}")
        nx, nf = module.weight.shape
        new = cls(nx, nf, module.bias is not None, qconfig=qconfig, device=module.weight.device,
                  dtype=module.weight.dtype)
        new.weight, new.bias = module.weight, module.bias
        return new.train(module.training)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
