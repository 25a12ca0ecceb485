"""The fake (meta) implementations of every ``torch.ops.quantext`` op that
returns tensors, registered with ``torch.library.register_fake`` so that
``torch.compile`` and ``torch.export`` trace the ops without running them.

The fakes also serve the Meta dispatch key, which a meta tensor mixed with
real ones selects: they repeat the device checks of the real kernels so that
such a call is an error instead of an uninitialized result.
"""

from __future__ import annotations

import math

import torch
from torch._prims_common import is_non_overlapping_and_dense_or_false as is_non_overlapping_and_dense

from . import _C  # noqa: F401  (defines the ops the fakes are registered for)


def check_same_device(op: str, x: torch.Tensor, **params: torch.Tensor) -> None:
    """The kernels' rule (csrc/ops/canonical.cpp): every tensor on the input's device."""
    for name, t in params.items():
        if t.device != x.device:
            raise ValueError(f"quantext.{op}: {name} is on {t.device} but the input is on {x.device}")


def check_real(op: str, **tensors: torch.Tensor) -> None:
    """Complex tensors would lose their imaginary part: the kernels take real ones."""
    for name, t in tensors.items():
        if t.is_complex():
            raise ValueError(f"quantext.{op}: {name} must be a real tensor, got {t.dtype}")


def check_uniform_args(op: str, x: torch.Tensor, qmin: int, qmax: int, axis, group_size: int,
                       grad_factor: float = 1.0) -> None:
    """The argument checks of the real kernels (csrc/ops/uniform.cpp) that need no values."""
    if qmin > qmax:
        raise ValueError(f"quantext.{op}: qmin must be <= qmax, got qmin={qmin}, qmax={qmax}")
    _check_axis(op, x, axis)
    if group_size < 0:
        raise ValueError(f"quantext.{op}: group_size must be >= 0, got {group_size}")
    if group_size and axis is None:
        raise ValueError(f"quantext.{op}: group_size={group_size} needs an axis")
    if not math.isfinite(grad_factor):
        raise ValueError(f"quantext.{op}: grad_factor must be finite, got {grad_factor}")


def _check_axis(op: str, x: torch.Tensor, axis) -> None:
    if axis is not None and not -x.dim() <= axis < x.dim():
        raise ValueError(f"quantext.{op}: axis={axis} is out of range for a tensor of {x.dim()} dimensions")


def check_level_args(op: str, x: torch.Tensor | None, scheme: str, bits: int, signed: bool, k: int,
                     rounding: str = "nearest", axis=None, grad_factor: float = 1.0) -> None:
    """The argument checks of the real level kernels (csrc/ops/level_ops.cpp) that need no values."""
    if scheme not in ("pot", "apot"):
        raise ValueError(f"quantext.{op}: scheme must be 'pot' or 'apot', got {scheme!r}")
    lo = 2 if signed else 1
    if not lo <= bits <= 8:
        raise ValueError(f"quantext.{op}: bits must be in [{lo}, 8] for a {'signed' if signed else 'unsigned'} "
                         f"grid, got {bits}")
    if not 1 <= k <= 8:
        raise ValueError(f"quantext.{op}: k must be in [1, 8], got {k}")
    if rounding not in ("nearest", "log"):
        raise ValueError(f"quantext.{op}: rounding must be 'nearest' or 'log', got {rounding!r}")
    if rounding == "log" and scheme != "pot":
        raise ValueError(f"quantext.{op}: rounding='log' is only defined for scheme='pot'")
    if x is not None:
        _check_axis(op, x, axis)
    if not math.isfinite(grad_factor):
        raise ValueError(f"quantext.{op}: grad_factor must be finite, got {grad_factor}")


def _check_readable(op: str, hist: torch.Tensor, **params: torch.Tensor) -> None:
    """The range ops read their arguments on the host from any device, but not from meta."""
    for name, t in params.items():
        if t.device.type == "meta" and hist.device.type != "meta":
            raise ValueError(f"quantext.{op}: {name} is on meta but hist is on {hist.device}")


def _magnitude_bits(bits: int, signed: bool) -> int:
    return bits - 1 if signed else bits


