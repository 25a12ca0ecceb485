"""Spec-driven quantization for every scheme: level tables, fake quantization
and integer codes (:func:`fake_quant`, :func:`quantize`, :func:`dequantize`),
plus the fake implementations of the level and code ops.

Integer codes:

* uniform: ``clamp(round(x / scale) + zero_point, qmin, qmax)`` stored as
  int8 when ``[qmin, qmax]`` fits ``[-128, 127]``, uint8 when it fits
  ``[0, 255]``, else int16 or int32.
* PoT / APoT: the index of the magnitude level in the ascending magnitude
  table (``levels(scheme, bits, signed=False)`` for ``B`` magnitude bits),
  negated for negative values: int8 ``sign * index`` for a signed grid, uint8
  ``index`` for an unsigned one. Code 0 is zero.

NaN has no code: it gets the zero point (uniform) or 0. Decoding gives float32
(float64 for a float64 scale/alpha) and equals :func:`fake_quant` of the same
input bit for bit (a float64 input needs a float64 scale/alpha for that).
"""

from __future__ import annotations

import torch

from ._ops import check_same_device, ops
from .functional import (bool_arg, fake_quant_levels, fake_quant_uniform, int_arg, lsq_grad_factor, uniform_bounds,
                         weight_normalize)
from .spec import QuantSpec


def _magnitude_bits(bits: int, signed: bool) -> int:
    return bits - 1 if signed else bits


def _uniform_code_dtype(qmin: int, qmax: int) -> torch.dtype:
    if qmin >= -128 and qmax <= 127:
        return torch.int8
    if qmin >= 0 and qmax <= 255:
        return torch.uint8
    if qmin >= -32768 and qmax <= 32767:
        return torch.int16
    return torch.int32


# Every grid has exactly 2^B distinct magnitudes (the C++ builder asserts it).
@torch.library.register_fake("quantext::levels")
def _levels_fake(scheme, bits, signed, k=2):
    b = _magnitude_bits(bits, signed)
    return torch.empty(2 ** (b + 1) - 1 if signed else 2 ** b, dtype=torch.float64)


