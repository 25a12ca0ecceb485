"""ONNX export of quantext models in QDQ form, verified in ONNX Runtime, and a
checker for TensorRT's Q/DQ placement rules. See docs/export.md."""

from .onnx_export import export_onnx
from .op_rules import LevelsArgs, level_table, register_levels_op
from .tensorrt_rules import check_tensorrt_rules
from .verify import VerificationError, verify_onnx

__all__ = ["export_onnx", "check_tensorrt_rules", "verify_onnx", "VerificationError", "register_levels_op",
           "LevelsArgs", "level_table"]