def _uniform_code_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The storage type of uniform codes (see :mod:`quantext.schemes`)."""
    if qmin >= -128 and qmax <= 127:
        return torch.int8
    if qmin >= 0 and qmax <= 255:
        return torch.uint8
    if qmin >= -32768 and qmax <= 32767:
        return torch.int16
    return torch.int32


def _per_row(hist: torch.Tensor, *trailing: int) -> torch.Tensor:
    return hist.new_empty(hist.shape[:-1] + trailing, dtype=torch.float64)


# ------------------------------------------------------------------ uniform
@torch.library.register_fake("quantext::fake_quant_uniform")
def _fake_quant_uniform_fake(x, scale, zero_point, qmin, qmax, axis=None, group_size=0, grad_factor=1.0):
    check_same_device("fake_quant_uniform", x, scale=scale, zero_point=zero_point)
    check_real("fake_quant_uniform", x=x, scale=scale, zero_point=zero_point)
    check_uniform_args("fake_quant_uniform", x, qmin, qmax, axis, group_size, grad_factor)
    return torch.empty_like(x)


@torch.library.register_fake("quantext::fake_quant_uniform_backward")
def _fake_quant_uniform_backward_fake(grad, x, scale, zero_point, qmin, qmax, axis, group_size, grad_factor,
                                      param_grads):
    check_same_device("fake_quant_uniform_backward", x, scale=scale, zero_point=zero_point, grad=grad)
    check_real("fake_quant_uniform_backward", grad=grad, x=x, scale=scale, zero_point=zero_point)
    check_uniform_args("fake_quant_uniform_backward", x, qmin, qmax, axis, group_size, grad_factor)
    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale)


# ------------------------------------------------------------------ minifloat (fp)
def check_fp_args(op: str, x: torch.Tensor, exp_bits: int, man_bits: int, special: str, axis, group_size: int,
                  grad_factor: float = 1.0) -> None:
    """The argument checks of ops/fp.cpp that need no values."""
    if not (exp_bits >= 1 and man_bits >= 0 and 1 + exp_bits + man_bits <= 8):
        raise ValueError(f"quantext.{op}: exp_bits >= 1, man_bits >= 0 and 1 + exp_bits + man_bits <= 8 are needed, "
                         f"got exp_bits={exp_bits}, man_bits={man_bits}")
    if special not in ("ieee", "fn", "finite"):
        raise ValueError(f"quantext.{op}: special must be 'ieee', 'fn' or 'finite', got {special!r}")
    if special == "ieee" and exp_bits < 2 or special == "fn" and man_bits < 1:
        raise ValueError(f"quantext.{op}: special={special!r} does not fit exp_bits={exp_bits}, man_bits={man_bits}")
    check_uniform_args(op, x, 0, 0, axis, group_size, grad_factor)


@torch.library.register_fake("quantext::fake_quant_fp")
def _fake_quant_fp_fake(x, scale, exp_bits, man_bits, special, axis=None, group_size=0, grad_factor=1.0):
    check_same_device("fake_quant_fp", x, scale=scale)
    check_real("fake_quant_fp", x=x, scale=scale)
    check_fp_args("fake_quant_fp", x, exp_bits, man_bits, special, axis, group_size, grad_factor)
    return torch.empty_like(x)


@torch.library.register_fake("quantext::fake_quant_fp_masked")
def _fake_quant_fp_masked_fake(x, scale, exp_bits, man_bits, special, axis=None, group_size=0):
    check_same_device("fake_quant_fp_masked", x, scale=scale)
    check_fp_args("fake_quant_fp_masked", x, exp_bits, man_bits, special, axis, group_size)
    return torch.empty_like(x), _clip_mask_fake(x, axis, group_size)


@torch.library.register_fake("quantext::fake_quant_fp_backward")
def _fake_quant_fp_backward_fake(grad, x, scale, exp_bits, man_bits, special, axis, group_size, grad_factor,
                                 param_grads):
    check_same_device("fake_quant_fp_backward", x, scale=scale, grad=grad)
    check_real("fake_quant_fp_backward", grad=grad, x=x, scale=scale)
    check_fp_args("fake_quant_fp_backward", x, exp_bits, man_bits, special, axis, group_size, grad_factor)
    return torch.empty_like(x), torch.empty_like(scale)


def _fp_blocks_fake(op: str, x, exp_bits, man_bits, special, block_size, scale_format, tensor_scale):
    check_real(op, x=x)
    check_fp_args(op, x, exp_bits, man_bits, special, None, 0)
    if not (1 <= block_size <= 32 and block_size & (block_size - 1) == 0):
        raise ValueError(f"quantext.{op}: block_size must be a power of two up to 32, got {block_size}")
    if x.dim() == 0 or x.shape[-1] % block_size:
        raise ValueError(f"quantext.{op}: block_size={block_size} must divide the last dimension, got input shape "
                         f"{list(x.shape)}")
    if scale_format not in ("e8m0", "e4m3"):
        raise ValueError(f"quantext.{op}: scale_format must be 'e8m0' (MX) or 'e4m3' (NVFP4), got {scale_format!r}")
    if scale_format == "e8m0" and tensor_scale is not None:
        raise ValueError(f"quantext.{op}: scale_format='e8m0' takes no tensor_scale")
    if tensor_scale is not None:
        check_same_device(op, x, tensor_scale=tensor_scale)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("quantext::fake_quant_fp_blocks")
def _fake_quant_fp_blocks_fake(x, exp_bits, man_bits, special, block_size, scale_format, tensor_scale=None):
    return _fp_blocks_fake("fake_quant_fp_blocks", x, exp_bits, man_bits, special, block_size, scale_format,
                           tensor_scale)


@torch.library.register_fake("quantext::fake_quant_fp_blocks_masked")
def _fake_quant_fp_blocks_masked_fake(x, exp_bits, man_bits, special, block_size, scale_format, tensor_scale=None):
    y = _fp_blocks_fake("fake_quant_fp_blocks_masked", x, exp_bits, man_bits, special, block_size, scale_format,
                        tensor_scale)
    return y, x.new_empty(((x.numel() + 31) // 32,), dtype=torch.int32)


# ------------------------------------------------------------------ dynamic uniform
_DYNAMIC_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dynamic_outputs(op: str, x, qmin, qmax, symmetric, per_token, min_scale):
    """The checks of prepare_dynamic (csrc/ops/dynamic.cpp) and the parameter tensors."""
    check_real(op, x=x)
    if x.dtype not in _DYNAMIC_DTYPES:
        raise TypeError(f"quantext.{op}: input must be float16, bfloat16, float32 or float64, got dtype {x.dtype}")
    if not qmin < qmax:
        raise ValueError(f"quantext.{op}: a dynamic grid needs qmin < qmax, got qmin={qmin}, qmax={qmax}")
    if qmin < -65536 or qmax > 65535:
        raise ValueError(f"quantext.{op}: the integer range [{qmin}, {qmax}] is wider than 16 bits")
    if symmetric and not qmin < 0 < qmax:
        raise ValueError(f"quantext.{op}: symmetric=True needs a signed range (qmin < 0 < qmax), got [{qmin}, {qmax}]")
    if not (math.isfinite(min_scale) and 2.0 ** -126 <= min_scale <= torch.finfo(torch.float32).max):
        raise ValueError(f"quantext.{op}: min_scale must be finite and in [2^-126, float32 max], got {min_scale}")
    if per_token and x.dim() == 0:
        raise ValueError(f"quantext.{op}: per_token=True needs an input with a last dimension")
    shape = x.shape[:-1] + (1,) if per_token else ()
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty(shape, dtype=dtype), x.new_empty(shape, dtype=torch.int32)


def _dynamic_values(x, per_token):
    """Per token the kernels write row-major outputs; per tensor, in a dense input's own layout."""
    dense = not per_token and is_non_overlapping_and_dense(x)
    return torch.empty_like(x) if dense else torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("quantext::fake_quant_dynamic")
