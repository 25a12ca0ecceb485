"""``export_onnx``: torch.export -> torch.onnx (dynamo) with the quant ops kept
as private nodes -> lowering to QDQ / standard operators -> checks -> ONNX
Runtime verification."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Iterator, Sequence

import onnx
import torch
from torch import nn

from . import op_rules, qdq_rules
from .graph import describe
from .module_checks import check_modules
from .integer_matmul import integer_matmuls
from .onnxruntime_rules import check_onnxruntime_rules
from .record import write_record
from .verify import VerificationReport, verify_onnx

# The torch.export-based exporter translates at opset 18 and converts upwards;
# converting down fails (no Relu 14 -> 13 adapter), so 18 is the floor.
MIN_OPSET, MAX_OPSET = 18, 23


@contextlib.contextmanager
def _fresh_module_stacks(model: nn.Module) -> Iterator[None]:
    """Hides the ``nn_module_stack`` that ``torch.fx`` recorded in the nodes of
    ``model``'s GraphModules while it is exported. torch.export would keep it
    instead of recording its own, and for a ``qx.prepare_qat`` model it is the
    trace of the float model: the swapped modules' old classes, and nothing
    below them (every quantizer would be named after its layer)."""
    saved = [(node, node.meta.pop("nn_module_stack")) for gm in model.modules() if isinstance(gm, torch.fx.GraphModule)
             for node in gm.graph.nodes if "nn_module_stack" in node.meta]
    try:
        yield
    finally:
        for node, stack in saved:
            node.meta["nn_module_stack"] = stack


def _capture(model: nn.Module, args: tuple, dynamic_batch: bool) -> torch.export.ExportedProgram:
    if not dynamic_batch:
        return torch.export.export(model, args, strict=False)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors or any(a.dim() == 0 or a.shape[0] < 2 for a in tensors):
        raise ValueError("dynamic_batch=True needs tensor example inputs with a batch dimension of size >= 2 "
                         "(torch.export specializes sizes 0 and 1)")
    batch = torch.export.Dim("batch")
    shapes = tuple({0: batch} if isinstance(a, torch.Tensor) else None for a in args)
    try:
        return torch.export.export(model, args, dynamic_shapes=shapes, strict=False)
    except Exception as err:
        torch.export.export(model, args, strict=False)  # a static failure is not about the batch: let it raise
        raise ValueError("dynamic_batch=True: the model does not trace with a symbolic batch dimension (it "
                         "depends on the batch size, e.g. a reshape to a fixed size); fix the model or export "
                         f"with dynamic_batch=False. torch.export said: {str(err).splitlines()[0]}") from err


class ExportedPath(str):
    """The path :func:`export_onnx` wrote (a ``str``), with the
    :class:`~quantext.export.VerificationReport` of ``verify=True`` (else
    ``None``) as ``.verification``."""

    verification: VerificationReport | None

    def __new__(cls, path: str, verification: VerificationReport | None) -> "ExportedPath":
        self = super().__new__(cls, path)
        self.verification = verification
        return self


def _check(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            raise ValueError(f"{describe(node)} computes BatchNorm in the exported graph: fold it first "
                             "(qx.convert(model))")
    onnx.checker.check_model(model, full_check=True)


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[Any, ...],
    path: str | os.PathLike,
    opset: int = MIN_OPSET,
    verify: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = False,
    integer_matmul: bool = False,
) -> ExportedPath:
    """Exports a converted quantext model to ONNX in QDQ form.

    Uniform quantizers become ``QuantizeLinear -> DequantizeLinear`` (weights as
    int8 initializers read by ``DequantizeLinear``), below 8 bits with a
    ``Clip`` to the integer range between them; PoT/APoT quantizers become
    integer codes plus a codebook (weights) or a composition of standard
    operators (activations). See docs/export.md.

    Args:
        model: the model after ``qx.convert`` (BatchNorm folded, quantizers
            calibrated). It is traced in eval mode; its mode is restored.
        example_inputs: a tensor or a tuple of positional inputs.
        path: the ``.onnx`` file to write.
        opset: ONNX opset, 18 to 23 (21 and above allow 16-bit and per-group
            quantizers).
        verify: run the file in ONNX Runtime on ``example_inputs`` and compare
            with the PyTorch model (see :func:`quantext.export.verify_onnx`).
        input_names, output_names: names of the graph inputs and outputs.
        dynamic_batch: make dimension 0 of every input symbolic.
        integer_matmul: write the products of dynamically quantized inputs
            with int8 weights as ``MatMulInteger`` (ONNX Runtime's integer
            path for dynamic quantization; :mod:`quantext.export.integer_matmul`)
            instead of QDQ, which ONNX Runtime computes in float when the scale
            is computed at run time. TensorRT reads only QDQ.

    Returns:
        ``path`` as a string (an :class:`ExportedPath`) whose ``.verification``
        is the :class:`~quantext.export.VerificationReport` with ``verify=True``:
        the agreement of ONNX Runtime with all graph optimizations on, what a
        user runs, and the int8 kernels in its optimized graph.

    Raises:
        ValueError: un-folded BatchNorm, an uncalibrated quantizer, an integer
            range ONNX cannot hold at ``opset``, a batch dimension that cannot
            be dynamic.
        NotImplementedError: an op (module) without an export rule.
        VerificationError: ONNX Runtime disagrees with PyTorch.

    Warns:
        UserWarning: for each issue :func:`~quantext.export.check_onnxruntime_rules`
            finds (a bias ONNX Runtime's int8 rewrite would saturate); with
            ``verify=True``, when ONNX Runtime with all optimizations changes
            a top-1 class.
    """
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an int in [{MIN_OPSET}, {MAX_OPSET}] (the torch.export-based "
                         f"exporter cannot produce older opsets), got {opset!r}")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    path = os.fspath(path)
    check_modules(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with _fresh_module_stacks(model):
            program = _capture(model, args, dynamic_batch)
        op_rules.check_ops(program)
        exported = torch.onnx.export(program, args, dynamo=True, opset_version=opset, verbose=False,
                                     custom_translation_table=op_rules.translation_table(),
                                     input_names=input_names, output_names=output_names)
        proto = exported.model_proto
        record = qdq_rules.lower(proto)
        if integer_matmul:
            integer_matmuls(proto, record)
        write_record(proto, record)
        _check(proto)
        for issue in check_onnxruntime_rules(proto):
            warnings.warn(issue, stacklevel=2)
        onnx.save(proto, path)
        report = verify_onnx(path, model, args) if verify else None
    finally:
        for module, training in modes.items():
            module.training = training
    if report is not None and report.runtime != "onnxruntime":
        warnings.warn(f"ONNX Runtime cannot run this model ({report.optimized_error}); it was verified with "
                      f"{report.runtime} instead (docs/fp.md)", stacklevel=2)
    elif report is not None and report.optimized_error is not None:
        warnings.warn(f"ONNX Runtime with all graph optimizations (ORT_ENABLE_ALL) cannot load or run this model "
                      f"({report.optimized_error}); without optimizations it matches PyTorch: run it with "
                      "graph_optimization_level ORT_DISABLE_ALL or ORT_ENABLE_BASIC (docs/fp.md)", stacklevel=2)
    if report is not None and report.optimized_top1 is not None and report.optimized_top1 < 1:
        warnings.warn(f"ONNX Runtime with all graph optimizations (ORT_ENABLE_ALL) changes the top-1 class at "
                      f"{1 - report.optimized_top1:.0%} of the example outputs (largest difference "
                      f"{report.optimized_max_diff:.3g}; without optimizations it matches): its int8 rewrites "
                      "compute differently, see docs/export.md ('What ONNX Runtime does to each scheme')",
                      stacklevel=2)
    return ExportedPath(path, report)
