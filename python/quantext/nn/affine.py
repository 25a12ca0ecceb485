"""BatchNorm in inference form: the per-channel affine ``x * scale + shift``.

``quantext.convert`` folds a BatchNorm into the convolution before it when
there is one (:class:`~quantext.nn.QuantConvBn2d`); every other BatchNorm
(DenseNet's pre-activation ``norm -> relu -> conv``, a BN after an add, a
``BatchNorm1d`` after a Linear) becomes a :class:`ChannelAffine`, which exports
as an ONNX ``Mul`` and ``Add`` (float) instead of the ``BatchNormalization``
that a QDQ export refuses.
"""

from __future__ import annotations

import torch
from torch import nn


def safe_bn_factor(gamma: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``gamma / std`` per channel, ``0`` where ``std`` is ``0`` (``eps = 0`` and a
    dead channel: the conv output is constant, so BN's limit is ``beta``; a plain
    division would give ``inf`` or ``0/0 = NaN``)."""
    return torch.where(std > 0, gamma / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(gamma))


def safe_std(var_plus_eps: torch.Tensor) -> torch.Tensor:
    """``sqrt(var + eps)`` whose gradient is 0, not ``0/0``, where the argument is 0."""
    positive = var_plus_eps > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, var_plus_eps, torch.ones_like(var_plus_eps))),
                       torch.zeros_like(var_plus_eps))


def check_bn_statistics(bn: nn.modules.batchnorm._BatchNorm, name: str) -> None:
    """Raises ``ValueError`` naming ``name`` when ``bn`` cannot be turned into a
    fixed affine: no running statistics, or running statistics / parameters that
    are not finite (a diverged training run)."""
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"BatchNorm '{name}' has track_running_stats=False: it normalizes with batch statistics "
                         "in eval mode too, so it has no inference form to fold or export")
    tensors = {"running_mean": bn.running_mean, "running_var": bn.running_var}
    if bn.affine:
        tensors.update(weight=bn.weight, bias=bn.bias)
    for what, t in tensors.items():
        bad = (~torch.isfinite(t.detach())).nonzero().flatten()
        if bad.numel():
            raise ValueError(f"BatchNorm '{name}': {what} is not finite in channels {bad[:8].tolist()} "
                             f"(values {t.detach()[bad[:4]].tolist()}); the training diverged, there is nothing "
                             "meaningful to fold")
    if (bn.running_var < 0).any():
        raise ValueError(f"BatchNorm '{name}': running_var is negative in channels "
                         f"{(bn.running_var < 0).nonzero().flatten()[:8].tolist()}")


def check_finite(tensors: dict[str, torch.Tensor], name: str) -> None:
    """Raises ``ValueError`` when a folded tensor overflowed its dtype."""
    for what, t in tensors.items():
        bad = (~torch.isfinite(t)).nonzero()
        if bad.numel():
            raise ValueError(f"folding the BatchNorm of '{name}' overflows {t.dtype} in its {what} (at index "
                             f"{bad[0].tolist()}): the running statistics or parameters are too large")


class ChannelAffine(nn.Module):
    """``y = x * scale[c] + shift[c]`` along dimension 1 (any rank >= 2), the
    inference form of a BatchNorm. ``scale`` and ``shift`` are buffers."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        if scale.dim() != 1 or scale.shape != shift.shape:
            raise ValueError(f"ChannelAffine: scale and shift must be 1-d of one length, got {tuple(scale.shape)} "
                             f"and {tuple(shift.shape)}")
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    @classmethod
    @torch.no_grad()
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm, name: str = "") -> "ChannelAffine":
        """The affine that ``bn`` computes in eval mode, ``gamma / sqrt(var + eps)`` and
        ``beta - mean * scale`` (computed as BatchNorm's CPU kernel does, so the outputs
        agree to rounding). A channel with ``var + eps = 0`` gets scale 0 (see
        :func:`safe_bn_factor`). Errors name ``name``."""
        check_bn_statistics(bn, name or type(bn).__name__)
        scale, shift = batchnorm_affine(bn)
        check_finite({"scale": scale, "shift": shift}, name or type(bn).__name__)
        return cls(scale.clone(), shift.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_affine(x, self.scale, self.shift)

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}"


def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of the affine ``bn`` computes in eval mode."""
    mean, var = bn.running_mean, bn.running_var
    gamma = bn.weight if bn.affine else torch.ones_like(var)
    beta = bn.bias if bn.affine else torch.zeros_like(mean)
    scale = safe_bn_factor(gamma, safe_std(var + bn.eps))
    return scale, beta - mean * scale


def channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale[c] + shift[c]`` along dimension 1."""
    if x.dim() < 2 or x.shape[1] != scale.numel():
        raise ValueError(f"ChannelAffine expects input of shape [N, {scale.numel()}, ...], got {tuple(x.shape)}")
    shape = (-1,) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.reshape(shape), x, scale.reshape(shape))


class _InferenceForm:
    """A BatchNorm whose eval mode computes, with the same arithmetic, the
    :class:`ChannelAffine` that :func:`quantext.convert` replaces it with, so
    that ``convert`` leaves the outputs of a frozen QAT model bit for bit
    unchanged (BatchNorm's own kernel rounds differently, and one element on a
    rounding boundary of the next quantizer is then a whole step apart).
    Training mode, state and ``state_dict`` are the BatchNorm's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or not self.track_running_stats:
            return super().forward(x)
        self._check_input_dim(x)
        return channel_affine(x, *batchnorm_affine(self))

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
        """The same BatchNorm (parameters, statistics, mode; it must track running
        statistics) in this class."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                  device=bn.running_mean.device, dtype=bn.running_mean.dtype)
        new.load_state_dict(bn.state_dict())
        return new.train(bn.training)


class InferenceFormBatchNorm1d(_InferenceForm, nn.BatchNorm1d):
    """:class:`nn.BatchNorm1d` whose eval mode is its :class:`ChannelAffine` (see ``_InferenceForm``)."""


class InferenceFormBatchNorm2d(_InferenceForm, nn.BatchNorm2d):
    """:class:`nn.BatchNorm2d` whose eval mode is its :class:`ChannelAffine` (see ``_InferenceForm``)."""


class InferenceFormBatchNorm3d(_InferenceForm, nn.BatchNorm3d):
    """:class:`nn.BatchNorm3d` whose eval mode is its :class:`ChannelAffine` (see ``_InferenceForm``)."""


INFERENCE_FORMS: dict[type, type] = {nn.BatchNorm1d: InferenceFormBatchNorm1d, nn.BatchNorm2d: InferenceFormBatchNorm2d,
                                     nn.BatchNorm3d: InferenceFormBatchNorm3d}
