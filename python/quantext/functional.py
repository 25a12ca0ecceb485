"""Functional, autograd-aware fake quantization over the native ops."""

from __future__ import annotations

import math
import operator
from typing import Any

import torch

from . import _C
from ._ops import ops


def int_arg(name: str, value: Any) -> int:
    """``value`` as an int (anything with ``__index__``); a float or a string is a
    TypeError naming the argument instead of being truncated."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None


def uniform_bounds(bits: int, signed: bool, narrow_range: bool = False) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a ``bits``-wide uniform grid (2..16 bits).

    Signed: ``[-2^(b-1), 2^(b-1)-1]`` (narrow: ``-2^(b-1)+1``); unsigned: ``[0, 2^b-1]``.
    """
    return tuple(_C.uniform_bounds(int_arg("bits", bits), bool(signed), bool(narrow_range)))


def set_value_checks(enabled: bool) -> None:
    """Turn the value checks of device-resident scales/zero points on or off.

    Checking that a CUDA scale is positive and finite reads it back to the host
    (a sync per call). CPU tensors are always checked.
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
    grad_factor = float(grad_factor)
    if not math.isfinite(grad_factor):
        raise ValueError(f"grad_factor must be finite, got {grad_factor}")
    return ops.fake_quant_uniform(x, scale, zero_point, int_arg("qmin", qmin), int_arg("qmax", qmax),
                                  None if axis is None else int_arg("axis", axis), int_arg("group_size", group_size),
                                  grad_factor)
