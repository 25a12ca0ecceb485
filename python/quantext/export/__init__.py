"""ONNX export of quantext models in QDQ form, verified in ONNX Runtime, and
checkers for TensorRT's Q/DQ placement rules and ONNX Runtime's int8 rewrites.
See docs/export.md."""

from .onnx_export import ExportedPath, export_onnx
from .onnxruntime_rules import check_onnxruntime_rules
from .op_rules import LevelsArgs, level_table, register_levels_op
from .tensorrt_rules import check_tensorrt_rules
from .verify import VerificationError, VerificationReport, verify_onnx

__all__ = ["export_onnx", "check_tensorrt_rules", "check_onnxruntime_rules", "verify_onnx", "VerificationError",
           "VerificationReport", "ExportedPath",
           "register_levels_op", "LevelsArgs", "level_table"]
