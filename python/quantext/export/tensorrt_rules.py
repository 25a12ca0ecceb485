"""Checks an ONNX QDQ model against TensorRT's explicit-quantization rules
(TensorRT developer guide, "Working with Quantized Types": Q/DQ placement)."""

from __future__ import annotations

import os

import numpy as np
import onnx

from .graph import Graph, consumers, describe, producers

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_LINEAR = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish")


def _weight_axis(user: onnx.NodeProto, index: int) -> int | None:
    """The output-channel axis of a weight read as input ``index`` of ``user``."""
    if user.op_type == "Conv" and index == 1:
        return 0
    if user.op_type == "Gemm" and index == 1:
        trans_b = next((a.i for a in user.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if user.op_type == "MatMul" and index == 1:
        return -1
    return None


def _qdq_issues(g: Graph, node: onnx.NodeProto, users: dict) -> list[str]:
    where = f"{node.op_type} '{node.name}' of {describe(node)}"
    zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    issues = []
    dtype = np.dtype(np.uint8) if zp is None else zp.dtype  # ONNX's default zero point is uint8
    if dtype != np.int8:
        issues.append(f"{where}: integer type {dtype} (TensorRT quantizes to int8 only)")
    if zp is not None and np.any(zp != 0):
        issues.append(f"{where}: zero point {np.unique(zp)[:4].tolist()} != 0 (TensorRT is symmetric only)")
    scale = g.const(node.input[1])
    is_weight = g.const(node.input[0]) is not None
    if scale is not None and scale.size > 1 and not is_weight:
        issues.append(f"{where}: per-channel quantization of an activation (TensorRT quantizes activations "
                      "per tensor)")
    if scale is not None and scale.size > 1 and is_weight and node.op_type == "DequantizeLinear":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % g.const(node.input[0]).ndim
        for user in users.get(node.output[0], []):
            want = _weight_axis(user, list(user.input).index(node.output[0]))
            if want is not None and axis != want % g.const(node.input[0]).ndim:
                issues.append(f"{where}: weight quantized along axis {axis}, but {user.op_type} '{user.name}' "
                              f"has its output channels on axis {want % g.const(node.input[0]).ndim}")
    return issues


def check_tensorrt_rules(model: str | os.PathLike | onnx.ModelProto) -> list[str]:
    """Lists what keeps TensorRT from running a QDQ model as intended (int8
    layers with Conv+BN+ReLU and residual Add fused); empty when nothing does.

    Flags: non-int8 Q/DQ types; non-zero zero points; per-channel activation
    Q/DQ; per-channel weights on an axis other than the output channels; a
    ``Clip`` between Q and DQ (sub-8-bit or narrowed ranges); BatchNormalization
    nodes; a Q/DQ pair between Conv/Gemm/MatMul and its activation (it blocks
    the Conv+ReLU fusion: quantize after the activation); an Add of two
    activations that are not both quantized (TensorRT's placement rule for
    residual adds).
    """
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(os.fspath(model))
    g, prod, users = Graph(model.graph), producers(model.graph), consumers(model.graph)
    issues = []
    for node in model.graph.node:
        where = f"{node.op_type} '{node.name}' of {describe(node)}"
        if node.op_type in _QDQ:
            issues += _qdq_issues(g, node, users)
        if node.op_type == "DequantizeLinear" and getattr(prod.get(node.input[0]), "op_type", None) == "Clip":
            issues.append(f"{where}: reads a Clip of a QuantizeLinear (QCDQ: a range narrower than int8); "
                          "TensorRT runs 8-bit Q/DQ only")
        if node.op_type == "BatchNormalization":
            issues.append(f"{where}: BatchNormalization in a quantized graph; fold it into the convolution")
        if node.op_type == "QuantizeLinear" and getattr(prod.get(node.input[0]), "op_type", None) in _LINEAR:
            dq_users = [u for dq in users.get(node.output[0], []) for u in users.get(dq.output[0], [])]
            if any(u.op_type in _ACTIVATIONS + ("BatchNormalization",) for u in dq_users):
                issues.append(f"{where}: Q/DQ between {prod[node.input[0]].op_type} and its activation blocks "
                              "TensorRT's Conv+BN+ReLU fusion; quantize after the activation")
        if node.op_type == "Add":
            inputs = [i for i in node.input if g.const(i) is None]
            unquantized = [i for i in inputs if getattr(prod.get(i), "op_type", None) != "DequantizeLinear"]
            if len(inputs) == 2 and unquantized:
                issues.append(f"{where}: input(s) {unquantized} not quantized; TensorRT runs a residual Add in "
                              "int8 and fuses it into the convolution only when both inputs come from Q/DQ")
    return issues
