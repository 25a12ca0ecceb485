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

import dataclasses
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..block_scales import block_scale_parts
from ..spec import fp_max
from . import op_rules
from .record import QuantizerRecord, read_record

# Float outputs: relative tolerance, plus an absolute floor of a few float32
# ulps of the output's largest magnitude for elements near zero (cancellation
# in sums whose terms are far larger than the result).
RTOL = 1e-5
ULPS = 8


class VerificationError(Exception):
    """ONNX Runtime's output differs from the PyTorch model's."""


# Kernels of ONNX Runtime's optimized CPU graph that compute on integers.
INT8_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "QLinearAdd", "QLinearMul", "MatMulInteger",
                "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearGlobalAveragePool",
                "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearReduceMean")
# Its float kernels for the layers that a quantized model means to run as integers.
FLOAT_KERNELS = ("Conv", "FusedConv", "NhwcFusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


@dataclass
class VerificationReport:
    """What :func:`verify_onnx` found, beyond passing.

    ``max_diff`` / ``top1`` compare free-running outputs (no teacher forcing)
    with graph optimizations off: the exported semantics, drift included.
    ``optimized_max_diff`` / ``optimized_top1`` do the same with
    ``ORT_ENABLE_ALL``, what a user runs: ONNX Runtime's int8 rewrites
    (int32 biases, ``QLinearConv`` requantization, float weights it quantizes
    itself) change results there (docs/export.md, "What ONNX Runtime does to
    each scheme"). ``top1`` is the share of positions whose argmax over axis 1
    agrees (outputs of rank >= 2 with more than one channel; ``None`` without
    one). ``int8_kernels`` / ``float_kernels`` count the optimized graph's nodes.
    """

    quantizers: int  # quantizer outputs compared, teacher-forced, as integer codes
    max_diff: float
    top1: float | None
    optimized_max_diff: float
    optimized_top1: float | None
    int8_kernels: dict[str, int] = field(default_factory=dict)
    float_kernels: dict[str, int] = field(default_factory=dict)
    output_range: float = 0.0  # largest |output| of the PyTorch model, to read the differences against
    # ONNX Runtime's error when its optimized graph would not load or run (then the optimized_* fields are NaN/None)
    optimized_error: str | None = None
    # what ran the model: "onnxruntime", or "onnx.reference" (onnx's reference evaluator) where ONNX
    # Runtime has no kernel for an operator the file uses (optimized_error says which)
    runtime: str = "onnxruntime"

    def summary(self) -> str:
        """One line for logs."""
        def top1(v: float | None) -> str:
            return "-" if v is None else f"{v:.0%}"
        kernels = ", ".join(f"{n} {k}" for n, k in sorted(self.int8_kernels.items())) or "none"
        if self.runtime != "onnxruntime":
            return (f"{self.quantizers} quantizers agree in {self.runtime}; free-running max |diff| "
                    f"{self.max_diff:.3g} (top-1 {top1(self.top1)}) of outputs up to {self.output_range:.3g}; "
                    f"ONNX Runtime does not run it: {self.optimized_error}")
        if self.optimized_error is not None:
            return (f"{self.quantizers} quantizers agree; free-running max |diff| {self.max_diff:.3g} (top-1 "
                    f"{top1(self.top1)}) of outputs up to {self.output_range:.3g}; with all ONNX Runtime "
                    f"optimizations it does not load: {self.optimized_error}")
        return (f"{self.quantizers} quantizers agree; free-running max |diff| {self.max_diff:.3g} (top-1 "
                f"{top1(self.top1)}), with all ONNX Runtime optimizations {self.optimized_max_diff:.3g} (top-1 "
                f"{top1(self.optimized_top1)}) of outputs up to {self.output_range:.3g}; int8 kernels: {kernels}")


# Share of a quantizer's elements that may land one step apart: values that
# two runtimes put on different sides of a rounding boundary are rare; a wrong
# zero point or rounding rule moves most elements.
MAX_FLIPS = 0.01


def _fail(what: str, bad: np.ndarray, diff: np.ndarray, ref: np.ndarray, got: np.ndarray, problem: str,
          codes: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    where = np.unravel_index(int(np.argmax(np.where(bad, np.nan_to_num(diff, nan=np.inf), -1))), ref.shape)
    got_s, ref_s = f"{got[where]:.8g}", f"{ref[where]:.8g}"
    if codes is not None:
        got_s, ref_s = f"{got_s} = code {int(codes[0][where])}", f"{ref_s} = code {int(codes[1][where])}"
    raise VerificationError(
        f"{what}: {int(bad.sum())} of {ref.size} elements {problem}; largest difference {diff[where]:.6g} at "
        f"index {tuple(int(i) for i in where)} (ONNX Runtime {got_s}, PyTorch {ref_s})")


def _compare(what: str, ref: np.ndarray, got: np.ndarray, rec: QuantizerRecord | None) -> None:
    """Float outputs within RTOL (plus the ulp floor). Quantized ones in the
    integer domain, which holds at any scale: ONNX Runtime's values on the
    quantizer's grid, their codes within one of PyTorch's, and rarely one apart."""
    if ref.shape != got.shape:
        raise VerificationError(f"{what}: shape {list(got.shape)} in ONNX Runtime, {list(ref.shape)} in PyTorch")
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    diff = np.abs(got64 - ref64)
    same_nan = np.isnan(ref64) & np.isnan(got64)
    if rec is None:
        tol = RTOL * np.abs(ref64) + ULPS * np.finfo(np.float32).eps * (np.abs(ref64).max() if ref.size else 0)
        bad = ~(diff <= tol) & ~same_nan
        if bad.any():
            _fail(what, bad, diff, ref, got, f"differ by more than {RTOL:g} relative")
        return
    (got_code, got_on_grid), (ref_code, _) = rec.codes(got64), rec.codes(ref64)
    codes = (got_code, ref_code)
    apart = np.where(same_nan, 0, np.abs(got_code - ref_code))
    bad = (apart > 1) | (np.isnan(ref64) != np.isnan(got64))
    if bad.any():
        _fail(what, bad, diff, ref, got, "differ by more than one quantization step", codes)
    bad = ~got_on_grid & ~same_nan
    if bad.any():
        _fail(what, bad, diff, ref, got, "lie off the PyTorch quantizer's grid (wrong scale?)", codes)
    flips = apart > 0
    if flips.sum() > max(1, MAX_FLIPS * ref.size):
        _fail(what, flips, diff, ref, got, f"are one step apart, more than the {MAX_FLIPS:.0%} that rounding "
              "boundaries explain (wrong zero point or rounding?)", codes)


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
        if entry.dynamic is not None:
            entry = _with_input_params(entry, args[0])
        got = entry.from_onnx(self.values[entry.tensor]).copy()  # (C order; ascontiguousarray makes 0-dim 1-dim)
        _compare(f"quantizer of module '{entry.module}' (ONNX tensor '{entry.tensor}')",
                 out.detach().cpu().numpy(), got, entry)
        forced = torch.from_numpy(got).to(device=out.device, dtype=out.dtype)
        return forced


def _with_input_params(rec: QuantizerRecord, x: torch.Tensor) -> QuantizerRecord:
    """A dynamic quantizer's record as the grid it rounds ``x`` to: uniform, or
    a block-scaled format's values times each block's scale."""
    d = rec.dynamic
    if "fp_blocks" in d:
        exp_bits, man_bits, special, block_size, scale_format = d["fp_blocks"]
        given = None if d["tensor_scale"] is None else torch.tensor(d["tensor_scale"])
        top = fp_max(exp_bits, man_bits, special)
        scale = block_scale_parts(x.detach().cpu(), top, block_size, scale_format, given)[0].double()
        return dataclasses.replace(rec, scale=(scale * top).ravel().tolist(), param_shape=list(scale.shape),
                                   dynamic=None)
    scale, zero_point = torch.ops.quantext.dynamic_qparams(x, d["qmin"], d["qmax"], d["symmetric"], d["per_token"],
                                                           d["min_scale"])
    params = dict(grid="uniform", scale=scale.double().ravel().tolist(), zero_point=zero_point.ravel().tolist(),
                  dynamic=None)
    if d["per_token"]:  # one group of the whole last dimension per row
        params.update(axis=x.dim() - 1, group_size=x.shape[-1], param_shape=list(scale.shape))
    return dataclasses.replace(rec, **params)


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


def verify_onnx(path: str | os.PathLike, model: nn.Module,
                example_inputs: torch.Tensor | tuple[Any, ...]) -> VerificationReport:
    """Runs ``path`` in ONNX Runtime (CPUExecutionProvider) on ``example_inputs``
    and compares it with ``model``, teacher-forced at every quantizer (see the
    module docstring). Where ONNX Runtime has no kernel for an operator of the
    file (``NOT_IMPLEMENTED``: it does not quantize to FP4), onnx's reference
    evaluator runs it instead and the report says so (``runtime``).

    A float output must be within ``1e-5`` relative, plus an absolute floor of
    8 float32 ulps of its largest magnitude. Each quantizer's output (and a
    model output that is one) is compared as integer codes (exact at any
    scale): ONNX Runtime's values on the PyTorch quantizer's grid, each code
    within one of PyTorch's, and one apart at no more than 1% of the elements.
    Classifier-shaped outputs (``[batch, classes]``) must agree on the top-1
    class. This run has graph optimizations off; the model then also runs
    free (no teacher forcing) with them off and with ``ORT_ENABLE_ALL``, and
    the agreement is reported, not enforced.

    Returns:
        a :class:`VerificationReport`.

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
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    # No graph optimizations: even the basic level rounds a float Conv bias
    # feeding on Q/DQ to int32 (scale = input scale * weight scale), and the
    # extended level fuses DQ -> Conv -> Q into QLinearConv (also with the
    # quantizer outputs exposed); at 4 bits either moves about 1% of a
    # quantizer's elements by a step. Verification checks the exported
    # semantics; what the optimizations change is reported below.
    watched = _with_outputs(proto, extra)
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(proto.graph.input, tensors)}
    try:
        session = _session(watched.SerializeToString(), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        runtime, refused = "onnxruntime", None
    except Exception as err:  # noqa: BLE001 (ORT lacks kernels the standard has: QuantizeLinear-23 to FP4)
        if "NOT_IMPLEMENTED" not in str(err):
            raise
        from onnx.reference import ReferenceEvaluator

        session = ReferenceEvaluator(watched)
        runtime, refused = "onnx.reference", f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    values = dict(zip(names + extra, session.run(names + extra, feeds)))
    with torch.no_grad(), _TeacherForcing(record, values):
        ref = [r.detach().cpu().numpy() for r in torch.utils._pytree.tree_leaves(model(*args))]
    if len(ref) != len(names):
        raise VerificationError(f"the ONNX model has {len(names)} outputs, the PyTorch model {len(ref)}")
    steps = {v.tensor: v for v in record.values() if v.dynamic is None}  # a dynamic output compares as float
    for name, r in zip(names, ref):
        got = values[name]
        _compare(f"output '{name}'", r, got, steps.get(name))
        if r.ndim == 2 and r.shape[1] > 1 and not np.array_equal(r.argmax(1), got.argmax(1)):
            rows = np.nonzero(r.argmax(1) != got.argmax(1))[0]
            raise VerificationError(f"output '{name}': top-1 class differs in rows {rows.tolist()}")

    with torch.no_grad():
        free = [r.detach().cpu().numpy() for r in torch.utils._pytree.tree_leaves(model(*args))]
    plain = [values[n] for n in names]  # ONNX Runtime ran free; only PyTorch was teacher-forced
    common = dict(quantizers=len(record), max_diff=_max_diff(free, plain), top1=_top1(free, plain),
                  output_range=max((float(np.abs(r).max()) for r in free if r.size), default=0.0), runtime=runtime)
    if refused is not None:
        return VerificationReport(**common, optimized_max_diff=float("nan"), optimized_top1=None,
                                  optimized_error=refused)
    try:
        with tempfile.TemporaryDirectory(prefix="quantext_ort_") as folder:
            optimized_path = os.path.join(folder, "optimized.onnx")
            optimized = _session(proto.SerializeToString(), ort.GraphOptimizationLevel.ORT_ENABLE_ALL, optimized_path)
            ops = Counter(n.op_type for n in onnx.load(optimized_path, load_external_data=False).graph.node)
        fast = optimized.run(names, feeds)
    except Exception as err:  # noqa: BLE001 (ORT's rewrites produce graphs it then refuses: FP8 QDQ into QGemm)
        return VerificationReport(**common, optimized_max_diff=float("nan"), optimized_top1=None,
                                  optimized_error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
    return VerificationReport(
        **common, optimized_max_diff=_max_diff(free, fast), optimized_top1=_top1(free, fast),
        int8_kernels={k: ops[k] for k in INT8_KERNELS if ops[k]},
        float_kernels={k: ops[k] for k in FLOAT_KERNELS if ops[k]})


def _session(model: bytes, level: Any, optimized_path: str | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3  # (saving an ORT_ENABLE_ALL graph warns that it is machine-specific)
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _max_diff(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    diffs = [np.abs(r.astype(np.float64) - g.astype(np.float64)).max() for r, g in zip(ref, got) if r.size]
    return float(max(diffs, default=0.0))


def _top1(ref: list[np.ndarray], got: list[np.ndarray]) -> float | None:
    agree = [r.argmax(1) == g.argmax(1) for r, g in zip(ref, got) if r.ndim >= 2 and r.shape[1] > 1]
    return float(np.concatenate([a.ravel() for a in agree]).mean()) if agree else None
