"""quantext: quantization-aware training for PyTorch.

Fake quantization with straight-through gradients for uniform, powers-of-two
and additive powers-of-two schemes (C++/CUDA ops under ``torch.ops.quantext``),
calibration, BN-folded QAT modules and ONNX export.
"""

from . import nn
from ._ops import ops
from .convert import convert
from .functional import fake_quant_uniform, set_value_checks, uniform_bounds
from .prepare import prepare_qat
from .qat import calibrate, disable_quant, enable_quant, freeze_bn, quantizers
from .spec import QConfig, QuantSpec
from . import export
from .export import export_onnx
from . import calibration
from .calibration import aciq_ratio, compute_clip, histogram, magnitude_histogram
from .histogram_observer import HistogramObserver
from .schemes import apot_decode_table, dequantize, fake_quant, levels, quantize
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__version__ = "0.1.0"

__all__ = ["ops", "fake_quant_uniform", "uniform_bounds", "set_value_checks", "__version__"]
__all__ += ["nn", "QuantSpec", "QConfig", "prepare_qat", "calibrate", "freeze_bn", "convert", "enable_quant",
            "disable_quant", "quantizers"]
__all__ += ["export", "export_onnx"]
__all__ += ["calibration", "histogram", "magnitude_histogram", "compute_clip", "aciq_ratio", "HistogramObserver"]
__all__ += ["fake_quant", "quantize", "dequantize", "levels", "apot_decode_table"]
__all__ += ["save_checkpoint", "load_checkpoint", "CheckpointError"]
