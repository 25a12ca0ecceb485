"""Spec-driven quantization for every scheme: level tables, fake quantization
and integer codes (:func:`fake_quant`, :func:`quantize`, :func:`dequantize`).

These are the one path from a :class:`QuantSpec` to the ops (``qx.nn.Quantizer``
goes through :func:`fake_quant` too): the constants an op takes (integer range,
parameter axis, group size, level-table arguments) come from the spec, which
validated and derived them when it was created, so a call passes them to
``torch.ops.quantext.*`` unchecked.

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

from typing import Any

import torch

from ._ops import ops
from .block_scales import block_axis
from .functional import bool_arg, int_arg, lsq_grad_factor, tensor_arg, weight_normalize
from .spec import MIN_SCALE, QuantSpec

_FAKE_QUANT_UNIFORM = ops.fake_quant_uniform.default
_FAKE_QUANT_LEVELS = ops.fake_quant_levels.default
_FAKE_QUANT_DYNAMIC = ops.fake_quant_dynamic.default
_FAKE_QUANT_FP = ops.fake_quant_fp.default
_FAKE_QUANT_FP_BLOCKS = ops.fake_quant_fp_blocks.default


def _scheme_arg(scheme: Any) -> str:
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a str ('pot' or 'apot'), got {scheme!r}")
    return scheme


def levels(scheme: str, bits: int, signed: bool = True, k: int = 2) -> torch.Tensor:
    """Normalized level table of a PoT/APoT grid: float64, ascending, top level 1.

    ``bits`` counts the sign bit of a signed grid, which has ``B = bits - 1``
    magnitude bits and is symmetric (``-levels, 0, +levels``); an unsigned grid
    has ``B = bits``. PoT: ``{0} U {2^-j : j = 0 .. 2^B - 2}``. APoT: sums of
    one value per additive term, normalized by the largest sum (see
    :func:`apot_decode_table`).
    """
    return ops.levels(_scheme_arg(scheme), int_arg("bits", bits), bool_arg("signed", signed), int_arg("k", k))


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
        return tensor_arg(name, value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float32, device=x.device)
    raise TypeError(f"{name} must be a tensor or a number, got {type(value).__name__}")


def _check_unused(spec: QuantSpec, **params) -> None:
    for name, value in params.items():
        if value is not None:
            raise ValueError(f"{name} is not a parameter of "
                             f"{'a dynamic spec (computed from x)' if spec.dynamic else f'scheme={spec.scheme!r}'}")


def _check_static(spec: QuantSpec, what: str) -> None:
    if spec.scheme == "fp":
        raise ValueError(f"{what}: scheme='fp' has no integer code format here; its values are "
                         "qx.fake_quant(x, spec, scale=...) (torch.float8_e4m3fn / e5m2 casts hold the FP8 bits)")
    if spec.dynamic:
        raise ValueError(f"{what} takes a static spec: a dynamic spec's parameters differ with every input "
                         "(qx.dynamic_qparams(x, spec) returns those of x)")


def _check_spec(spec: QuantSpec) -> None:
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")


def _readable(t: torch.Tensor) -> bool:
    """Checking values of ``t`` costs no device sync (CPU tensors; meta has no values)."""
    return t.device.type == "cpu"


def _uniform_params(x: torch.Tensor, spec: QuantSpec, scale, zero_point, alpha,
                    checked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    _check_unused(spec, alpha=alpha)
    s = _param(scale, "scale", spec, x)
    if zero_point is None:
        if not spec.symmetric:
            raise ValueError("zero_point is required for an asymmetric spec (symmetric=False)")
        return s, torch.zeros(s.shape, dtype=torch.int32, device=s.device)
    if not isinstance(zero_point, torch.Tensor):
        zero_point = torch.tensor(int_arg("zero_point", zero_point), dtype=torch.int32, device=s.device)
    else:
        zero_point = tensor_arg("zero_point", zero_point)
    # A symmetric grid has its zero at code 0: another zero point would shift it silently.
    # (Checked where it costs no device sync; the Quantizer module validates its own in set_qparams.)
    if checked and spec.symmetric and _readable(zero_point) and bool((zero_point != 0).any()):
        raise ValueError(f"zero_point must be 0 for a symmetric spec (symmetric=True), got {zero_point.tolist()}; "
                         "use symmetric=False for an affine grid")
    return s, zero_point


def _levels_alpha(x: torch.Tensor, spec: QuantSpec, scale, zero_point, alpha) -> torch.Tensor:
    _check_unused(spec, scale=scale, zero_point=zero_point)
    return _param(alpha, "alpha", spec, x)


def _normalized(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return weight_normalize(x, axis=spec.per_channel_axis) if spec.weight_norm else x


def fake_quant(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | float | None = None,
               zero_point: torch.Tensor | int | None = None,
               alpha: torch.Tensor | float | None = None, *, min_scale: float = MIN_SCALE) -> torch.Tensor:
    """Fake-quantize ``x`` as ``spec`` describes (autograd-aware).

    Uniform takes ``scale`` (and ``zero_point``, zero when omitted for a
    symmetric spec), bounds ``spec.bounds`` (:func:`quantext.uniform_bounds`),
    and with ``spec.learnable`` the LSQ gradient factor ``1/sqrt(n * qmax)``
    for the ``n`` elements sharing each scale. PoT/APoT take the clipping value
    ``alpha`` (see :func:`quantext.functional.fake_quant_levels`); with
    ``spec.weight_norm`` the input is first normalized by
    :func:`quantext.functional.weight_normalize` (per ``spec.axis`` when per
    channel). Numbers are accepted for per-tensor parameters. A dynamic spec
    takes no parameters: they are computed from ``x`` (see
    :func:`dynamic_qparams`), scales at least ``min_scale``.
    """
    _check_spec(spec)
    x = tensor_arg("x", x)
    return _fake_quant(x, spec, scale, zero_point, alpha, checked=True, min_scale=_min_scale(min_scale))


def _min_scale(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"min_scale must be a number, got {value!r}")
    return float(value)


def dynamic_qparams(x: torch.Tensor, spec: QuantSpec, *, min_scale: float = MIN_SCALE
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(scale, zero_point)`` a dynamic ``spec`` quantizes ``x`` with:
    float32 (float64 for a float64 ``x``) and int32, shape ``x.shape[:-1] + (1,)``
    per token (broadcasting against ``x``), ``()`` per tensor."""
    _check_spec(spec)
    if not spec.dynamic:
        raise ValueError("dynamic_qparams needs a dynamic spec (dynamic=True)")
    x = tensor_arg("x", x)
    qmin, qmax = spec.bounds
    return ops.dynamic_qparams(x, qmin, qmax, spec.symmetric, spec.granularity == "token", _min_scale(min_scale))


