"""Block scales of the block-scaled ``"fp"`` formats, from each block's absolute
maximum (the rule of each format's reference), computed with tensor ops on the
input's device (no host sync):

- ``scale_format="e8m0"`` (OCP Microscaling v1.0, MXFP8/6/4): the power of two
  ``X = 2^(floor(log2(amax)) - emax)``, ``emax`` the exponent of the element
  format's largest normal (E4M3 8, E5M2 15, E2M3 2, E3M2 4, E2M1 2), clamped to
  ``[2^-126, 2^127]`` (E8M0 reaches ``2^-127``, not a normal float32, which the
  kernels take; a block that small is all but zero). An all-zero block gets
  ``2^-126``.
- ``scale_format="e4m3"`` (NVFP4): a float32 tensor scale
  ``t = amax(x) / (448 * fmax)`` over the whole tensor (1 for an all-zero
  tensor; see :func:`nvfp4_tensor_scale`) and per block the
  E4M3 value (round to nearest even, saturating at 448) of ``amax_b / (fmax *
  t)``; the block's scale is ``e4m3 * t`` (float32), ``fmax`` the element
  format's largest value (6 for E2M1). A block whose E4M3 scale rounds to 0
  (a block far smaller than the tensor's largest) takes E4M3's smallest
  subnormal, ``2^-9``.

Non-finite values do not count towards a maximum (they saturate when
quantized). The elements are then ``scale * Q(x * (1/scale))``, with the
reciprocal exact for E8M0 scales. The fused op that quantization runs
(``torch.ops.quantext.fake_quant_fp_blocks``) computes the tensor scale and
the block scales itself by these rules (``csrc/math/fp_math.h``); the tensor
ops here are their independent statement: :func:`block_scales` returns them
for inspection and tests, and export writes them for constant weights.
"""

from __future__ import annotations

import torch

from .spec import QuantSpec

_MIN_NORMAL = 2.0 ** -126


def _finite_abs(x: torch.Tensor) -> torch.Tensor:
    a = x.detach().float().abs()
    return torch.where(torch.isfinite(a), a, 0.0)


def nvfp4_tensor_scale(x: torch.Tensor, fp_max: float) -> torch.Tensor:
    """NVFP4's float32 tensor scale ``amax(x) / (448 * fp_max)`` over the finite
    ``|x|`` (1 when none exceeds ``2^-126``), 0-dim on x's device."""
    top = _finite_abs(x).amax() if x.numel() else torch.zeros((), device=x.device)
    return torch.where(top > _MIN_NORMAL, top / (448.0 * fp_max), 1.0)


def block_axis(x: torch.Tensor, spec: QuantSpec) -> int:
    """The axis ``spec``'s blocks run along in ``x`` (non-negative), which its
    block size must divide."""
    axis = spec.axis % x.dim() if x.dim() else 0
    if x.dim() and x.shape[axis] % spec.group_size:
        raise ValueError(f"block size {spec.group_size} does not divide size {x.shape[axis]} of axis {axis} (tensor "
                         f"shape {tuple(x.shape)}): the blocks run along the spec's axis ({spec.axis}; -1, the "
                         "features of a Linear's input, by default); convolutions block along channels: axis=1, "
                         "e.g. fp_spec('mxfp8', axis=1)")
    return axis


def block_scale_parts(x: torch.Tensor, fp_max: float, block_size: int, scale_format: str,
                      tensor_scale: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(scale, e4m3, tensor_scale)`` of the blocks of ``block_size`` along
    x's last dimension: the float32 scales (x's shape, the last dimension
    counted in blocks) and, for NVFP4 (``scale_format="e4m3"``), the E4M3
    values and the tensor scale they multiply (``scale = max(e4m3 *
    tensor_scale, 2^-126)``; the given one, else :func:`nvfp4_tensor_scale`);
    ``None`` for MX."""
    amax = _finite_abs(x).unflatten(-1, (-1, block_size)).amax(-1)
    if scale_format == "e8m0":
        emax = int(torch.frexp(torch.tensor(fp_max))[1]) - 1
        exponent = torch.frexp(amax)[1] - 1 - emax  # floor(log2 amax) - emax; frexp(0) gives 0
        scale = torch.ldexp(torch.ones_like(amax), exponent.clamp(-126, 127))
        return torch.where(amax > 0, scale, _MIN_NORMAL), None, None
    if tensor_scale is None:
        tensor_scale = nvfp4_tensor_scale(x, fp_max)
    tensor_scale = tensor_scale.float().reshape(())
    e4m3 = (amax / (fp_max * tensor_scale)).clamp(max=448.0).to(torch.float8_e4m3fn).float()
    e4m3 = torch.where(e4m3 > 0, e4m3, 2.0 ** -9)
    return (e4m3 * tensor_scale).clamp_min(_MIN_NORMAL), e4m3, tensor_scale


def block_scales(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The float32 scale of every block of ``x`` under a block-scaled ``spec``:
    ``x``'s shape with ``size(axis) / group_size`` on ``axis`` (the per-group
    parameter shape of the ``"fp"`` op)."""
    if not (spec.scheme == "fp" and spec.dynamic):
        raise ValueError("block_scales needs a block-scaled fp spec (quantext.spec.fp_spec('mxfp4'), ...)")
    axis = block_axis(x, spec)
    scale = block_scale_parts(x.movedim(axis, -1), spec.fp_max, spec.group_size, spec.scale_format)[0]
    return scale.movedim(-1, axis)
