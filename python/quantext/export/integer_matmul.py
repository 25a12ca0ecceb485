"""Dynamic-quantized matrix products as ``MatMulInteger`` (``export_onnx(...,
integer_matmul=True)``).

ONNX Runtime runs a ``DequantizeLinear`` whose scale is computed at run time
(a dynamic quantizer's) in float, so the QDQ form of a dynamically quantized
layer computes its product in float. ``MatMulInteger`` over the integer codes
of the input and of the weight, scaled afterwards, is the form its own dynamic
quantization produces and its CPU provider fuses into integer kernels
(``MatMulIntegerToFloat`` / ``DynamicQuantizeMatMul``):

    y = float(MatMulInteger(q_x, q_w, z_x, z_w)) * (s_x * s_w) (+ bias)

which equals the QDQ product up to float rounding (the integer sum is exact;
the float one rounds). Rewritten: ``MatMul`` and ``Gemm`` (alpha = beta = 1,
no transposed input) whose input is a dynamic quantizer's per-tensor output
or symmetric per-token one (``MatMulInteger`` takes one input zero point, or
one per row of a 2-D input), and whose weight is a constant int8/uint8 tensor
quantized per tensor or per output column. Other products keep their QDQ form.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .graph import Graph, producers, prune
from .record import QuantizerRecord


def _weight(g: Graph, dq: onnx.NodeProto | None, trans_b: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(codes [K, N], scale [N] or [], zero point)`` of a constant weight DequantizeLinear, else None."""
    if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
        return None
    codes, scale, zp = (g.const(n) for n in dq.input[:3])
    attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
    if codes is None or scale is None or zp is None or codes.ndim != 2 or attrs.get("block_size", 0) \
            or codes.dtype not in (np.int8, np.uint8):
        return None
    if scale.size > 1 and attrs.get("axis", 1) % 2 != (0 if trans_b else 1):  # per output column only
        return None
    return (codes.T if trans_b else codes), scale.reshape(-1) if scale.size > 1 else scale.reshape(()), zp


def integer_matmuls(model: onnx.ModelProto, record: dict[int, QuantizerRecord]) -> int:
    """Rewrites the products described in the module docstring in place;
    returns how many."""
    g, prod = Graph(model.graph), producers(model.graph)
    dynamic = {r.tensor: r.dynamic for r in record.values() if r.dynamic is not None}
    nodes, count = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        gemm_ok = node.op_type == "Gemm" and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 \
            and not attrs.get("transA", 0)
        x_dq = prod.get(node.input[0]) if node.op_type in ("MatMul", "Gemm") else None
        d = dynamic.get(node.input[0])
        weight = _weight(g, prod.get(node.input[1]), bool(attrs.get("transB", 0))) \
            if (node.op_type == "MatMul" or gemm_ok) and d is not None and x_dq is not None else None
        if weight is None or (d["per_token"] and not d["symmetric"]):
            nodes.append(node)
            continue
        codes, w_scale, w_zp = weight
        q_x, s_x = x_dq.input[0], x_dq.input[1]
        base = node.output[0]
        # A symmetric per-token zero point is 0 in every row: one scalar serves inputs of any rank.
        z_x = g.add_const(f"{base}_x_zero_point", np.zeros((), np.int8)) if d["per_token"] else x_dq.input[2]
        made = [helper.make_node("MatMulInteger", [q_x, g.add_const(f"{base}_w_codes", codes), z_x,
                                                   g.add_const(f"{base}_w_zero_point", w_zp)],
                                 [g.fresh(f"{base}_int32")], name=g.fresh(f"{node.name}/MatMulInteger"))]
        made.append(helper.make_node("Cast", made[-1].output, [g.fresh(f"{base}_float")], to=TensorProto.FLOAT))
        out = g.fresh(f"{base}_product") if len(node.input) > 2 else base
        w_scale = g.add_const(f"{base}_w_scale", w_scale)
        if d["per_token"]:
            # Per-row input scales apart: ONNX Runtime's MatMulIntegerToFloat fusion reads the
            # scale of a Mul right after the Cast as one per tensor or per column (1.31 computes
            # wrong products from per-row ones).
            by_column = g.fresh(f"{base}_by_column")
            made.append(helper.make_node("Mul", [made[1].output[0], w_scale], [by_column]))
            made.append(helper.make_node("Mul", [by_column, s_x], [out]))
        else:
            steps = g.fresh(f"{base}_scale")
            made.append(helper.make_node("Mul", [s_x, w_scale], [steps]))
            made.append(helper.make_node("Mul", [made[1].output[0], steps], [out]))
        if len(node.input) > 2:
            made.append(helper.make_node("Add", [out, node.input[2]], [base]))
        for m in made:
            m.metadata_props.extend(node.metadata_props)
        nodes.extend(made)
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    prune(model)
    return count
