"""Functional, autograd-aware fake quantization over the native ops."""

from __future__ import annotations

import math
import operator
from typing import Any

import torch

from . import _C
from ._ops import ops
from .spec import UNIFORM_BITS, grid_bounds


def int_arg(name: str, value: Any) -> int:
    """``value`` as an int (anything with ``__index__``); a float, a string or a
    bool (``qmin=True``) is a TypeError naming the argument instead of being
    truncated or read as 1."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None


def bool_arg(name: str, value: Any) -> bool:
    """``value`` as a bool (a bool, or the int 0 or 1); a string such as ``"no"``
    is a TypeError naming the argument instead of being truthy."""
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


def tensor_arg(name: str, value: Any) -> torch.Tensor:
    """``value`` if it is a real tensor; a TypeError naming the argument otherwise
    (a list, a number where a tensor is needed, a complex tensor)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex():
        raise TypeError(f"{name} must be a real tensor, got {value.dtype} (the imaginary part would be dropped)")
    return value


def _grad_factor(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"grad_factor must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"grad_factor must be finite, got {value}")
    return value


def uniform_bounds(bits: int, signed: bool, narrow_range: bool = False) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a ``bits``-wide uniform grid (2..16 bits).

    Signed: ``[-2^(b-1), 2^(b-1)-1]`` (narrow: ``-2^(b-1)+1``); unsigned: ``[0, 2^b-1]``
    (narrow: ``[1, 2^b-1]``). A :class:`~quantext.QuantSpec` holds its own as ``spec.bounds``.
    """
    bits = int(int_arg("bits", bits))
    signed, narrow_range = bool_arg("signed", signed), bool_arg("narrow_range", narrow_range)
    lo, hi = UNIFORM_BITS
    if not lo <= bits <= hi:
        raise ValueError(f"quantext.uniform_bounds: bits must be in [{lo}, {hi}], got {bits}")
    return grid_bounds(bits, signed, narrow_range)


def set_value_checks(enabled: bool) -> None:
    """Turn the value checks of device-resident scales/zero points on or off.

    Checking that a CUDA scale is positive and finite (and the zero point in
    range) reads each parameter's smallest and largest value back to the host,
    all in one copy: one sync per forward call; the autograd backward does not
    check again. CPU tensors are always checked (in place, no sync).
    """
    _C.set_value_checks(bool(enabled))


def lsq_grad_factor(numel_per_param: int, qmax: int) -> float:
    """LSQ gradient scale ``1 / sqrt(n * qmax)`` for ``n`` elements sharing one scale."""
    return 1.0 / math.sqrt(max(numel_per_param, 1) * max(qmax, 1))


def fake_quant_uniform(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    axis: int | None = None,
    group_size: int = 0,
    grad_factor: float = 1.0,
) -> torch.Tensor:
    """Uniform affine fake quantization, ``(clamp(round(x/s)+z, qmin, qmax) - z) * s``.

    Bit-for-bit what ``torch.fake_quantize_per_tensor_affine`` /
    ``..._per_channel_affine`` compute. Gradients: clipped straight-through for
    ``x``; LSQ / LSQ+ for a floating ``scale`` / ``zero_point`` that requires
    grad, multiplied by ``grad_factor``.

    Args:
        x: floating tensor (float16/bfloat16/float32/float64, any layout).
        scale: float32 (or float64 with float64 ``x``). One element per tensor,
            ``[x.size(axis)]`` per channel, or ``x``'s shape with
            ``size(axis)/group_size`` on ``axis`` per group.
        zero_point: same shape as ``scale``; int32/int64, or floating (rounded).
        qmin, qmax: integer range, see :func:`uniform_bounds`.
        axis: ``None`` for per tensor; the channel/group axis otherwise.
        group_size: ``0``, or the number of consecutive elements along ``axis``
            sharing one scale.
        grad_factor: multiplies the scale/zero-point gradients (LSQ's ``g``), finite.
    """
    x, scale, zero_point = tensor_arg("x", x), tensor_arg("scale", scale), tensor_arg("zero_point", zero_point)
    return ops.fake_quant_uniform(x, scale, zero_point, int_arg("qmin", qmin), int_arg("qmax", qmax),
                                  None if axis is None else int_arg("axis", axis), int_arg("group_size", group_size),
                                  _grad_factor(grad_factor))


def fake_quant_levels(
    x: torch.Tensor,
    alpha: torch.Tensor,
    scheme: str,
    bits: int,
    signed: bool = True,
    k: int = 2,
    rounding: str = "nearest",
    axis: int | None = None,
    grad_factor: float = 1.0,
) -> torch.Tensor:
    """Powers-of-two (``scheme="pot"``) or additive powers-of-two (``"apot"``) fake quantization.

    ``y = alpha * Q(clip(x / alpha))``: ``x / alpha`` is clipped to ``[-1, 1]``
    (signed) or ``[0, 1]`` (unsigned) and mapped to the nearest level of
    :func:`quantext.levels` ``(scheme, bits, signed, k)``, a tie going to the
    smaller magnitude (the level is found by comparing with the midpoints
    between levels, never by a distance to every level). ``rounding="log"``
    (PoT only) rounds ``log2|x/alpha|`` to the nearest integer instead, i.e.
    switches levels at the geometric midpoints ``2^-(j+1/2)``; a magnitude below
    ``2^-(m+1/2)``, ``2^-m`` being the smallest non-zero level
    (``m = 2^B - 2``), rounds to 0. NaN stays NaN; +-inf go to the end levels.

    Gradients: ``dx = dy`` inside the clip range, 0 outside; for an ``alpha``
    that requires grad, ``sum(dy * (Q(v) - v))`` inside, ``sum(dy * sign(x))``
    above the range (0 below zero when unsigned), times ``grad_factor``.

    Args:
        x: floating tensor (float16/bfloat16/float32/float64, any layout).
        alpha: clipping value, positive and finite: float32 (or float64 with
            float64 ``x``), one element per tensor or ``[x.size(axis)]``.
        scheme: ``"pot"`` or ``"apot"``.
        bits: total bits including the sign bit (signed 2..8, unsigned 1..8).
        signed: values below zero are representable.
        k: APoT base bits per additive term.
        rounding: ``"nearest"`` or ``"log"`` (PoT only).
        axis: ``None`` per tensor, else the channel axis of ``alpha``.
        grad_factor: multiplies the gradient of ``alpha``, finite.
    """
    x, alpha = tensor_arg("x", x), tensor_arg("alpha", alpha)
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a str, got {scheme!r}")
    if not isinstance(rounding, str):
        raise TypeError(f"rounding must be a str, got {rounding!r}")
    return ops.fake_quant_levels(x, alpha, scheme, int_arg("bits", bits), bool_arg("signed", signed), int_arg("k", k),
                                 rounding,
                                 None if axis is None else int_arg("axis", axis), _grad_factor(grad_factor))


def weight_normalize(w: torch.Tensor, axis: int | None = None, eps: float = 1e-12) -> torch.Tensor:
    """The APoT paper's weight normalization ``(w - mean(w)) / sqrt(var(w) + eps)``.

    Statistics (population variance) are taken over the whole tensor
    (``axis=None``) or per index of ``axis``, in float32 for half-precision
    inputs. Autograd flows through ``w`` and through the statistics (the
    paper's code computes them from ``w.data``, as constants).
    """
    rows = w.reshape(1, -1) if axis is None else w.movedim(axis, 0).reshape(w.shape[axis], -1)
    stats_in = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
    var, mean = torch.var_mean(stats_in, dim=1, correction=0, keepdim=True)
    out = ((stats_in - mean) * torch.rsqrt(var + eps)).to(w.dtype)
    if axis is None:
        return out.reshape(w.shape)
    return out.reshape(w.movedim(axis, 0).shape).movedim(0, axis)
