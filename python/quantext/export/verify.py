"""ONNX Runtime (CPU) against the PyTorch model on the same inputs, quantizer
by quantizer.

Two runtimes summing in different orders, or dividing where the other
multiplies by a reciprocal, put a value on the other side of a rounding
boundary now and then: one quantization step at one element. In a deep
network such a step changes the next layer's inputs and the difference
cascades (a ResNet-18 at 32x32 drifts by several steps in its last stage). So
the comparison is teacher-forced: every quantizer's PyTorch output is compared
with ONNX Runtime's value of the same quantizer (each element within one
step), and the PyTorch forward continues from ONNX Runtime's value. What lies
between quantizers (convolutions, adds, pooling, the float head) is then held
to float tolerance at the outputs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from . import op_rules
from .record import QuantizerRecord, read_record

# Float outputs: relative tolerance, plus an absolute floor of a few float32
# ulps of the output's largest magnitude for elements near zero (cancellation
# in sums whose terms are far larger than the result).
RTOL = 1e-5
ULPS = 8


class VerificationError(Exception):
    """ONNX Runtime's output differs from the PyTorch model's."""


# Share of a quantizer's elements that may land one step apart: values that
# two runtimes put on different sides of a rounding boundary are rare; a wrong
# zero point or rounding rule moves most elements.
MAX_FLIPS = 0.01


def _fail(what: str, bad: np.ndarray, diff: np.ndarray, ref: np.ndarray, got: np.ndarray, problem: str) -> None:
    where = np.unravel_index(int(np.argmax(np.where(bad, np.nan_to_num(diff, nan=np.inf), -1))), ref.shape)
    raise VerificationError(
        f"{what}: {int(bad.sum())} of {ref.size} elements {problem}; largest difference {diff[where]:.6g} at "
        f"index {tuple(int(i) for i in where)} (ONNX Runtime {got[where]:.8g}, PyTorch {ref[where]:.8g})")


def _compare(what: str, ref: np.ndarray, got: np.ndarray, rec: QuantizerRecord | None) -> None:
    """Float outputs within RTOL (plus the ulp floor); quantized ones within one
    step more than that (the float tolerance of the quantizer's input matters
    once steps get as fine as 16 bits), on the same grid, and rarely a step apart."""
    if ref.shape != got.shape:
        raise VerificationError(f"{what}: shape {list(got.shape)} in ONNX Runtime, {list(ref.shape)} in PyTorch")
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(got64 - ref64)
    same_nan = np.isnan(ref64) & np.isnan(got64)
    tol = RTOL * np.abs(ref64) + ULPS * np.finfo(np.float32).eps * (np.abs(ref64).max() if ref.size else 0)
    if rec is None:
        bad = ~(diff <= tol) & ~same_nan
        if bad.any():
            _fail(what, bad, diff, ref, got, f"differ by more than {RTOL:g} relative")
        return
    step = np.asarray(rec.step, np.float64)
    if rec.axis is not None and step.size > 1:
        step = step.reshape([step.size if d == rec.axis else 1 for d in range(ref.ndim)])
    bad = ~(diff <= step + tol) & ~same_nan
    if bad.any():
        _fail(what, bad, diff, ref, got, "differ by more than one quantization step")
    steps = np.where(same_nan, 0, diff / step)
    if rec.uniform:
        bad = np.abs(steps - np.round(steps)) > 1e-3
        if bad.any():
            _fail(what, bad, diff, ref, got, "lie off the PyTorch quantizer's grid (wrong scale?)")
    flips = steps > 0.5
    if flips.sum() > max(1, MAX_FLIPS * ref.size):
        _fail(what, flips, diff, ref, got, f"are one step apart, more than the {MAX_FLIPS:.0%} that rounding "
              "boundaries explain (wrong zero point or rounding?)")


class _TeacherForcing(TorchDispatchMode):
    """Checks each fake-quant call against ONNX Runtime's value and returns that value."""

    def __init__(self, record: dict[int, QuantizerRecord], values: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.record, self.values, self.ops, self.calls = record, values, set(op_rules.quant_ops()), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func not in self.ops:
            return out
        entry = self.record.get(self.calls)
        self.calls += 1
        if entry is None or entry.tensor not in self.values:
            return out
        forced = torch.from_numpy(self.values[entry.tensor]).to(device=out.device, dtype=out.dtype)
        _compare(f"quantizer of module '{entry.module}' (ONNX tensor '{entry.tensor}')",
                 out.detach().cpu().numpy(), self.values[entry.tensor], entry)
        return forced


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = {v.name: v.type for v in list(model.graph.value_info) + list(model.graph.output)}
    for name in names:
        if name not in {o.name for o in out.graph.output}:
            info = onnx.ValueInfoProto(name=name)
            if name in types:
                info.type.CopyFrom(types[name])
            else:
                info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
            out.graph.output.append(info)
    return out


def verify_onnx(path: str | os.PathLike, model: nn.Module, example_inputs: torch.Tensor | tuple[Any, ...]) -> None:
    """Runs ``path`` in ONNX Runtime (CPUExecutionProvider) on ``example_inputs``
    and compares it with ``model``, teacher-forced at every quantizer (see the
    module docstring).

    A float output must be within ``1e-5`` relative, plus an absolute floor of
    8 float32 ulps of its largest magnitude. Each quantizer's output (and a
    model output that is one) must be within one quantization step more than
    that, on the PyTorch quantizer's grid, and a step apart at no more than 1%
    of the elements. Classifier-shaped outputs (``[batch, classes]``)
    must agree on the top-1 class.

    Raises:
        VerificationError: naming the quantizer or output, the largest
            difference and its index.
    """
    import onnxruntime as ort

    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    proto = onnx.load(os.fspath(path))
    record = read_record(proto)
    produced = {o for node in proto.graph.node for o in node.output}
    record = {k: v for k, v in record.items() if v.tensor in produced}
    names = [o.name for o in proto.graph.output]
    extra = sorted({v.tensor for v in record.values()} - set(names))
    # No graph optimizations: even the basic level rounds a float Conv bias
    # feeding on Q/DQ to int32 (scale = input scale * weight scale), and the
    # extended level fuses DQ -> Conv -> Q into QLinearConv (also with the
    # quantizer outputs exposed); at 4 bits either moves about 1% of a
    # quantizer's elements by a step. Verification checks the exported
    # semantics; the fused kernels are a deployment matter (docs/export.md).
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(_with_outputs(proto, extra).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), tensors)}
    values = dict(zip(names + extra, session.run(names + extra, feeds)))
    with torch.no_grad(), _TeacherForcing(record, values):
        ref = [r.detach().cpu().numpy() for r in torch.utils._pytree.tree_leaves(model(*args))]
    if len(ref) != len(names):
        raise VerificationError(f"the ONNX model has {len(names)} outputs, the PyTorch model {len(ref)}")
    steps = {v.tensor: v for v in record.values()}
    for name, r in zip(names, ref):
        got = values[name]
        _compare(f"output '{name}'", r, got, steps.get(name))
        if r.ndim == 2 and r.shape[1] > 1 and not np.array_equal(r.argmax(1), got.argmax(1)):
            rows = np.nonzero(r.argmax(1) != got.argmax(1))[0]
            raise VerificationError(f"output '{name}': top-1 class differs in rows {rows.tolist()}")