def _fake_quant_dynamic_fake(x, qmin, qmax, symmetric=True, per_token=True, min_scale=1e-8):
    _dynamic_outputs("fake_quant_dynamic", x, qmin, qmax, symmetric, per_token, min_scale)
    return _dynamic_values(x, per_token)


@torch.library.register_fake("quantext::fake_quant_dynamic_masked")
def _fake_quant_dynamic_masked_fake(x, qmin, qmax, symmetric, per_token, min_scale):
    scale, zero_point = _dynamic_outputs("fake_quant_dynamic_masked", x, qmin, qmax, symmetric, per_token, min_scale)
    mask = x.new_empty(((x.numel() + 31) // 32,), dtype=torch.int32)
    return _dynamic_values(x, per_token), mask, scale, zero_point


@torch.library.register_fake("quantext::dynamic_qparams")
def _dynamic_qparams_fake(x, qmin, qmax, symmetric=True, per_token=True, min_scale=1e-8):
    return _dynamic_outputs("dynamic_qparams", x, qmin, qmax, symmetric, per_token, min_scale)


# ------------------------------------------------------------------ level tables (PoT / APoT)
# Every grid has exactly 2^B distinct magnitudes (the C++ builder asserts it).
@torch.library.register_fake("quantext::levels")
def _levels_fake(scheme, bits, signed, k=2):
    check_level_args("levels", None, scheme, bits, signed, k)
    b = _magnitude_bits(bits, signed)
    return torch.empty(2 ** (b + 1) - 1 if signed else 2 ** b, dtype=torch.float64)


@torch.library.register_fake("quantext::apot_decode_table")
def _apot_decode_table_fake(bits, signed, k=2):
    check_level_args("apot_decode_table", None, "apot", bits, signed, k)
    b = _magnitude_bits(bits, signed)
    return torch.empty(2 ** b, -(-b // k), dtype=torch.int64)


@torch.library.register_fake("quantext::fake_quant_levels")
def _fake_quant_levels_fake(x, alpha, scheme, bits, signed, k=2, rounding="nearest", axis=None, grad_factor=1.0):
    check_same_device("fake_quant_levels", x, alpha=alpha)
    check_real("fake_quant_levels", x=x, alpha=alpha)
    check_level_args("fake_quant_levels", x, scheme, bits, signed, k, rounding, axis, grad_factor)
    return torch.empty_like(x)


@torch.library.register_fake("quantext::fake_quant_levels_backward")
def _fake_quant_levels_backward_fake(grad, x, alpha, scheme, bits, signed, k, rounding, axis, grad_factor,
                                     alpha_grad):
    check_same_device("fake_quant_levels_backward", x, alpha=alpha, grad=grad)
    check_real("fake_quant_levels_backward", grad=grad, x=x, alpha=alpha)
    check_level_args("fake_quant_levels_backward", x, scheme, bits, signed, k, rounding, axis, grad_factor)
    return torch.empty_like(x), torch.empty_like(alpha)


# ------------------------------------------------------------------ integer codes
@torch.library.register_fake("quantext::quantize_uniform")
def _quantize_uniform_fake(x, scale, zero_point, qmin, qmax, axis=None, group_size=0):
    check_same_device("quantize_uniform", x, scale=scale, zero_point=zero_point)
    check_real("quantize_uniform", x=x, scale=scale, zero_point=zero_point)
    check_uniform_args("quantize_uniform", x, qmin, qmax, axis, group_size)
    return torch.empty_like(x, dtype=_uniform_code_dtype(qmin, qmax))


@torch.library.register_fake("quantext::dequantize_uniform")
def _dequantize_uniform_fake(codes, scale, zero_point, axis=None, group_size=0):
    check_same_device("dequantize_uniform", codes, scale=scale, zero_point=zero_point)
    check_real("dequantize_uniform", codes=codes, scale=scale, zero_point=zero_point)
    _check_axis("dequantize_uniform", codes, axis)
    return torch.empty_like(codes, dtype=scale.dtype)


@torch.library.register_fake("quantext::quantize_levels")
def _quantize_levels_fake(x, alpha, scheme, bits, signed, k=2, rounding="nearest", axis=None):
    check_same_device("quantize_levels", x, alpha=alpha)
    check_real("quantize_levels", x=x, alpha=alpha)
    check_level_args("quantize_levels", x, scheme, bits, signed, k, rounding, axis)
    return torch.empty_like(x, dtype=torch.int8 if signed else torch.uint8)


@torch.library.register_fake("quantext::dequantize_levels")
def _dequantize_levels_fake(codes, alpha, scheme, bits, signed, k=2, axis=None):
    check_same_device("dequantize_levels", codes, alpha=alpha)
    check_real("dequantize_levels", codes=codes, alpha=alpha)
    check_level_args("dequantize_levels", codes, scheme, bits, signed, k, "nearest", axis)
    return torch.empty_like(codes, dtype=alpha.dtype)


# ------------------------------------------------------------------ calibration
@torch.library.register_fake("quantext::histogram")
def _histogram_fake(x, bins, lo, hi, axis=None):
    check_same_device("histogram", x, lo=lo, hi=hi)
    check_real("histogram", x=x, lo=lo, hi=hi)
    if not 1 <= bins <= 1 << 24:
        raise ValueError(f"quantext.histogram: bins must be in [1, 16777216], got {bins}")
    _check_axis("histogram", x, axis)
    return x.new_empty((bins,) if axis is None else (x.shape[axis], bins), dtype=torch.long)


@torch.library.register_fake("quantext::magnitude_histogram")
def _magnitude_histogram_fake(x, bins, amax, axis=None):
    check_same_device("magnitude_histogram", x, amax=amax)
    check_real("magnitude_histogram", x=x, amax=amax)
    if not 1 <= bins <= 1 << 24:
        raise ValueError(f"quantext.magnitude_histogram: bins must be in [1, 16777216], got {bins}")
    _check_axis("magnitude_histogram", x, axis)
    return x.new_empty((2, bins) if axis is None else (x.shape[axis], 2, bins), dtype=torch.long)


@torch.library.register_fake("quantext::calib_percentile")
def _calib_percentile_fake(hist, lo, hi, q):
    _check_readable("calib_percentile", hist, lo=lo, hi=hi)
    return _per_row(hist)


@torch.library.register_fake("quantext::calib_entropy")
def _calib_entropy_fake(hist, amax, num_levels=128, start_bin=128, variant="tensorrt"):
    _check_readable("calib_entropy", hist, amax=amax)
    return _per_row(hist), _per_row(hist, hist.shape[-1] + 1)


@torch.library.register_fake("quantext::calib_mse")
def _calib_mse_fake(hist, amax, levels):
    _check_readable("calib_mse", hist, amax=amax, levels=levels)
    return _per_row(hist), _per_row(hist, hist.shape[-1])


@torch.library.register_fake("quantext::calib_mse_affine")
def _calib_mse_affine_fake(hist, lo, hi, qmin, qmax):
    _check_readable("calib_mse_affine", hist, lo=lo, hi=hi)
    if not (-65536 <= qmin < qmax <= 65535 and qmax - qmin <= 65535):
        raise ValueError(f"quantext.calib_mse_affine: need qmin < qmax spanning at most 16 bits, "
                         f"got qmin={qmin}, qmax={qmax}")
    return _per_row(hist), _per_row(hist)


# ------------------------------------------------------------------ clip masks (csrc/ops/clip_mask.h)
def _clip_mask_fake(x: torch.Tensor, axis, group_size: int) -> torch.Tensor:
    """The bit-packed clip mask of a masked forward: one int32 word per 32 elements, or
    none ([0]) where the layout keeps no mask: per group, or on CUDA per channel with
    runs of fewer than 32 elements (the channel axis innermost; the CPU kernels cycle
    through the channels there, csrc/math/layout.h)."""
    empty = x.new_empty((0,), dtype=torch.int32)
    if group_size:
        return empty
    if axis is not None:
        ax = axis % x.dim()
        if x.shape[ax] > 1:
            run = x.stride(ax) if is_non_overlapping_and_dense(x) else math.prod(x.shape[ax + 1:])
            if run < 32 and x.device.type != "cpu":
                return empty
    return x.new_empty(((x.numel() + 31) // 32,), dtype=torch.int32)


@torch.library.register_fake("quantext::fake_quant_uniform_masked")
def _fake_quant_uniform_masked_fake(x, scale, zero_point, qmin, qmax, axis=None, group_size=0):
    check_same_device("fake_quant_uniform_masked", x, scale=scale, zero_point=zero_point)
    return torch.empty_like(x), _clip_mask_fake(x, axis, group_size)


@torch.library.register_fake("quantext::fake_quant_levels_masked")
def _fake_quant_levels_masked_fake(x, alpha, scheme, bits, signed, k=2, rounding="nearest", axis=None):
    check_same_device("fake_quant_levels_masked", x, alpha=alpha)
    return torch.empty_like(x), _clip_mask_fake(x, axis, 0)


@torch.library.register_fake("quantext::clip_mask_backward")
def _clip_mask_backward_fake(grad, mask):
    check_same_device("clip_mask_backward", grad, mask=mask)
    return torch.empty_like(grad)
