"""The torch ops the exporter translates, and how each one enters the ONNX graph.

The torch exporter hands a translation function symbolic tensors, not values,
so each fake-quant op becomes one node of a private ``quantext`` ONNX domain
that carries its integer range or level table as attributes. :mod:`.qdq_rules`
then lowers those nodes to standard operators with the constants in hand
(folding a weight into integer codes needs the weight's values).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
from onnx.defs import OpSchema

from ..schemes import levels

DOMAIN = "quantext"
UNIFORM = "FakeQuantUniform"
LEVELS = "FakeQuantLevels"
DYNAMIC = "FakeQuantDynamic"
FP = "FakeQuantFp"
FP_BLOCKS = "FakeQuantFpBlocks"
PER_TENSOR = -1  # ``axis`` attribute value of a per-tensor quantizer

_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]


@dataclass(frozen=True)
class LevelsArgs:
    """A level-table fake quantization: ``x`` clipped to ``alpha``, rounded to the
    nearest of ``levels * alpha`` (ties to the smaller magnitude).

    Attributes:
        x: the input (a symbolic tensor during export).
        alpha: clipping value, one element or one per index of ``axis``.
        levels: normalized magnitudes, ascending, from 0 to 1; rounding
            switches at the midpoints of their float32 values (as quantext's
            kernels do).
        signed: the levels are mirrored to negative values.
        axis: ``None`` per tensor, else the axis of a per-channel ``alpha``.
    """

    x: Any
    alpha: Any
    levels: Sequence[float]
    signed: bool
    axis: int | None


LevelsAdapter = Callable[[dict[str, Any]], LevelsArgs]
_LEVELS_OPS: dict[torch._ops.OpOverload, LevelsAdapter] = {}


def register_levels_op(op: torch._ops.OpOverload, adapter: LevelsAdapter) -> None:
    """Teaches the exporter a fake-quant op that rounds to a table of levels
    (quantext's own ``fake_quant_levels`` is known already).

    Args:
        op: the op overload, e.g. ``torch.ops.mylib.fake_quant_pot.default``.
        adapter: maps the op's arguments, bound by name from its schema
            (defaults filled in), to :class:`LevelsArgs`.
    """
    if not isinstance(op, torch._ops.OpOverload):
        raise TypeError(f"op must be an OpOverload (e.g. torch.ops.ns.name.default), got {op!r}")
    _LEVELS_OPS[op] = adapter


def level_table(scheme: str, bits: int, signed: bool, k: int = 2) -> np.ndarray:
    """Normalized magnitude levels of a quantext PoT/APoT grid, float64,
    ascending from 0 to 1 (``quantext.levels`` without the negative half)."""
    table = levels(scheme, bits, signed=bool(signed), k=k).numpy()
    return table[table >= 0]


def _levels_adapter(a: dict[str, Any]) -> LevelsArgs:
    """Reads ``quantext::fake_quant_levels(x, alpha, scheme, bits, signed, k, rounding, axis, grad_factor)``."""
    if a["rounding"] != "nearest":
        raise ValueError(f"export of scheme={a['scheme']!r} with rounding={a['rounding']!r} is not supported: "
                         "only rounding='nearest' has an exact ONNX composition")
    table = level_table(a["scheme"], a["bits"], a["signed"], a["k"])
    return LevelsArgs(a["x"], a["alpha"], table, bool(a["signed"]), a["axis"])


def bind(op: torch._ops.OpOverload, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a call of ``op`` by name, with schema defaults filled in."""
    bound = {}
    for i, arg in enumerate(op._schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound


def _axis_attr(x: Any, axis: int | None) -> int:
    return PER_TENSOR if axis is None else axis % len(x.shape)


def _translate_uniform(opset: Any, call_index: Callable[[], int]) -> Callable[..., Any]:
    def translate(*args: Any, **kwargs: Any) -> Any:
        a = bind(torch.ops.quantext.fake_quant_uniform.default, args, kwargs)
        return opset.FakeQuantUniform(a["x"], a["scale"], a["zero_point"], qmin=a["qmin"], qmax=a["qmax"],
                                       axis=_axis_attr(a["x"], a["axis"]), group_size=a["group_size"],
                                       call_index=call_index())

    return translate


def _translate_dynamic(opset: Any, call_index: Callable[[], int]) -> Callable[..., Any]:
    def translate(*args: Any, **kwargs: Any) -> Any:
        a = bind(torch.ops.quantext.fake_quant_dynamic.default, args, kwargs)
        return opset.FakeQuantDynamic(a["x"], qmin=a["qmin"], qmax=a["qmax"], symmetric=int(a["symmetric"]),
                                       per_token=int(a["per_token"]), min_scale=float(a["min_scale"]),
                                       call_index=call_index())

    return translate


def _translate_fp(opset: Any, call_index: Callable[[], int]) -> Callable[..., Any]:
    def translate(*args: Any, **kwargs: Any) -> Any:
        a = bind(torch.ops.quantext.fake_quant_fp.default, args, kwargs)
        return opset.FakeQuantFp(a["x"], a["scale"], exp_bits=a["exp_bits"], man_bits=a["man_bits"],
                                  special=a["special"], axis=_axis_attr(a["x"], a["axis"]), group_size=a["group_size"],
                                  call_index=call_index())

    return translate


def _translate_fp_blocks(opset: Any, call_index: Callable[[], int]) -> Callable[..., Any]:
    def translate(*args: Any, **kwargs: Any) -> Any:
        a = bind(torch.ops.quantext.fake_quant_fp_blocks.default, args, kwargs)
        given = [] if a.get("tensor_scale") is None else [a["tensor_scale"]]
        return opset.FakeQuantFpBlocks(a["x"], *given, exp_bits=a["exp_bits"], man_bits=a["man_bits"],
                                        special=a["special"], block_size=a["block_size"],
                                        scale_format=a["scale_format"], call_index=call_index())

    return translate


def _translate_levels(opset: Any, op: torch._ops.OpOverload, call_index: Callable[[], int]) -> Callable[..., Any]:
    def translate(*args: Any, **kwargs: Any) -> Any:
        d = _LEVELS_OPS[op](bind(op, args, kwargs))
        return opset.FakeQuantLevels(d.x, d.alpha, levels=np.asarray(d.levels, np.float32).tolist(),
                                      signed=int(d.signed), axis=_axis_attr(d.x, d.axis), call_index=call_index())

    return translate


def _register_schemas() -> None:
    """Declares the private ops to ONNX, which the exporter's op builder asks for."""
    if onnx.defs.has(UNIFORM, DOMAIN):
        return
    param = OpSchema.FormalParameter
    attr = OpSchema.Attribute
    ints = OpSchema.AttrType.INT
    common = [("T", _FLOATS, ""), ("S", ["tensor(float)", "tensor(double)"], "")]
    onnx.defs.register_schema(OpSchema(
        UNIFORM, DOMAIN, 1, inputs=[param("x", "T"), param("scale", "S"), param("zero_point", "Z")],
        outputs=[param("y", "T")],
        type_constraints=common + [("Z", ["tensor(int32)", "tensor(int64)"] + _FLOATS, "")],
        attributes=[attr("qmin", ints, ""), attr("qmax", ints, ""), attr("axis", ints, ""),
                    attr("group_size", ints, ""), attr("call_index", ints, "")]))
    onnx.defs.register_schema(OpSchema(
        LEVELS, DOMAIN, 1, inputs=[param("x", "T"), param("alpha", "S")], outputs=[param("y", "T")],
        type_constraints=common,
        attributes=[attr("levels", OpSchema.AttrType.FLOATS, ""), attr("signed", ints, ""), attr("axis", ints, ""),
                    attr("call_index", ints, "")]))
    onnx.defs.register_schema(OpSchema(
        FP, DOMAIN, 1, inputs=[param("x", "T"), param("scale", "S")], outputs=[param("y", "T")],
        type_constraints=common,
        attributes=[attr("exp_bits", ints, ""), attr("man_bits", ints, ""),
                    attr("special", OpSchema.AttrType.STRING, ""), attr("axis", ints, ""), attr("group_size", ints, ""),
                    attr("call_index", ints, "")]))
    onnx.defs.register_schema(OpSchema(
        FP_BLOCKS, DOMAIN, 1,
        inputs=[param("x", "T"), param("tensor_scale", "S", param_option=OpSchema.FormalParameterOption.Optional)],
        outputs=[param("y", "T")], type_constraints=common,
        attributes=[attr("exp_bits", ints, ""), attr("man_bits", ints, ""),
                    attr("special", OpSchema.AttrType.STRING, ""), attr("block_size", ints, ""),
                    attr("scale_format", OpSchema.AttrType.STRING, ""), attr("call_index", ints, "")]))
    onnx.defs.register_schema(OpSchema(
        DYNAMIC, DOMAIN, 1, inputs=[param("x", "T")], outputs=[param("y", "T")], type_constraints=common[:1],
        attributes=[attr("qmin", ints, ""), attr("qmax", ints, ""), attr("symmetric", ints, ""),
                    attr("per_token", ints, ""), attr("min_scale", OpSchema.AttrType.FLOAT, ""),
                    attr("call_index", ints, "")]))


def quant_ops() -> list[torch._ops.OpOverload]:
    """Every fake-quant op the exporter translates."""
    return [torch.ops.quantext.fake_quant_uniform.default, torch.ops.quantext.fake_quant_dynamic.default,
            torch.ops.quantext.fake_quant_fp.default, torch.ops.quantext.fake_quant_fp_blocks.default, *_LEVELS_OPS]


def translation_table() -> dict[torch._ops.OpOverload, Callable[..., Any]]:
    """``custom_translation_table`` for one ``torch.onnx.export`` call.

    Each node records ``call_index``, the position of its op call in the
    model's execution order (the exporter translates in that order): it keeps
    equal quantizers from being merged before :mod:`.qdq_rules` sees them and
    lets verification pair each node with the PyTorch call it came from.
    """
    from onnxscript import values  # imported here: it takes a while and only export needs it

    _register_schemas()
    opset, call_index = values.Opset(DOMAIN, 1), itertools.count().__next__
    table = {torch.ops.quantext.fake_quant_uniform.default: _translate_uniform(opset, call_index),
             torch.ops.quantext.fake_quant_dynamic.default: _translate_dynamic(opset, call_index),
             torch.ops.quantext.fake_quant_fp.default: _translate_fp(opset, call_index),
             torch.ops.quantext.fake_quant_fp_blocks.default: _translate_fp_blocks(opset, call_index)}
    table.update({op: _translate_levels(opset, op, call_index) for op in _LEVELS_OPS})
    return table


def _node_module(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return "the top-level module"
    path, cls = list(stack.values())[-1]
    cls_name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    return f"module '{path}' ({cls_name.rsplit('.', 1)[-1]})"


def check_ops(program: torch.export.ExportedProgram) -> None:
    """Raises for an op outside ATen that no rule translates, or a level-table op
    whose arguments its adapter refuses, naming the module that called it (the
    torch exporter's own error would name only the op)."""
    known = set(quant_ops())
    for node in program.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        if target in _LEVELS_OPS:
            try:
                _LEVELS_OPS[target](bind(target, node.args, node.kwargs))
            except ValueError as err:
                raise ValueError(f"{_node_module(node)}: {err}") from None
        if target.namespace in ("aten", "prims") or target in known:
            continue
        raise NotImplementedError(
            f"{_node_module(node)} calls {target.name()}, which has no ONNX export rule. Replace the module "
            "with a quantext module (qx.nn.QuantConv2d / QuantLinear / Quantizer), or, for a fake-quant op "
            "that rounds to a level table, register it with quantext.export.register_levels_op.")


register_levels_op(torch.ops.quantext.fake_quant_levels.default, _levels_adapter)
