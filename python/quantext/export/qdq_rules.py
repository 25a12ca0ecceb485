"""Lowering of the private ``quantext`` nodes (see :mod:`.op_rules`) to standard
ONNX operators.

- Uniform, input computed at run time: ``QuantizeLinear -> DequantizeLinear``,
  with a ``Clip`` between them when the integer range is narrower than the
  8-bit type (QCDQ: low-bit grids and narrow ranges).
- Uniform, constant input (a weight): the codes are computed here with the
  quantext op itself and stored as an int8/uint8 initializer read by
  ``DequantizeLinear``: the form ONNX Runtime fuses into ``QLinearConv`` /
  ``QLinearMatMul`` and TensorRT reads as int8 weights.
- Uniform dynamic (scale and zero point from each input): the range reduced in
  the graph (``ReduceMin``/``ReduceMax`` of the finite values), the scale and
  zero point computed as the kernel does, then ``QuantizeLinear ->
  DequantizeLinear`` with them (blocked, one block per row, per token); per
  tensor uint8 asymmetric as ``DynamicQuantizeLinear``.
- Level tables (PoT/APoT), constant input: integer codes (``sign * index``)
  decoded by ``Gather`` from a signed codebook of integers ``m`` (the levels
  are ``m / d``), read by ``DequantizeLinear`` with scale ``alpha / d``: the
  form ONNX Runtime runs as int8 (see :func:`_integer_levels`); grids with no
  such integers (``d >= 2^31``, e.g. 8-bit PoT) decode to ``levels * alpha``.
- Level tables, run-time input: ``v = x / alpha``; the level index
  ``#{thresholds t : |v| > t}`` by a branch-free binary search over the
  midpoints (``Gather``/``Greater``/``Where``, no ``levels x size`` tensor);
  then ``Gather(levels) * alpha * sign(v)``. Thresholds are exact midpoints
  of the float32 levels, rounded down to float32 (as quantext's kernels build
  theirs), so ``|v| > t`` is decided as in exact arithmetic and a tie goes to
  the smaller magnitude.
"""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from ..block_scales import block_scale_parts
from ..spec import fp_max
from . import op_rules
from .graph import Graph, consumers, describe, module_path, producers, prune
from .record import QuantizerRecord

# (ONNX type, numpy type, lowest, highest) of the integer types Q/DQ may use.
_INT8 = (TensorProto.INT8, np.int8, -128, 127)
_UINT8 = (TensorProto.UINT8, np.uint8, 0, 255)
_INT16 = (TensorProto.INT16, np.int16, -(1 << 15), (1 << 15) - 1)
_UINT16 = (TensorProto.UINT16, np.uint16, 0, (1 << 16) - 1)
_INT4 = (TensorProto.INT4, ml_dtypes.int4, -8, 7)
_UINT4 = (TensorProto.UINT4, ml_dtypes.uint4, 0, 15)

Grid = dict  # the grid of a quantizer's output: the fields of a QuantizerRecord but its tensor and module


