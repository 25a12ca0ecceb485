"""Conv2d + BatchNorm2d (+ ReLU) with the BN folded into the quantized weight.

The module owns the float conv weight ``W`` (the shadow weight the optimizer
updates), an optional conv bias ``b`` and a real ``nn.BatchNorm2d`` ``bn``
(``gamma``, ``beta``, running statistics). With ``sigma = sqrt(var + eps)``
every forward fake-quantizes the weight folded with the *running* statistics,
``w_f = W * gamma / sigma_run``, so the quantized weight moves slowly:

- training, before freezing (``bn_stats="exact"``, the default, Krishnamoorthi 2018 /
  TensorFlow's ``fold_batch_norms``)::

      out = conv(x, FQ(w_f)) * (sigma_run / sigma_B) + (beta - gamma * mu_B' / sigma_B)

  ``mu_B``, ``sigma_B`` are the batch statistics of the float convolution
  ``conv(x, W)`` and take part in the backward pass as in BatchNorm; ``mu_B'``
  is ``mu_B`` without the conv bias (BN cancels it). The running statistics
  are updated from the batch first (momentum, unbiased variance,
  ``num_batches_tracked``, as ``nn.BatchNorm2d`` does), so ``w_f`` folds the
  latest statistics. Cost: one extra float convolution per forward (roughly
  1.5x the convolution work of an unquantized conv+BN in forward and backward).
- ``bn_stats="approx"`` (half the step time, same accuracy, but wrong
  gradients under inductor for now: docs/bn_folding.md):
  ``torch.ao.nn.intrinsic.qat.ConvBn2d``'s one-convolution
  approximation, ``bn(conv(x, FQ(w_f)) / (gamma / sigma_run) + b)`` in training
  mode, i.e. the batch statistics of the *quantized* convolution scaled back.
  A channel with ``gamma = 0`` would make that ``0/0``; it is folded with
  ``gamma = 1`` instead (its output is ``beta`` either way).
- after :meth:`freeze_bn` (or ``freeze_bn_after`` training steps) and in eval
  mode, running statistics only::

      out = conv(x, FQ(w_f)) + (beta - gamma * (mu_run - b) / sigma_run)

  which is exactly the graph of :meth:`fold` (what ``quantext.convert`` and the
  ONNX export produce).

State and ``torch.compile`` (see ``docs/compile.md``). The per-step state lives
in buffers updated with tensor ops, never in Python attributes, so a compiled
training step is traced once and not re-guarded per step: ``qat_steps`` (the
training steps taken with batch statistics), ``bn.num_batches_tracked`` and,
with ``momentum=None``, the cumulative-average factor ``1 / num_batches_tracked``
(a tensor, not read on the host). ``bn_frozen`` is a buffer with a Python copy
(a phase flag the forward branches on). ``freeze_bn_after=N`` is decided on the
device: while it is pending, the training forward computes ``active =
qat_steps < N`` (and not frozen) as a 0-dim tensor, selects batch or running
statistics with ``torch.where``, leaves the running statistics and counters
unchanged when inactive and sets the ``bn_frozen`` buffer at step ``N``. The
result equals the frozen forward within float rounding, at the cost of the
batch-statistics work, until the Python copy catches up at the next host round
trip: ``train()``/``eval()``, :attr:`is_bn_frozen`, :meth:`sync_bn_state`,
``load_state_dict`` or :meth:`freeze_bn`. From then on the forward is the frozen
graph. What changes the compiled graph, one recompile each (a phase change
that returns to a graph compiled before reuses it):

- :meth:`freeze_bn` / ``qx.freeze_bn``, or the first sync point after
  ``freeze_bn_after`` steps (crossing step ``N`` itself recompiles nothing);
- ``qx.enable_quant`` / ``qx.disable_quant`` and the quantizers' ``enable``,
  ``disable``, ``observe``; ``qx.calibrate`` leaves the flags as they were at
  the end (fake quantization on, observers off) and runs eagerly;
- ``train()`` / ``eval()``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import QConfig
from ._mirrored import MirroredStateMixin
from .affine import check_bn_statistics, check_finite, safe_bn_factor, safe_std
from .layers import QuantConv2d, attach_quantizers, layer_bias, quantize_or_identity

BN_STATS = ("exact", "approx")


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """A ``[C]`` tensor shaped to broadcast over ``[N, C, H, W]``."""
    return t.reshape(-1, 1, 1)


class QuantConvBn2d(MirroredStateMixin, nn.Conv2d):
    """Conv2d + BatchNorm2d for QAT with BN folding (see the module docstring).

    Args: those of ``nn.Conv2d`` (``bias`` defaults to False) and of
    ``nn.BatchNorm2d`` (``eps``, ``momentum``), plus

        qconfig: quantizer specs of the weight and the input.
        freeze_bn_after: freeze the BN statistics after this many training steps
            (``None``: only when :meth:`freeze_bn` is called).
        bn_stats: ``"exact"`` (batch statistics of the float convolution) or
            ``"approx"`` (one convolution, ``torch.ao``'s approximation).
    """

    _FLOAT_PARTS: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.BatchNorm2d)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = False, padding_mode: str = "zeros", eps: float = 1e-5,
                 momentum: float | None = 0.1, *, qconfig: QConfig, freeze_bn_after: int | None = None,
                 bn_stats: str = "exact", device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        if bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {BN_STATS}, got {bn_stats!r}")
        if freeze_bn_after is not None and (isinstance(freeze_bn_after, bool) or not isinstance(freeze_bn_after, int)
                                            or freeze_bn_after < 0):
            raise ValueError(f"freeze_bn_after must be None or an int >= 0, got {freeze_bn_after!r}")
        self.bn = nn.BatchNorm2d(out_channels, eps, momentum, device=device, dtype=dtype)
        attach_quantizers(self, qconfig, self.weight.shape)
        self.bn_stats = bn_stats
        self.freeze_bn_after = freeze_bn_after
        self._register_mirrored("bn_frozen", int(freeze_bn_after == 0), device=device)
        # Training steps taken with batch statistics: a plain buffer, counted with tensor ops (no Python copy,
        # which torch.compile would guard on and recompile for at every step).
        self.register_buffer("qat_steps", torch.tensor(0, dtype=torch.int64, device=device))

    @classmethod
    def from_float(cls, module: nn.Sequential, qconfig: QConfig, *, freeze_bn_after: int | None = None,
                   bn_stats: str = "exact") -> "QuantConvBn2d":
        """From ``nn.Sequential(conv, bn)`` (``(conv, bn, relu)`` for the ReLU variant;
        ``torch.ao.nn.intrinsic.ConvBn2d``/``ConvBnReLU2d`` are such sequences).
        Shares the conv's parameters and the BatchNorm module."""
        parts = list(module) if isinstance(module, nn.Sequential) else None
        if parts is None or [type(p) for p in parts] != list(cls._FLOAT_PARTS):
            names = ", ".join(t.__name__ for t in cls._FLOAT_PARTS)
            got = [type(p).__name__ for p in parts] if parts is not None else type(module).__name__
            raise TypeError(f"{cls.__name__}.from_float expects nn.Sequential({names}), got {got}")
        conv, bn = parts[0], parts[1]
        if bn.num_features != conv.out_channels or not bn.affine or not bn.track_running_stats:
            raise ValueError(f"{cls.__name__}.from_float needs an affine BatchNorm2d with running statistics over "
                             f"the conv's {conv.out_channels} channels, got {bn}")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode, bn.eps, bn.momentum, qconfig=qconfig,
                  freeze_bn_after=freeze_bn_after, bn_stats=bn_stats, device=conv.weight.device,
                  dtype=conv.weight.dtype)
        new.weight, new.bias, new.bn = conv.weight, conv.bias, bn
        return new.train(conv.training)

    # ------------------------------------------------------------- BN state
    @property
    def is_bn_frozen(self) -> bool:
        """Whether the forward pass uses the running statistics only. While
        ``freeze_bn_after`` is pending this reads the ``bn_frozen`` buffer (a host
        read: a sync on CUDA) and refreshes its Python copy, see :meth:`sync_bn_state`."""
        if self._freeze_pending():
            self._refresh_mirrored("bn_frozen")
        return bool(self._get_mirrored("bn_frozen"))

    def freeze_bn(self) -> "QuantConvBn2d":
        """Stops using and updating batch statistics."""
        self._set_mirrored("bn_frozen", 1)
        return self

    def sync_bn_state(self) -> bool:
        """Refreshes the Python copy of ``bn_frozen`` from the buffer, which the
        training forward sets on the device after ``freeze_bn_after`` steps; returns
        it. A host read (a sync on CUDA): ``train()``/``eval()`` call it while the
        freeze is pending. Once it reads 1 the forward is the frozen graph (under
        ``torch.compile``: one recompile)."""
        return bool(self._refresh_mirrored("bn_frozen"))

    def train(self, mode: bool = True) -> "QuantConvBn2d":
        super().train(mode)
        if self._freeze_pending():  # train/eval switches are phase changes anyway: catch up with the buffer
            self._refresh_mirrored("bn_frozen")
        return self

    def _freeze_pending(self) -> bool:
        """``freeze_bn_after`` is set and the Python copy does not say frozen yet."""
        return self.freeze_bn_after is not None and not self._get_mirrored("bn_frozen")

    def _running_std(self) -> torch.Tensor:
        return safe_std(self.bn.running_var + self.bn.eps)

    def folded_weight(self) -> torch.Tensor:
        """``w_f = W * gamma / sigma_run`` (before fake quantization; 0 for a channel
        with ``sigma_run = 0``, see :func:`~quantext.nn.affine.safe_bn_factor`)."""
        return self.weight * safe_bn_factor(self.bn.weight, self._running_std()).reshape(-1, 1, 1, 1)

    def _fused_bias(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """``beta - (mean - b) * (gamma / std)``: ``mean`` is that of conv(x, W) + b.
        The factor is formed first, so a huge mean times gamma does not overflow
        on its way to a representable bias."""
        centered = mean if self.bias is None else mean - self.bias
        return self.bn.bias - centered * safe_bn_factor(self.bn.weight, std)

    def folded_bias(self) -> torch.Tensor:
        """Bias of the folded inference convolution, from the running statistics."""
        return self._fused_bias(self.bn.running_mean, self._running_std())

    def _batch_stats_active(self) -> torch.Tensor | None:
        """While ``freeze_bn_after`` is pending, a 0-dim bool tensor: this step still
        uses (and tracks) batch statistics. ``None``: it does, unconditionally."""
        if not self._freeze_pending():
            return None
        return (self.bn_frozen == 0) & (self.qat_steps < self.freeze_bn_after)

    @torch.no_grad()
    def _count_step(self, active: torch.Tensor | None) -> float | torch.Tensor:
        """Counts a training step with batch statistics (when ``active``) and returns
        BatchNorm's running-average factor: ``momentum``, or with ``momentum=None``
        the cumulative-average tensor ``1 / num_batches_tracked``. Tensor ops only."""
        bn = self.bn
        if active is None:
            self.qat_steps.add_(1)
            bn.num_batches_tracked.add_(1)
        else:
            step = active.to(self.qat_steps.dtype)
            self.qat_steps.add_(step)
            bn.num_batches_tracked.add_(step)
            # Frozen from the next forward on; the Python copy follows at the next sync point.
            self.bn_frozen.copy_((self.bn_frozen != 0) | (self.qat_steps >= self.freeze_bn_after))
        if bn.momentum is not None:
            return bn.momentum
        return torch.reciprocal(bn.num_batches_tracked.to(bn.running_mean.dtype))

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, factor: float | torch.Tensor,
                        active: torch.Tensor | None) -> None:
        """``running = (1 - factor) * running + factor * batch`` (left as is when not ``active``)."""
        for running, batch in ((self.bn.running_mean, mean), (self.bn.running_var, var)):
            if isinstance(factor, torch.Tensor):
                new = running * (1 - factor) + batch * factor
            else:
                new = running.mul(1 - factor).add(batch, alpha=factor)
            running.copy_(new if active is None else torch.where(active, new, running))

    # ------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize_or_identity(self.input_quantizer, x)
        if not self.training or self._get_mirrored("bn_frozen"):
            return self._forward_frozen(x)
        active = self._batch_stats_active()
        return self._forward_approx(x, active) if self.bn_stats == "approx" else self._forward_exact(x, active)

    def _forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        w = quantize_or_identity(self.weight_quantizer, self.folded_weight())
        return self._conv_forward(x, w, layer_bias(self, self.folded_bias()))

    def _values_per_channel(self, x: torch.Tensor, y: torch.Tensor) -> int:
        n = y.numel() // max(y.shape[1], 1)
        if n <= 1:
            raise ValueError(f"{type(self).__name__}: expected more than 1 value per channel when training, got "
                             f"input of shape {tuple(x.shape)}")
        return n

    def _forward_exact(self, x: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
        y = self._conv_forward(x, self.weight, None)  # the extra float convolution: batch statistics
        n = self._values_per_channel(x, y)
        var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
        if self.bias is not None:
            mean = mean + self.bias  # the statistics BatchNorm sees after the biased conv
        self._update_running(mean, var * (n / (n - 1)), self._count_step(active), active)
        std = safe_std(var + self.bn.eps)
        running_std = self._running_std()
        if active is not None:
            # Past freeze_bn_after the same graph computes the frozen forward: with the running
            # statistics the correction factor is exactly 1 and the bias is folded_bias().
            mean = torch.where(active, mean, self.bn.running_mean)
            std = torch.where(active, std, running_std)
        w = quantize_or_identity(self.weight_quantizer, self.folded_weight())
        out = self._conv_forward(x, w, None)
        # running_std / std, 0 for a channel that is constant in the batch with eps = 0 (BN's limit: beta)
        correction = safe_bn_factor(running_std, std)
        return torch.addcmul(_per_channel(self._fused_bias(mean, std)), out, _per_channel(correction))

    def _forward_approx(self, x: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
        bn = self.bn
        # A zero gamma would make the unscaling below 0/0 (torch.ao's NaN); the
        # channel's output is beta whatever its weight, so fold it with gamma = 1.
        gamma = torch.where(bn.weight == 0, torch.ones_like(bn.weight), bn.weight)
        scale = gamma / self._running_std()
        w = quantize_or_identity(self.weight_quantizer, self.weight * scale.reshape(-1, 1, 1, 1))
        y = self._conv_forward(x, w, None) / _per_channel(scale)
        if self.bias is not None:
            y = y + _per_channel(self.bias)
        factor = self._count_step(active)
        if active is None and not isinstance(factor, torch.Tensor):
            return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, factor, bn.eps)
        # A tensor factor or a pending freeze: batch statistics from F.batch_norm, running ones with tensor ops.
        out = F.batch_norm(y, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        n = self._values_per_channel(x, y)
        with torch.no_grad():
            var, mean = torch.var_mean(y, dim=(0, 2, 3), correction=0)
        self._update_running(mean, var * (n / (n - 1)), factor, active)
        if active is not None:  # past freeze_bn_after: the frozen forward, bn(y) with the running statistics
            w_scale = bn.weight / self._running_std()
            frozen = torch.addcmul(_per_channel(bn.bias - bn.running_mean * w_scale), y, _per_channel(w_scale))
            out = torch.where(active, out, frozen)
        return out

    # ------------------------------------------------------------- convert
    @torch.no_grad()
    def fold(self, name: str = "") -> nn.Module:
        """Inference form: a :class:`QuantConv2d` holding ``w_f`` and the folded bias,
        sharing this module's quantizers (its output equals the frozen forward).
        Raises ``ValueError`` (naming ``name``) for running statistics that are not
        finite or a fold that overflows, rather than return NaN or inf weights."""
        name = name or type(self).__name__
        check_bn_statistics(self.bn, name)
        weight, bias = self.folded_weight(), self.folded_bias()
        check_finite({"weight": weight, "bias": bias}, name)
        conv = QuantConv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                           self.dilation, self.groups, True, self.padding_mode, qconfig=self.qconfig,
                           device=self.weight.device, dtype=self.weight.dtype)
        conv.weight = nn.Parameter(weight.clone())
        conv.bias = nn.Parameter(bias.clone())
        conv.weight_quantizer, conv.input_quantizer = self.weight_quantizer, self.input_quantizer
        return conv.train(self.training)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bn_stats={self.bn_stats}, bn_frozen={self.is_bn_frozen}"


class QuantConvBnReLU2d(QuantConvBn2d):
    """:class:`QuantConvBn2d` followed by ReLU."""

    _FLOAT_PARTS = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))

    def fold(self, name: str = "") -> nn.Module:
        """``nn.Sequential(conv=QuantConv2d(folded), relu=nn.ReLU())``."""
        return nn.Sequential(OrderedDict(conv=super().fold(name), relu=nn.ReLU()))