def _fake_quant(x: torch.Tensor, spec: QuantSpec, scale=None, zero_point=None, alpha=None,
                checked: bool = False, min_scale: float = MIN_SCALE) -> torch.Tensor:
    """:func:`fake_quant` without the argument checks the Quantizer module has made once (its forward)."""
    if spec.dynamic and spec.scheme == "uniform":
        _check_unused(spec, scale=scale, zero_point=zero_point, alpha=alpha)
        qmin, qmax = spec.bounds
        return _FAKE_QUANT_DYNAMIC(x, qmin, qmax, spec.symmetric, spec.granularity == "token", min_scale)
    if spec.scheme == "fp":
        if spec.dynamic:
            _check_unused(spec, scale=scale, zero_point=zero_point, alpha=alpha)
            return _fake_quant_blocks(x, spec)
        _check_unused(spec, zero_point=zero_point, alpha=alpha)
        s = _param(scale, "scale", spec, x)
        # LSQ's factor with the format's positive codes for the levels of a uniform grid
        factor = lsq_grad_factor(x.numel() // max(s.numel(), 1), (1 << (spec.bits - 1)) - 1) if spec.learnable else 1.0
        return _FAKE_QUANT_FP(x, s, spec.exp_bits, spec.bits - 1 - spec.exp_bits, spec.resolved_fp_special,
                              spec.per_channel_axis, spec.group_size or 0, factor)
    if spec.scheme == "uniform":
        s, z = _uniform_params(x, spec, scale, zero_point, alpha, checked)
        qmin, qmax = spec.bounds
        factor = lsq_grad_factor(x.numel() // max(s.numel(), 1), qmax) if spec.learnable else 1.0
        return _FAKE_QUANT_UNIFORM(x, s, z, qmin, qmax, spec.per_channel_axis, spec.group_size or 0, factor)
    a = _levels_alpha(x, spec, scale, zero_point, alpha)
    return _FAKE_QUANT_LEVELS(_normalized(x, spec), a, spec.scheme, spec.bits, spec.signed, spec.k, spec.rounding,
                              spec.per_channel_axis, 1.0)


def _fake_quant_blocks(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """A block-scaled fp spec: the fused op along the last dimension (the spec's axis moved there and back)."""
    axis = block_axis(x, spec)
    last = axis == x.dim() - 1
    moved = x if last else x.movedim(axis, -1)
    y = _FAKE_QUANT_FP_BLOCKS(moved, spec.exp_bits, spec.bits - 1 - spec.exp_bits, spec.resolved_fp_special,
                              spec.group_size, spec.scale_format)
    return y if last else y.movedim(-1, axis)


def quantize(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | float | None = None,
             zero_point: torch.Tensor | int | None = None,
             alpha: torch.Tensor | float | None = None) -> torch.Tensor:
    """Integer codes of ``x`` under ``spec`` (see the module docstring for the
    code format); ``dequantize(quantize(x))`` equals ``fake_quant(x)``. Not
    differentiable. With ``spec.weight_norm`` the codes are those of the
    normalized input."""
    _check_spec(spec)
    _check_static(spec, "quantize")
    x = tensor_arg("x", x)
    if spec.scheme == "uniform":
        s, z = _uniform_params(x, spec, scale, zero_point, alpha)
        qmin, qmax = spec.bounds
        return ops.quantize_uniform(x, s, z, qmin, qmax, spec.per_channel_axis, spec.group_size or 0)
    a = _levels_alpha(x, spec, scale, zero_point, alpha)
    return ops.quantize_levels(_normalized(x, spec), a, spec.scheme, spec.bits, spec.signed, spec.k, spec.rounding,
                               spec.per_channel_axis)


def dequantize(codes: torch.Tensor, spec: QuantSpec, scale: torch.Tensor | float | None = None,
               zero_point: torch.Tensor | int | None = None,
               alpha: torch.Tensor | float | None = None) -> torch.Tensor:
    """Values of integer ``codes`` under ``spec``: float32 (float64 for a
    float64 scale/alpha). Uniform codes must lie in ``spec.bounds`` (checked
    for CPU codes; codes of another grid would decode to values the spec
    cannot produce)."""
    _check_spec(spec)
    _check_static(spec, "dequantize")
    codes = tensor_arg("codes", codes)
    if spec.scheme == "uniform":
        s, z = _uniform_params(codes, spec, scale, zero_point, alpha)
        out = ops.dequantize_uniform(codes, s, z, spec.per_channel_axis, spec.group_size or 0)
        qmin, qmax = spec.bounds
        if _readable(codes) and codes.numel():
            lo, hi = torch.aminmax(codes)
            if bool(lo < qmin) or bool(hi > qmax):
                raise ValueError(f"codes must lie in the spec's integer range [{qmin}, {qmax}] (bits={spec.bits}, "
                                 f"signed={spec.signed}), got values in [{lo.item()}, {hi.item()}]")
        return out
    a = _levels_alpha(codes, spec, scale, zero_point, alpha)
    return ops.dequantize_levels(codes, a, spec.scheme, spec.bits, spec.signed, spec.k, spec.per_channel_axis)