class _Emitter:
    """Appends nodes that inherit the metadata (module path) of the node they replace."""

    def __init__(self, g: Graph, origin: onnx.NodeProto) -> None:
        self.g, self.origin, self.nodes = g, origin, []

    def __call__(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        return self.multi(op_type, inputs, [output or self.g.fresh(f"{self.origin.output[0]}_{op_type.lower()}")],
                          **attrs)[0]

    def multi(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> list[str]:
        """A node with several outputs."""
        node = helper.make_node(op_type, inputs, outputs, name=self.g.fresh(f"{self.origin.name}/{op_type}"), **attrs)
        node.metadata_props.extend(self.origin.metadata_props)
        self.nodes.append(node)
        return outputs

    def const(self, hint: str, value: np.ndarray) -> str:
        return self.g.add_const(f"{self.origin.output[0]}_{hint}", value)


def _attrs(node: onnx.NodeProto) -> dict:
    """A node's attributes, strings decoded (ONNX holds them as bytes)."""
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _param(g: Graph, node: onnx.NodeProto, index: int, what: str, positive: bool) -> np.ndarray:
    """A quantizer parameter, which must be a constant (and, for a scale or
    alpha, non-empty, finite and > 0: otherwise the quantizer was never calibrated)."""
    value = g.const(node.input[index])
    if value is None:
        raise ValueError(f"{describe(node)}: the quantizer's {what} is computed at run time; export needs it "
                         "as a constant (freeze the quantizer: qx.convert(model))")
    if positive and (value.size == 0 or not np.all(np.isfinite(value)) or np.any(value <= 0)):
        raise ValueError(f"{describe(node)}: quantizer {what} = {value.ravel()[:8].tolist()} is not positive and "
                         "finite: the quantizer was never calibrated (run qx.calibrate(model, batches) first)")
    return value


def _check_input_type(g: Graph, node: onnx.NodeProto) -> None:
    """The rules emit float32 scales, thresholds and tables."""
    for v in list(g.graph.value_info) + list(g.graph.input):
        if v.name == node.input[0] and v.type.tensor_type.elem_type != TensorProto.FLOAT:
            name = TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()
            raise ValueError(f"{describe(node)}: the quantizer's input is {name}; export takes float32 models "
                             "(call model.float() first)")


def _int_type(node: onnx.NodeProto, qmin: int, qmax: int, opset: int) -> tuple:
    types = [_UINT8, _INT8] if qmin >= 0 else [_INT8, _UINT8]
    types += [_UINT16, _INT16] if qmin >= 0 else [_INT16, _UINT16]
    for t in types[: 4 if opset >= 21 else 2]:
        if t[2] <= qmin and qmax <= t[3]:
            return t
    raise ValueError(f"{describe(node)}: integer range [{qmin}, {qmax}] does not fit an 8-bit type; "
                     f"16-bit QuantizeLinear needs opset >= 21 (got opset {opset})")


def _broadcast_shape(size: int, axis: int | None, rank: int) -> list[int]:
    """Shape that broadcasts a per-channel vector along ``axis`` of a rank-``rank`` tensor."""
    return [] if axis is None else [size if d == axis else 1 for d in range(rank)]


def _shape(g: Graph, name: str) -> list | None:
    """The dimensions of a tensor (ints, or names of symbolic ones), if known."""
    if g.const(name) is not None:
        return list(g.const(name).shape)
    for v in list(g.graph.value_info) + list(g.graph.input) + list(g.graph.output):
        if v.name == name and v.type.tensor_type.HasField("shape"):
            return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
    return None


def _rank(g: Graph, node: onnx.NodeProto, name: str) -> int:
    shape = _shape(g, name)
    if shape is None:
        raise ValueError(f"{describe(node)}: the rank of a per-channel quantizer's input is unknown")
    return len(shape)


def _along(p: torch.Tensor, axis: int | None, group_size: int, rank: int) -> torch.Tensor:
    """A quantizer parameter laid out to broadcast against its input."""
    if axis is None:
        return p.reshape(())
    if group_size:  # one value per group of ``group_size`` along ``axis``; the input's rank already
        return p.repeat_interleave(group_size, dim=axis)
    return p.reshape(_broadcast_shape(p.numel(), axis, rank))


def _uniform_codes(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, a: dict, axis: int | None) -> np.ndarray:
    """Integer codes of a constant tensor, from the quantext op's own output so
    they match the PyTorch forward bit for bit: ``q = round(y / s) + z``. (NumPy
    turns 0-dim results into scalars, which ``torch.from_numpy`` refuses: a
    0-dim parameter read by the graph, or any per-tensor quantizer's ``s, z``.)"""
    xt, st, zt = (torch.from_numpy(np.asarray(v)) for v in (x, scale, zp))
    y = torch.ops.quantext.fake_quant_uniform(xt, st, zt, a["qmin"], a["qmax"], axis, a["group_size"])
    st, zt = (_along(p, axis, a["group_size"], x.ndim) for p in (st, zt))
    return (torch.round(y / st) + zt).clamp(a["qmin"], a["qmax"]).numpy()


def _lower_uniform(g: Graph, node: onnx.NodeProto, opset: int) -> tuple[list[onnx.NodeProto], Grid]:
    a = _attrs(node)
    axis = None if a["axis"] == op_rules.PER_TENSOR else a["axis"]
    _check_input_type(g, node)
    scale = _param(g, node, 1, "scale", positive=True).astype(np.float32)
    zp = np.asarray(np.rint(_param(g, node, 2, "zero point", positive=False)), np.int64)
    if zp.min() < a["qmin"] or zp.max() > a["qmax"]:
        raise ValueError(f"{describe(node)}: zero point {zp.ravel()[:8].tolist()} is outside "
                         f"[{a['qmin']}, {a['qmax']}]")
    itype, ntype, lo, hi = _int_type(node, a["qmin"], a["qmax"], opset)
    qdq_attrs = {}
    if axis is None:
        if scale.size != 1:
            raise ValueError(f"{describe(node)}: a per-tensor quantizer needs one scale, got {scale.size}")
        scale, zp = scale.reshape(()), zp.reshape(())
    elif a["group_size"]:
        if opset < 21:
            raise ValueError(f"{describe(node)}: per-group quantization (group_size={a['group_size']}) "
                             f"exports as blocked QuantizeLinear, which needs opset >= 21 (got {opset})")
        qdq_attrs = {"axis": axis, "block_size": a["group_size"]}
    else:
        scale, zp = scale.reshape(-1), zp.reshape(-1)
        qdq_attrs = {"axis": axis}
    x = g.const(node.input[0])
    if x is not None and a["group_size"]:
        # Blocked weights (opset 21) of at most 4 bits are stored as int4 / uint4: two codes per byte.
        ntype = next((t[1] for t in (_INT4, _UINT4) if t[2] <= a["qmin"] and a["qmax"] <= t[3]), ntype)
    emit = _Emitter(g, node)
    s_name, z_name = emit.const("scale", scale), emit.const("zero_point", zp.astype(np.int32).astype(ntype))
    if x is not None:
        codes = _uniform_codes(x.astype(np.float32), scale, zp.astype(np.int32), a, axis)
        emit("DequantizeLinear", [emit.const("codes", codes.astype(np.int32).astype(ntype)), s_name, z_name],
             node.output[0], **qdq_attrs)
    else:
        q = emit("QuantizeLinear", [node.input[0], s_name, z_name], **qdq_attrs)
        if (a["qmin"], a["qmax"]) != (lo, hi):
            q = emit("Clip", [q, emit.const("qmin", np.array(a["qmin"], ntype)),
                              emit.const("qmax", np.array(a["qmax"], ntype))])
        emit("DequantizeLinear", [q, s_name, z_name], node.output[0], **qdq_attrs)
    grid = dict(grid="uniform", scale=scale.ravel().tolist(), zero_point=zp.ravel().tolist(), axis=axis,
                group_size=a["group_size"], param_shape=list(scale.shape) if a["group_size"] else None)
    return emit.nodes, grid


def _lower_dynamic(g: Graph, node: onnx.NodeProto, opset: int) -> tuple[list[onnx.NodeProto], Grid]:
    """A dynamic quantizer: its scale and zero point computed in the graph from
    the input, as the quantext kernel does, then QDQ. Per tensor uint8
    asymmetric is ONNX's own ``DynamicQuantizeLinear`` (the same rule). Per
    token the computed ``[..., 1]`` scales feed a blocked QuantizeLinear with
    one block per row (opset 21)."""
    a = _attrs(node)
    _check_input_type(g, node)
    qmin, qmax, symmetric, per_token = a["qmin"], a["qmax"], bool(a["symmetric"]), bool(a["per_token"])
    grid = dict(grid="dynamic", scale=[], zero_point=[], axis=None,
                dynamic=dict(qmin=qmin, qmax=qmax, symmetric=symmetric, per_token=per_token,
                             min_scale=float(a["min_scale"])))
    emit, x = _Emitter(g, node), node.input[0]
    if not per_token and not symmetric and (qmin, qmax) == (0, 255):
        q, s_name, z_name = (g.fresh(f"{node.output[0]}_{hint}") for hint in ("codes", "scale", "zero_point"))
        emit.multi("DynamicQuantizeLinear", [x], [q, s_name, z_name])
        emit("DequantizeLinear", [q, s_name, z_name], node.output[0])
        return emit.nodes, grid
    itype, ntype, lo_t, hi_t = _int_type(node, qmin, qmax, opset)
    qdq_attrs, reduce_inputs = {}, []
    if per_token:
        shape = _shape(g, x)
        if opset < 21 or not shape or not isinstance(shape[-1], int):
            raise ValueError(f"{describe(node)}: per-token dynamic quantization exports as blocked QuantizeLinear "
                             f"(one block per row), which needs opset >= 21 and a static last dimension (got opset "
                             f"{opset}, input shape {shape})")
        qdq_attrs = {"axis": len(shape) - 1, "block_size": shape[-1]}
        reduce_inputs = [emit.const("axes", np.array([-1], np.int64))]
    f32 = lambda hint, v: emit.const(hint, np.array(v, np.float32))  # noqa: E731
    zero = f32("zero", 0.0)
    # The range of the finite values, widened to hold 0 (math/dynamic_range.h).
    finite = emit("Where", [emit("Or", [emit("IsNaN", [x]), emit("IsInf", [x])]), zero, x])
    keep = {"keepdims": int(per_token)}
    lo = emit("Min", [emit("ReduceMin", [finite] + reduce_inputs, **keep), zero])
    hi = emit("Max", [emit("ReduceMax", [finite] + reduce_inputs, **keep), zero])
    if symmetric:
        step = emit("Div", [emit("Max", [emit("Neg", [lo]), hi]), f32("qmax", qmax)])
    else:
        step = emit("Div", [emit("Sub", [hi, lo]), f32("levels", qmax - qmin)])
    s_name = emit("Max", [step, f32("min_scale", a["min_scale"])])
    if symmetric:
        z_name = emit("Cast", [emit("Mul", [s_name, zero])], to=itype)  # zeros of the scale's shape
    else:
        z = emit("Sub", [f32("qmin", qmin), emit("Round", [emit("Div", [lo, s_name])])])
        z_name = emit("Cast", [emit("Clip", [z, f32("qmin_clip", qmin), f32("qmax_clip", qmax)])], to=itype)
    q = emit("QuantizeLinear", [x, s_name, z_name], **qdq_attrs)
    if (qmin, qmax) != (lo_t, hi_t):
        q = emit("Clip", [q, emit.const("qmin", np.array(qmin, ntype)), emit.const("qmax", np.array(qmax, ntype))])
    emit("DequantizeLinear", [q, s_name, z_name], node.output[0], **qdq_attrs)
    return emit.nodes, grid


# ONNX's float types of the minifloat formats: (ONNX type, numpy type, lowest opset).
_FP_TYPES = {(4, 3, "fn"): (TensorProto.FLOAT8E4M3FN, ml_dtypes.float8_e4m3fn, 19),
             (5, 2, "ieee"): (TensorProto.FLOAT8E5M2, ml_dtypes.float8_e5m2, 19),
             (2, 1, "finite"): (TensorProto.FLOAT4E2M1, ml_dtypes.float4_e2m1fn, 23)}


def fp_levels(exp_bits: int, man_bits: int, special: str) -> np.ndarray:
    """The non-negative finite values of an ExMy format over its largest, ascending."""
    bias = (1 << (exp_bits - 1)) - 1
    top = fp_max(exp_bits, man_bits, special)
    mantissas = np.arange(1 << man_bits) / (1 << man_bits)
    binades = range(1 - bias, (1 << exp_bits) - bias)
    values = [mantissas * 2.0 ** (1 - bias)] + [(1 + mantissas) * 2.0 ** e for e in binades]
    values = np.unique(np.concatenate(values))
    return values[values <= top] / top


def _fp_type(node: onnx.NodeProto, opset: int, blocked: bool) -> tuple[tuple, int, type]:
    """``(format key, ONNX type, numpy type)`` of a minifloat node's elements,
    refusing a format without an ONNX type or an opset below its own (blocked
    scales: 21)."""
    a = _attrs(node)
    special = a["special"]
    key = (a["exp_bits"], a["man_bits"], special)
    if key not in _FP_TYPES:
        raise ValueError(f"{describe(node)}: E{key[0]}M{key[1]} ({special}) has no ONNX type; export takes E4M3FN and "
                         "E5M2 (opset >= 19) and E2M1 (opset >= 23)")
    ftype, ntype, lowest = _FP_TYPES[key]
    lowest = max(lowest, 21) if blocked else lowest
    if opset < lowest:
        raise ValueError(f"{describe(node)}: E{key[0]}M{key[1]}{' with block scales' if blocked else ''} "
                         f"exports at opset >= {lowest}, got opset {opset}")
    return key, ftype, ntype


def _lower_fp(g: Graph, node: onnx.NodeProto, opset: int) -> tuple[list[onnx.NodeProto], Grid]:
    """FP8 (E4M3FN, E5M2; opset 19) and FP4 (E2M1; opset 23) as QuantizeLinear ->
    DequantizeLinear with a zero point of the float type; a weight as the
    float codes, read by DequantizeLinear (blocked for per-group scales, opset 21)."""
    a = _attrs(node)
    key, ftype, ntype = _fp_type(node, opset, blocked=bool(a["group_size"]))
    special = key[2]
    axis = None if a["axis"] == op_rules.PER_TENSOR else a["axis"]
    _check_input_type(g, node)
    scale = _param(g, node, 1, "scale", positive=True).astype(np.float32)
    qdq_attrs = {}
    if axis is None:
        scale = scale.reshape(())
    elif a["group_size"]:
        qdq_attrs = {"axis": axis, "block_size": a["group_size"]}
    else:
        scale = scale.reshape(-1)
        qdq_attrs = {"axis": axis}
    emit = _Emitter(g, node)
    s_name, z_name = emit.const("scale", scale), emit.const("zero_point", np.zeros(scale.shape, ntype))
    x = g.const(node.input[0])
    if x is not None:
        xt, st = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(np.asarray(scale))
        y = torch.ops.quantext.fake_quant_fp(xt, st, a["exp_bits"], a["man_bits"], special, axis, a["group_size"])
        values = (y / _along(st, axis, a["group_size"], x.ndim)).numpy()  # on the format's grid: exact
        emit("DequantizeLinear", [emit.const("codes", values.astype(ntype)), s_name, z_name], node.output[0],
             **qdq_attrs)
    else:
        q = emit("QuantizeLinear", [node.input[0], s_name, z_name], **qdq_attrs)
        emit("DequantizeLinear", [q, s_name, z_name], node.output[0], **qdq_attrs)
    return emit.nodes, _fp_grid(key, scale, axis, a["group_size"])


_MIN_NORMAL = np.float32(2.0 ** -126)


def _fp_grid(key: tuple, scale: np.ndarray, axis: int | None, group_size: int) -> Grid:
    """A minifloat quantizer's output grid: the format's values times ``scale``."""
    return dict(grid="levels", scale=(scale.astype(np.float64) * fp_max(*key)).ravel().tolist(), zero_point=[0],
                axis=axis, group_size=group_size, levels=fp_levels(*key).tolist(), signed=True,
                param_shape=list(scale.shape) if group_size else None)


def _mx_scales(emit: _Emitter, amax: str, emax: int) -> str:
    """The E8M0 scale ``2^clamp(floor(log2 amax) - emax, -126, 127)`` of each
    block maximum, exactly: ``c = #{j >= 1 : amax >= 2^(j - 126 + emax)}`` by
    binary search (``|v| >= 2^k`` is ``|v| > `` the float32 below ``2^k``),
    then ``2^(c - 126)`` from a table. No Log/Pow, whose rounding differs
    between runtimes."""
    with np.errstate(over="ignore"):
        powers = np.ldexp(np.float32(1), np.arange(1, 254) - 126 + emax).astype(np.float32)
    t = np.where(np.isinf(powers), np.float32(np.inf), np.nextafter(powers, np.float32(0)))
    table = np.ldexp(np.float32(1), np.arange(254) - 126).astype(np.float32)
    return emit("Gather", [emit.const("powers_of_two", table), _search(emit, amax, t)])


def _moved_block_axis(g: Graph, x: str) -> tuple[str, int, list[int]] | None:
    """``(source, axis, perm)`` when ``x`` is ``Transpose(source, perm)`` moving
    ``axis`` last (a spec axis the op's wrapper moved to its last dimension)
    and the dimensions from ``axis`` on are static; else ``None``."""
    prod = producers(g.graph).get(x)
    if prod is None or prod.op_type != "Transpose":
        return None
    perm = list(_attrs(prod).get("perm", []))
    shape = _shape(g, prod.input[0])
    if not perm or not shape or perm != [i for i in range(len(perm)) if i != perm[-1]] + [perm[-1]] \
            or not all(isinstance(d, int) for d in shape[perm[-1]:]):
        return None
    return prod.input[0], perm[-1], perm


def _lower_fp_blocks(g: Graph, node: onnx.NodeProto, opset: int) -> tuple[list[onnx.NodeProto], Grid]:
    """Block-scaled formats (MX, NVFP4) as blocked ``QuantizeLinear ->
    DequantizeLinear`` (opset 21; FP4 23) along the block axis. The op blocks
    its last dimension; where the spec's axis was moved there by a Transpose,
    the Q/DQ runs on the Transpose's input along that axis and the result is
    transposed (ONNX Runtime's transpose optimizer moves a Transpose across a
    blocked QuantizeLinear without its computed scales, which then fail).

    A weight: its element codes as a float8/float4 initializer read by
    DequantizeLinear, its block scales as float32 powers of two (MX) or, for
    NVFP4, as E4M3 codes read by a per-tensor DequantizeLinear with the tensor
    scale (the two-level form TensorRT reads). A run-time input: the block
    maxima (``ReduceMax`` of the finite ``|x|``) and scales computed in the
    graph by the kernel's rules (``quantext.block_scales``): MX's power of two
    by :func:`_mx_scales`, NVFP4's E4M3 rounding by ``Cast`` (round to nearest
    even, saturating)."""
    a = _attrs(node)
    key, ftype, ntype = _fp_type(node, opset, blocked=True)
    scale_format = a["scale_format"]
    _check_input_type(g, node)
    bs, top = a["block_size"], fp_max(*key)
    op_shape = _shape(g, node.input[0])
    if not op_shape or not isinstance(op_shape[-1], int):
        raise ValueError(f"{describe(node)}: block scales along the last dimension need it static, got input shape "
                         f"{op_shape}")
    x, axis, perm = _moved_block_axis(g, node.input[0]) or (node.input[0], len(op_shape) - 1, None)
    shape, emit = _shape(g, x), _Emitter(g, node)
    qdq_attrs = {"axis": axis, "block_size": bs}
    out = node.output[0] if perm is None else g.fresh(f"{node.output[0]}_blocked")
    given = _param(g, node, 1, "tensor scale", positive=True).astype(np.float32).reshape(()) \
        if len(node.input) > 1 and node.input[1] else None
    f32 = lambda hint, v: emit.const(hint, np.array(v, np.float32))  # noqa: E731
    weight = g.const(x)
    if weight is not None:
        xt = torch.from_numpy(weight.astype(np.float32)).movedim(axis, -1)
        ts = None if given is None else torch.from_numpy(given)
        y = torch.ops.quantext.fake_quant_fp_blocks(xt, a["exp_bits"], a["man_bits"], key[2], bs, scale_format, ts)
        scale, e4m3, t = block_scale_parts(xt, top, bs, scale_format, ts)
        values = (y / scale.repeat_interleave(bs, dim=-1)).movedim(-1, axis).numpy()  # on the format's grid
        grid = _fp_grid(key, scale.numpy(), len(op_shape) - 1, bs)
        scale, e4m3 = (None if v is None else v.movedim(-1, axis).numpy() for v in (scale, e4m3))
        if e4m3 is not None and np.all(e4m3 * t.numpy() >= _MIN_NORMAL):  # (else a 2^-126 floor: float32 scales)
            s_name = emit("DequantizeLinear", [emit.const("scale_codes", e4m3.astype(ml_dtypes.float8_e4m3fn)),
                                               f32("tensor_scale", t.numpy())])
        else:
            s_name = emit.const("scale", scale)
        emit("DequantizeLinear", [emit.const("codes", values.astype(ntype)), s_name,
                                  emit.const("zero_point", np.zeros(scale.shape, ntype))], out, **qdq_attrs)
    else:
        finite = emit("Where", [emit("Or", [emit("IsNaN", [x]), emit("IsInf", [x])]), f32("zero", 0.0),
                                emit("Abs", [x])])
        split = [0] * axis + [shape[axis] // bs, bs] + shape[axis + 1:]
        blocks = emit("Reshape", [finite, emit.const("blocks", np.array(split, np.int64))])
        amax = emit("ReduceMax", [blocks, emit.const("block_axis", np.array([axis + 1], np.int64))], keepdims=0)
        if scale_format == "e8m0":
            s_name = _mx_scales(emit, amax, int(np.frexp(np.float32(top))[1]) - 1)
        else:
            if given is None:  # amax(x) / (448 * fp_max), 1 when no |x| exceeds 2^-126
                whole = emit("ReduceMax", [finite], keepdims=0)
                t_name = emit("Where", [emit("Greater", [whole, f32("min_normal", _MIN_NORMAL)]),
                                        emit("Div", [whole, f32("e4m3_span", 448.0 * top)]), f32("one", 1.0)])
            else:
                t_name = f32("tensor_scale", given)
            ratio = emit("Min", [emit("Div", [amax, emit("Mul", [f32("fp_max", top), t_name])]),
                                 f32("e4m3_max", 448.0)])
            e4m3 = emit("Cast", [emit("Cast", [ratio], to=TensorProto.FLOAT8E4M3FN)], to=TensorProto.FLOAT)
            e4m3 = emit("Where", [emit("Greater", [e4m3, f32("zero_scale", 0.0)]), e4m3, f32("e4m3_min", 2.0 ** -9)])
            s_name = emit("Max", [emit("Mul", [e4m3, t_name]), f32("min_normal_scale", _MIN_NORMAL)])
        z_name = emit("Cast", [emit("Mul", [s_name, f32("zero_zp", 0.0)])], to=ftype)  # zeros of the scales' shape
        q = emit("QuantizeLinear", [x, s_name, z_name], **qdq_attrs)
        emit("DequantizeLinear", [q, s_name, z_name], out, **qdq_attrs)
        grid = dict(grid="levels", scale=[], zero_point=[0], axis=len(op_shape) - 1, group_size=bs,
                    levels=fp_levels(*key).tolist(), signed=True,
                    dynamic=dict(fp_blocks=[a["exp_bits"], a["man_bits"], key[2], bs, scale_format],
                                 tensor_scale=None if given is None else float(given)))
    if perm is not None:
        emit("Transpose", [out], node.output[0], perm=perm)
    return emit.nodes, grid


def thresholds(levels: np.ndarray) -> np.ndarray:
    """Midpoints between neighbouring float32 levels, computed exactly and
    rounded down to float32: for float32 ``v``, ``v > t32`` iff ``v > t``
    (quantext's kernels build their thresholds the same way)."""
    lv = levels.astype(np.float64)
    mid = (lv[:-1] + lv[1:]) / 2  # exact: float32 values have 24-bit mantissas
    t32 = mid.astype(np.float32)
    return np.where(t32.astype(np.float64) > mid, np.nextafter(t32, np.float32(-np.inf)), t32)


def _lower_levels(g: Graph, node: onnx.NodeProto, opset: int) -> tuple[list[onnx.NodeProto], Grid]:
    a = _attrs(node)
    axis = None if a["axis"] == op_rules.PER_TENSOR else a["axis"]
    _check_input_type(g, node)
    levels = np.asarray(a["levels"], np.float32)
    # (non-decreasing: the smallest powers of an 8-bit unsigned PoT grid underflow float32 to 0)
    if levels.ndim != 1 or levels.size < 2 or levels[0] != 0 or levels[-1] <= 0 or np.any(np.diff(levels) < 0):
        raise ValueError(f"{describe(node)}: levels must ascend from 0, got {levels.tolist()}")
    t = thresholds(levels)
    alpha = _param(g, node, 1, "alpha", positive=True).astype(np.float32).reshape(-1)
    if axis is None and alpha.size != 1:
        raise ValueError(f"{describe(node)}: a per-tensor quantizer needs one alpha, got {alpha.size}")
    rank = _rank(g, node, node.input[0])
    alpha_b = alpha.reshape(_broadcast_shape(alpha.size, axis, rank))
    emit = _Emitter(g, node)
    alpha_name = emit.const("alpha", alpha_b)
    x = g.const(node.input[0])
    if x is not None:
        v = x.astype(np.float32) / alpha_b
        # the nearest level (ties to the smaller): the number of thresholds strictly below
        idx = np.searchsorted(t, np.abs(v) if a["signed"] else v, side="left")
        codes = (np.sign(v) * idx).astype(np.int8) if a["signed"] else idx.astype(np.uint8)
        book = _integer_levels(levels, bool(a["signed"]))
        if book is None:  # no integer form: float levels times alpha
            book, scale = levels, alpha_name
        else:  # integer multiples of alpha / denominator: a weight DequantizeLinear (see _integer_levels)
            book, denominator = book
            scale = (alpha.astype(np.float64) / denominator).astype(np.float32).reshape(() if axis is None else (-1,))
        if a["signed"]:  # Gather reads negative indices from the end: code -i finds -book[i]
            book = np.concatenate([book, -book[:0:-1]])
        mag = emit("Gather", [emit.const("codebook", book), emit("Cast", [emit.const("codes", codes)],
                                                                 to=TensorProto.INT32)])
        if scale is alpha_name:
            emit("Mul", [mag, alpha_name], node.output[0])
        else:
            emit("DequantizeLinear", [mag, emit.const("scale", scale),
                                      emit.const("zero_point", np.zeros(scale.shape, book.dtype))],
                 node.output[0], **({} if axis is None else {"axis": axis}))
    else:
        v = emit("Div", [node.input[0], alpha_name])
        index = _search(emit, emit("Abs", [v]) if a["signed"] else v, t)
        mag = emit("Gather", [emit.const("levels", levels), index])
        if a["signed"]:
            scaled = emit("Mul", [mag, alpha_name])
            emit("Mul", [scaled, emit("Sign", [v])], node.output[0])
        else:
            emit("Mul", [mag, alpha_name], node.output[0])
    grid = dict(grid="levels", scale=alpha.tolist(), zero_point=[0], axis=axis, levels=levels.tolist(),
                signed=bool(a["signed"]))
    return emit.nodes, grid


def _integer_levels(levels: np.ndarray, signed: bool) -> tuple[np.ndarray, int] | None:
    """``(m, d)`` with ``levels == m / d`` in float32, ``m`` integers of the
    smallest type that holds them (int8 or int32 for a signed grid, which needs
    ``-m`` too; uint8 or int32 for an unsigned one), or ``None`` when no such
    ``d < 2^31`` exists.

    PoT levels are powers of two and APoT levels sums of them over a common
    maximum, so a b-bit weight grid is a set of small integers times
    ``alpha / d`` (APoT 4-bit: ``d = 48``, PoT 4-bit: ``d = 64``). Exported as
    int8 codes read by ``DequantizeLinear``, ONNX Runtime runs such a layer as
    int8 (``QLinearConv``) exactly; as float weights it would quantize them
    itself to a per-tensor int8 grid (its ``WeightBiasQuantization``), which
    changes the model. PoT weights decode bit for bit; APoT within a float32
    ulp (``m * fl(alpha / d)`` against ``fl(fl(m / d) * alpha)``).
    """
    fractions = []
    for level in levels.tolist():
        f = Fraction(level).limit_denominator(1 << 16)  # 1/48, not float32's nearest binary fraction
        fractions.append(f if np.float32(f.numerator / f.denominator) == np.float32(level) else Fraction(level))
    d = math.lcm(*(f.denominator for f in fractions))
    m = [f.numerator * (d // f.denominator) for f in fractions]
    if d >= 1 << 31 or max(m) >= 1 << 31:
        return None
    ints = np.asarray(m, np.int64)
    if not np.array_equal((ints / d).astype(np.float32), levels.astype(np.float32)):
        return None
    for dtype in (np.int8 if signed else np.uint8, np.int32):
        if ints.max() <= np.iinfo(dtype).max:
            return ints.astype(dtype), d
    return None


def _search(emit: _Emitter, a: str, t: np.ndarray) -> str:
    """``#{i : a > t[i]}`` for ascending ``t`` by binary search: ``ceil(log2(n+1))``
    rounds of Add/Gather/Greater/Where on int64 indices."""
    rounds = max(1, math.ceil(math.log2(t.size + 1)))
    # table[c] = t[c-1]; +inf past the end so a candidate there never wins.
    table = np.full(1 << rounds, np.inf, np.float32)
    table[1:t.size + 1] = t
    table[0] = -np.inf
    step = 1 << (rounds - 1)
    idx = emit("Where", [emit("Greater", [a, emit.const("t", table[step])]), emit.const("i", np.array(step)),
                         emit.const("zero", np.array(0))])
    table_name = emit.const("thresholds", table)
    while step > 1:
        step //= 2
        cand = emit("Add", [idx, emit.const("step", np.array(step))])
        idx = emit("Where", [emit("Greater", [a, emit("Gather", [table_name, cand])]), cand, idx])
    return idx


_RULES = {op_rules.UNIFORM: _lower_uniform, op_rules.LEVELS: _lower_levels, op_rules.DYNAMIC: _lower_dynamic,
          op_rules.FP: _lower_fp, op_rules.FP_BLOCKS: _lower_fp_blocks}


def _fold_transposed_weights(model: onnx.ModelProto, g: Graph) -> dict[str, tuple[str, list[int]]]:
    """``Transpose(DequantizeLinear(codes))`` -> ``DequantizeLinear(codes^T)`` with
    the axis moved, so a Linear exported as ``MatMul`` keeps int8 weights.
    Returns ``{old output: (new output, perm)}`` for the folded quantizers."""
    prod, users = producers(model.graph), consumers(model.graph)
    moved = {}
    for node in model.graph.node:
        dq = prod.get(node.input[0]) if node.op_type == "Transpose" else None
        if dq is None or dq.op_type != "DequantizeLinear" or g.const(dq.input[0]) is None:
            continue
        if len(users[dq.output[0]]) != 1 or "block_size" in _attrs(dq):
            continue
        codes = g.const(dq.input[0])
        perm = _attrs(node).get("perm", list(range(codes.ndim))[::-1])
        dq_attrs = _attrs(dq)
        new_attrs = {}
        if g.const(dq.input[1]).ndim:  # per axis: the axis moves with the data
            new_attrs["axis"] = perm.index(dq_attrs.get("axis", 1) % codes.ndim)
        folded = helper.make_node("DequantizeLinear", [g.add_const(dq.input[0] + "_t", codes.transpose(perm)),
                                                       *dq.input[1:]], [node.output[0]], name=dq.name + "_t",
                                  **new_attrs)
        folded.metadata_props.extend(dq.metadata_props)
        node.CopyFrom(folded)
        moved[dq.output[0]] = (node.output[0], list(perm))
    return moved


def _param_key(g: Graph, node: onnx.NodeProto) -> tuple:
    """What a quantizer computes, apart from its input."""
    attrs = sorted((k, str(v)) for k, v in _attrs(node).items() if k != "call_index")
    params = tuple(g.const(n).tobytes() if g.const(n) is not None else n for n in node.input[1:])
    return node.op_type, tuple(attrs), params


def _rename_inputs(model: onnx.ModelProto, alias: dict[str, str]) -> None:
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
    outputs = {o.name for o in model.graph.output}
    model.graph.node.extend(helper.make_node("Identity", [alias[o]], [o]) for o in outputs & alias.keys())


def lower(model: onnx.ModelProto) -> dict[int, QuantizerRecord]:
    """Replaces every ``quantext`` node of ``model`` by standard operators, in place.

    A quantizer equal to one already lowered (same input and parameters, or
    applied again to that one's output) is dropped and its users read the
    first one's output: no duplicated Q/DQ pairs.

    Returns:
        For each quantizer, by ``call_index``: the tensor holding its output,
        the module that called it and the grid of that output.
    """
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    g = Graph(model.graph)
    nodes, record, alias = [], {}, {}
    kept: dict[tuple, str] = {}  # (input, param key) -> output
    key_of: dict[str, tuple] = {}  # output -> param key
    grid_of: dict[str, Grid] = {}
    graph_outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.domain != op_rules.DOMAIN:
            nodes.append(node)
            continue
        x, out, key = alias.get(node.input[0], node.input[0]), node.output[0], _param_key(g, node)
        same = kept.get((x, key)) or (x if key_of.get(x) == key else None)
        if same is not None:
            alias[out] = same
        else:
            replacement, grid_of[out] = _RULES[node.op_type](g, node, opset)
            nodes.extend(replacement)
            kept[(x, key)], key_of[out] = out, key
        tensor = alias.get(out, out)
        grid = grid_of[tensor]
        if out in graph_outputs:  # kept as a graph output (through an Identity when aliased)
            tensor = out
        record[_attrs(node)["call_index"]] = QuantizerRecord(tensor, module_path(node), **grid)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    _rename_inputs(model, alias)
    moved = _fold_transposed_weights(model, g)
    for rec in record.values():  # a transposed weight's quantizer now lives in the folded DequantizeLinear
        if rec.tensor in moved:
            rec.tensor, rec.perm = moved[rec.tensor]
    for imp in [o for o in model.opset_import if o.domain == op_rules.DOMAIN]:
        model.opset_import.remove(imp)
    prune(model)
    return record