@torch.library.register_fake("quantext::apot_decode_table")
def _apot_decode_table_fake(bits, signed, k=2):
    b = _magnitude_bits(bits, signed)
    return torch.empty(2 ** b, -(-b // k), dtype=torch.int64)


@torch.library.register_fake("quantext::fake_quant_levels")
def _fake_quant_levels_fake(x, alpha, scheme, bits, signed, k=2, rounding="nearest", axis=None, grad_factor=1.0):
    check_same_device("fake_quant_levels", x, alpha=alpha)
    return torch.empty_like(x)


@torch.library.register_fake("quantext::fake_quant_levels_backward")
def _fake_quant_levels_backward_fake(grad, x, alpha, scheme, bits, signed, k, rounding, axis, grad_factor,
                                     alpha_grad):
    check_same_device("fake_quant_levels_backward", x, alpha=alpha, grad=grad)
    return torch.empty_like(x), torch.empty_like(alpha)


@torch.library.register_fake("quantext::quantize_uniform")
def _quantize_uniform_fake(x, scale, zero_point, qmin, qmax, axis=None, group_size=0):
    check_same_device("quantize_uniform", x, scale=scale, zero_point=zero_point)
    return torch.empty_like(x, dtype=_uniform_code_dtype(qmin, qmax))


@torch.library.register_fake("quantext::dequantize_uniform")
def _dequantize_uniform_fake(codes, scale, zero_point, axis=None, group_size=0):
    check_same_device("dequantize_uniform", codes, scale=scale, zero_point=zero_point)
    return torch.empty_like(codes, dtype=scale.dtype)


@torch.library.register_fake("quantext::quantize_levels")
def _quantize_levels_fake(x, alpha, scheme, bits, signed, k=2, rounding="nearest", axis=None):
    check_same_device("quantize_levels", x, alpha=alpha)
    return torch.empty_like(x, dtype=torch.int8 if signed else torch.uint8)


@torch.library.register_fake("quantext::dequantize_levels")
def _dequantize_levels_fake(codes, alpha, scheme, bits, signed, k=2, axis=None):
    check_same_device("dequantize_levels", codes, alpha=alpha)
    return torch.empty_like(codes, dtype=alpha.dtype)


def levels(scheme: str, bits: int, signed: bool = True, k: int = 2) -> torch.Tensor:
    """Normalized level table of a PoT/APoT grid: float64, ascending, top level 1.

    ``bits`` counts the sign bit of a signed grid, which has ``B = bits - 1``
    magnitude bits and is symmetric (``-levels, 0, +levels``); an unsigned grid
    has ``B = bits``. PoT: ``{0} U {2^-j : j = 0 .. 2^B - 2}``. APoT: sums of
    one value per additive term, normalized by the largest sum (see
    :func:`apot_decode_table`).
    """
    return ops.levels(scheme, int_arg("bits", bits), bool_arg("signed", signed), int_arg("k", k))


def apot_decode_table(bits: int, signed: bool = True, k: int = 2) -> torch.Tensor:
    """APoT decode table, int64 ``[2^B, terms]``, for a shift-and-add datapath.

    Row ``c`` (a magnitude code) holds, per additive term, the exponent ``e``
    of the power ``2^-e`` that term contributes, or ``-1``. The level is
    ``sum_t 2^-e[c, t] / top`` with ``top`` the sum of the last row, so
    ``value = sign * alpha / top * sum_t 2^-e[c, t]``.

    ``B = bits - 1`` (signed) or ``bits`` magnitude bits make ``n = B // k``
    terms of ``2^k - 1`` powers each (``P_i = {0} U {2^-(i + j*n)}``) and, when
    ``k`` does not divide ``B``, one more term with ``2^(B % k) - 1`` powers;
    exponents are dealt out round by round, the extra term taking the first of
    each of the last rounds. For ``k = 2`` that gives the APoT reference code's
    ``B = 3`` and ``B = 5`` sets, and ``{0, 1}`` for ``B = 1``.
    """
    return ops.apot_decode_table(int_arg("bits", bits), bool_arg("signed", signed), int_arg("k", k))


def _param(value: torch.Tensor | float | None, name: str, spec: QuantSpec, x: torch.Tensor) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{name} is required for scheme={spec.scheme!r}")
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float32, device=x.device)
    raise TypeError(f"{name} must be a tensor or a number, got {type(value).__name__}")


def _check_unused(spec: QuantSpec, **params) -> None:
    for name, value in params.items():
        if value is not None:
            raise ValueError(f"{name} is not a parameter of scheme={spec.scheme!r}")


def _check_spec(spec: QuantSpec) -> None:
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")


def _uniform_params(x: torch.Tensor, spec: QuantSpec, scale, zero_point, alpha):
    _check_unused(spec, alpha=alpha)
    s = _param(scale, "scale", spec, x)
    if zero_point is None:
        if not spec.symmetric:
            raise ValueError("zero_point is required for an asymmetric spec (symmetric=False)")
        zero_point = torch.zeros(s.shape, dtype=torch.int32, device=s.device)
    elif not isinstance(zero_point, torch.Tensor):
        zero_point = torch.tensor(int_arg("zero_point", zero_point), dtype=torch.int32, device=s.device)
    return s, zero_point, spec.per_channel_axis, spec.group_size or 0


def _levels_alpha(x: torch.Tensor, spec: QuantSpec, scale, zero_point, alpha) -> torch.Tensor:
    _check_unused(spec, scale=scale, zero_point=zero_point)
    return _param(alpha, "alpha", spec, x)


def _normalized(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return weight_normalize(x, axis=spec.per_channel_axis) if spec.weight_norm else x


def fake_quant(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | float | None = None,
               zero_point: torch.Tensor | int | None = None,
               alpha: torch.Tensor | float | None = None) -> torch.Tensor:
    """Fake-quantize ``x`` as ``spec`` describes (autograd-aware).

    Uniform takes ``scale`` (and ``zero_point``, zero when omitted for a
    symmetric spec), bounds from :func:`quantext.uniform_bounds`, and with
    ``spec.learnable`` the LSQ gradient factor ``1/sqrt(n * qmax)`` for the
    ``n`` elements sharing each scale. PoT/APoT take the clipping value
    ``alpha`` (see :func:`quantext.functional.fake_quant_levels`); with
    ``spec.weight_norm`` the input is first normalized by
    :func:`quantext.functional.weight_normalize` (per ``spec.axis`` when per
    channel). Numbers are accepted for per-tensor parameters.
    """
    _check_spec(spec)
    if spec.scheme == "uniform":
        s, z, axis, group_size = _uniform_params(x, spec, scale, zero_point, alpha)
        qmin, qmax = uniform_bounds(spec.bits, spec.signed, spec.narrow_range)
        factor = lsq_grad_factor(x.numel() // max(s.numel(), 1), qmax) if spec.learnable else 1.0
        return fake_quant_uniform(x, s, z, qmin, qmax, axis, group_size, factor)
    a = _levels_alpha(x, spec, scale, zero_point, alpha)
    return fake_quant_levels(_normalized(x, spec), a, spec.scheme, spec.bits, spec.signed, spec.k, spec.rounding,
                             spec.per_channel_axis)


def quantize(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | float | None = None,
             zero_point: torch.Tensor | int | None = None,
             alpha: torch.Tensor | float | None = None) -> torch.Tensor:
    """Integer codes of ``x`` under ``spec`` (see the module docstring for the
    code format); ``dequantize(quantize(x))`` equals ``fake_quant(x)``. Not
    differentiable. With ``spec.weight_norm`` the codes are those of the
    normalized input."""
    _check_spec(spec)
    if spec.scheme == "uniform":
        s, z, axis, group_size = _uniform_params(x, spec, scale, zero_point, alpha)
        qmin, qmax = uniform_bounds(spec.bits, spec.signed, spec.narrow_range)
        return ops.quantize_uniform(x, s, z, qmin, qmax, axis, group_size)
    a = _levels_alpha(x, spec, scale, zero_point, alpha)
    return ops.quantize_levels(_normalized(x, spec), a, spec.scheme, spec.bits, spec.signed, spec.k, spec.rounding,
                               spec.per_channel_axis)


def dequantize(codes: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | float | None = None,
               zero_point: torch.Tensor | int | None = None,
               alpha: torch.Tensor | float | None = None) -> torch.Tensor:
    """Values of integer ``codes`` under ``spec``: float32 (float64 for a
    float64 scale/alpha)."""
    _check_spec(spec)
    if spec.scheme == "uniform":
        s, z, axis, group_size = _uniform_params(codes, spec, scale, zero_point, alpha)
        return ops.dequantize_uniform(codes, s, z, axis, group_size)
    a = _levels_alpha(codes, spec, scale, zero_point, alpha)
    return ops.dequantize_levels(codes, a, spec.scheme, spec.bits, spec.signed, spec.k, spec.per_channel_axis)
