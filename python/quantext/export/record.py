"""The record of where each fake-quant call of a model ended up in its ONNX
graph, and the grid it rounds to: written by the lowering (:mod:`.qdq_rules`,
via :mod:`.onnx_export`) into the model's metadata, read by verification
(:mod:`.verify`), which compares quantizer outputs as integer codes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import onnx

RECORD_KEY = "quantext.quantizers"


@dataclass
class QuantizerRecord:
    """Where one fake-quant call of the model ended up in the ONNX graph.

    ``uniform``: outputs are ``(code - zero_point) * scale``; ``levels``: outputs
    are ``± levels[code] * scale`` (``scale`` is then the clipping value alpha).
    ``scale`` and ``zero_point`` hold one value, one per index of ``axis``, or
    (``group_size > 0``) one per group of ``group_size`` along ``axis``.
    """

    tensor: str  # the tensor holding its output
    module: str  # the module path that called it
    grid: str  # "uniform" or "levels"
    scale: list[float]
    zero_point: list[int]
    axis: int | None
    group_size: int = 0
    levels: list[float] | None = None  # normalized magnitudes, ascending from 0 (level grids)
    signed: bool = True
    param_shape: list[int] | None = None  # shape of a per-group scale / zero point
    perm: list[int] | None = None  # the ONNX tensor is the output transposed by ``perm`` (a folded Transpose)
    # A quantizer whose parameters come with each input (verification computes them): grid "dynamic",
    # its op's arguments (qmin, qmax, symmetric, per_token, min_scale); or a block-scaled minifloat
    # (grid "levels"): fp_blocks = [exp_bits, man_bits, special, block_size, scale_format], tensor_scale.
    dynamic: dict | None = None

    def from_onnx(self, value: np.ndarray) -> np.ndarray:
        """The ONNX tensor's ``value`` in the layout of the quantizer's output."""
        return value if self.perm is None else value.transpose(np.argsort(self.perm))

    def codes(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, on_grid)``: the integer code of each element of ``values``
        (an output of this quantizer, or what another runtime computed for it),
        and whether the element lies on the grid (within float32 rounding of the
        ``code * scale`` product). NaN gives code 0, off the grid."""
        v = values.astype(np.float64)
        scale = self._along(self.scale, v)
        if self.grid == "uniform":
            c = v / scale + self._along(self.zero_point, v)
            code = np.rint(np.nan_to_num(c))
            # (code - z) * s is a float32 product: 2^-23 relative of the code, plus slack
            on_grid = np.abs(c - code) <= 1e-3 + 2.0 ** -23 * np.abs(code)
            return code, on_grid
        levels = np.asarray(self.levels, np.float64)
        u = np.abs(v) / scale if self.signed else v / scale
        index = np.searchsorted((levels[:-1] + levels[1:]) / 2, np.nan_to_num(u), side="left")
        on_grid = np.isclose(u, levels[index], rtol=1e-5, atol=0)
        return np.where(v < 0, -index, index) if self.signed else index, on_grid

    def _along(self, param: list, like: np.ndarray) -> np.ndarray:
        """``param`` laid out to broadcast against ``like``."""
        p = np.asarray(param, np.float64)
        if self.axis is None or p.size == 1:
            return p.reshape(())
        if self.group_size:  # blocked: the parameter has the input's rank, its ``axis`` counted in groups
            p = np.repeat(p.reshape(self.param_shape), self.group_size, axis=self.axis)
            return np.take(p, np.arange(like.shape[self.axis]), axis=self.axis)
        return p.reshape([p.size if d == self.axis else 1 for d in range(like.ndim)])


def write_record(model: onnx.ModelProto, record: dict[int, QuantizerRecord]) -> None:
    """Stores the quantizers (by call index) in the model's metadata."""
    entry = onnx.StringStringEntryProto(key=RECORD_KEY,
                                        value=json.dumps({str(k): asdict(v) for k, v in record.items()}))
    model.metadata_props.append(entry)


def read_record(model: onnx.ModelProto) -> dict[int, QuantizerRecord]:
    """The quantizers that :func:`write_record` stored (empty when there are none)."""
    for prop in model.metadata_props:
        if prop.key == RECORD_KEY:
            return {int(k): QuantizerRecord(**v) for k, v in json.loads(prop.value).items()}
    return {}
