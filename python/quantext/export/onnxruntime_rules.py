"""Checks a QDQ model for what ONNX Runtime's int8 rewrites compute differently
from the model itself."""

from __future__ import annotations

import os

import numpy as np
import onnx

from .graph import Graph, describe, producers

INT32_MAX = np.iinfo(np.int32).max


def check_onnxruntime_rules(model: str | os.PathLike | onnx.ModelProto) -> list[str]:
    """Lists what ONNX Runtime (CPU provider, basic optimizations and above)
    would compute wrongly in a QDQ model; empty when nothing.

    Flags a Conv/Gemm with dequantized input and weight whose float bias does
    not fit int32 at ``input scale * weight scale``: ONNX Runtime stores such a
    bias as int32 at that scale (its ``WeightBiasQuantization`` rewrite) and
    saturates it. It happens when a quantizer's scale is far too small for the
    layer (calibrated on data much smaller than the model sees, or on zeros)
    or when training blew a bias up.
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    g, prod = Graph(model.graph), producers(model.graph)
    issues = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or g.const(node.input[2]) is None:
            continue
        x_dq, w_dq = (prod.get(name) for name in node.input[:2])
        if not all(getattr(dq, "op_type", None) == "DequantizeLinear" for dq in (x_dq, w_dq)):
            continue
        x_scale, w_scale = g.const(x_dq.input[1]), g.const(w_dq.input[1])
        # Per-group weight scales (2-D) have no per-output-channel bias grid.
        if x_scale is None or w_scale is None or x_scale.size != 1 or w_scale.ndim > 1:
            continue
        steps = np.abs(g.const(node.input[2]).astype(np.float64)) / (float(x_scale) * w_scale.astype(np.float64))
        if steps.max() > INT32_MAX:
            issues.append(f"{node.op_type} '{node.name}' of {describe(node)}: bias up to "
                          f"{np.abs(g.const(node.input[2])).max():.3g} is {steps.max():.3g} steps of input scale "
                          f"{float(x_scale):.3g} x weight scale, beyond int32: ONNX Runtime saturates it when it "
                          "quantizes the bias (is the input quantizer's scale calibrated on representative data?)")
    return issues
