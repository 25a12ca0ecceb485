"""quantext: quantization-aware training for PyTorch.

Fake quantization with straight-through gradients for uniform, powers-of-two
and additive powers-of-two schemes (C++/CUDA ops under ``torch.ops.quantext``),
calibration, BN-folded QAT modules and ONNX export.

``quantext.export`` (and ``qx.export_onnx``) load the ONNX exporter, and with
it ``onnx``, on first use: ``import quantext`` alone does not import onnx.
"""

import importlib
from typing import Any

from . import calibration, nn
from ._ops import ops
from .calibration import HistogramObserver, aciq_ratio, compute_clip, histogram, magnitude_histogram
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .convert import convert
from .functional import fake_quant_uniform, set_value_checks, uniform_bounds
from .model_calibration import CalibrationReport, calibrate, calibration_report
from .prepare import Coverage, coverage, prepare_qat
from .qat import disable_quant, enable_quant, freeze_bn, quantizers
from .schemes import apot_decode_table, dequantize, dynamic_qparams, fake_quant, levels, quantize
from .spec import QConfig, QuantSpec, fp_spec

__version__ = "0.1.0"

_EXPORT_NAMES = ("export", "export_onnx")


def __getattr__(name: str) -> Any:
    """``export`` (the subpackage) and ``export_onnx``, imported on first access."""
    if name in _EXPORT_NAMES:
        export = importlib.import_module(".export", __name__)
        return export if name == "export" else export.export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORT_NAMES))


__all__ = ["ops", "fake_quant_uniform", "uniform_bounds", "set_value_checks", "__version__"]
__all__ += ["nn", "QuantSpec", "QConfig", "fp_spec", "prepare_qat", "calibrate", "freeze_bn", "convert",
            "enable_quant", "disable_quant", "quantizers", "coverage", "Coverage", "calibration_report",
            "CalibrationReport"]
__all__ += ["export", "export_onnx"]
__all__ += ["calibration", "histogram", "magnitude_histogram", "compute_clip", "aciq_ratio", "HistogramObserver"]
__all__ += ["fake_quant", "quantize", "dequantize", "dynamic_qparams", "levels", "apot_decode_table"]
__all__ += ["save_checkpoint", "load_checkpoint", "CheckpointError"]
