"""Every public function's bad inputs in one table: the error type, and a
message that names the argument (and its value)."""

from __future__ import annotations

import math
import os
import tempfile

import pytest
import torch
from torch import nn

import quantext as qx
from quantext import QConfig, QuantSpec
from quantext.nn import Quantizer, QuantConv2d, QuantConvBn2d, param_shape
from quantext.calibration import MinMaxObserver

ops = torch.ops.quantext
NAN, INF = math.nan, math.inf


def x2d() -> torch.Tensor:
    return torch.randn(4, 3)


def s1(value: float = 0.1, **kw) -> torch.Tensor:
    return torch.tensor([value], **kw)


def z1(value: int = 0, **kw) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.int32, **kw)


def fq(x=None, scale=None, zero_point=None, qmin=0, qmax=15, axis=None, group_size=0, grad_factor=1.0):
    """qx.fake_quant_uniform with valid defaults for what is not given."""
    return qx.fake_quant_uniform(x2d() if x is None else x, s1() if scale is None else scale,
                                 z1() if zero_point is None else zero_point, qmin, qmax, axis, group_size, grad_factor)


def fql(x=None, alpha=None, scheme="pot", bits=4, signed=True, k=2, rounding="nearest", axis=None, grad_factor=1.0):
    """qx.functional.fake_quant_levels with valid defaults for what is not given."""
    return qx.functional.fake_quant_levels(x2d() if x is None else x, torch.tensor(1.0) if alpha is None else alpha,
                                           scheme, bits, signed, k, rounding, axis, grad_factor)


def fq_backward(grad):
    x = x2d()
    return ops.fake_quant_uniform_backward(grad, x, s1(), z1(), 0, 15, None, 0, 1.0, True)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class Untraceable(Net):
    def forward(self, x):
        y = self.features(x)
        if y.sum() > 0:  # data-dependent control flow
            y = -y
        return self.head(y.mean((2, 3)))


INPUT = (2, 3, 8, 8)


def prepared(model: nn.Module | None = None) -> nn.Module:
    return qx.prepare_qat(model or Net(), QConfig(), example_inputs=(torch.randn(INPUT),))


def calibrated() -> nn.Module:
    return qx.calibrate(prepared(), [torch.randn(INPUT)], progress=False)


def quantizer(spec: QuantSpec | None = None, name: str = "act", **kw) -> Quantizer:
    q = Quantizer(spec or QuantSpec(), **kw)
    q.name = name
    return q


def observed(spec: QuantSpec) -> Quantizer:
    q = quantizer(spec).observe(True).disable()
    q(torch.randn(5, 4))
    return q


def export(model: nn.Module, **kw) -> str:
    path = os.path.join(tempfile.gettempdir(), f"quantext_bad_input_{os.getpid()}.onnx")
    return qx.export_onnx(model, torch.randn(INPUT), path, **kw)


def case(fn, exc, match, id):
    return pytest.param(fn, exc, match, id=id)


def bad_scale_cases():
    for value, shown in ((0.0, "0"), (-1.0, "-1"), (NAN, "nan"), (INF, "inf"), (-INF, "-inf")):
        yield case(lambda v=value: fq(scale=s1(v)), ValueError,
                   f"quantext.fake_quant_uniform: scale must be positive and finite, got {shown}", f"scale={shown}")


CASES = [
    # ---------------------------------------------------------------- fake_quant_uniform: dtypes
    case(lambda: fq(x=torch.ones(3, dtype=torch.int32)), TypeError,
         "input must be a floating point tensor, got dtype Int", "x int32"),
    case(lambda: fq(scale=s1(dtype=torch.float16)), TypeError,
         r"scale must be float32 \(or float64 with a float64 input.*\), got Half", "scale float16"),
    case(lambda: fq(scale=s1(dtype=torch.float64)), TypeError, "scale must be float32 .*got Double with input Float",
         "scale float64 with float32 x"),
    case(lambda: fq(zero_point=torch.tensor([0], dtype=torch.bool)), TypeError,
         "zero_point must be an int32, int64 or floating tensor, got Bool", "zero_point bool"),
    # devices (meta stands in for a second device)
    case(lambda: fq(scale=s1(device="meta")), ValueError,
         "quantext.fake_quant_uniform: scale is on meta but the input is on cpu", "scale on meta"),
    case(lambda: fq(zero_point=z1(device="meta")), ValueError, "zero_point is on meta but the input is on cpu",
         "zero_point on meta"),
    case(lambda: fq_backward(torch.ones(4, 3, device="meta")), ValueError,
         "fake_quant_uniform_backward: grad is on meta but the input is on cpu", "grad on meta"),
    # values
    *bad_scale_cases(),
    case(lambda: fq(scale=torch.tensor([0.1, NAN, 0.2]), zero_point=torch.zeros(3, dtype=torch.int32), axis=1),
         ValueError, "scale must be positive and finite, got nan", "per-channel scale with a NaN"),
    case(lambda: fq(zero_point=z1(16)), ValueError, r"zero_point must lie in \[qmin, qmax\] = \[0, 15\], got 16",
         "zero_point above qmax"),
    case(lambda: fq(zero_point=torch.tensor([NAN])), ValueError, r"zero_point must lie in .*got nan",
         "zero_point NaN"),
    case(lambda: fq(qmin=5, qmax=4, zero_point=z1(5)), ValueError, "qmin must be <= qmax, got qmin=5, qmax=4",
         "qmin > qmax"),
    case(lambda: fq(qmax=65536), ValueError, r"the integer range \[0, 65536\] is wider than 16 bits", "17-bit range"),
    case(lambda: fq(grad_factor=NAN), ValueError, "grad_factor must be finite, got nan", "grad_factor NaN"),
    case(lambda: fq(qmin=0.5), TypeError, "qmin must be an int, got 0.5", "qmin float"),
    case(lambda: fq(qmax="15"), TypeError, "qmax must be an int, got '15'", "qmax str"),
    case(lambda: fq(axis=1.0, scale=torch.ones(3), zero_point=torch.zeros(3, dtype=torch.int32)), TypeError,
         "axis must be an int, got 1.0", "axis float"),
    case(lambda: fq(group_size=1.5), TypeError, "group_size must be an int, got 1.5", "group_size float"),
    # shapes
    case(lambda: fq(scale=torch.ones(2), zero_point=torch.zeros(2, dtype=torch.int32)), ValueError,
         r"per-tensor scale must have one element, got shape \[2\]", "per-tensor scale of 2"),
    case(lambda: fq(scale=torch.ones(4), zero_point=torch.zeros(4, dtype=torch.int32), axis=1), ValueError,
         r"per-channel scale must have shape \[3\] \(size of axis 1\), got \[4\]", "per-channel length"),
    case(lambda: fq(zero_point=torch.zeros(2, dtype=torch.int32)), ValueError,
         r"zero_point shape \[2\] does not match scale shape \[1\]", "zero_point shape"),
    case(lambda: fq(axis=2, scale=torch.ones(3), zero_point=torch.zeros(3, dtype=torch.int32)), ValueError,
         "axis=2 is out of range for an input with 2 dimensions", "axis out of range"),
    case(lambda: fq(x=torch.tensor(1.0), axis=0), ValueError, "axis=0 given for a 0-dimensional input", "axis of 0-d"),
    case(lambda: fq(group_size=2), ValueError, "group_size=2 needs an axis", "group without axis"),
    case(lambda: fq(group_size=-1, axis=1, scale=torch.ones(3), zero_point=torch.zeros(3, dtype=torch.int32)),
         ValueError, "group_size must be >= 0, got -1", "negative group_size"),
    case(lambda: fq(group_size=2, axis=1, scale=torch.ones(4, 1), zero_point=torch.zeros(4, 1, dtype=torch.int32)),
         ValueError, "group_size=2 does not divide size 3 of axis 1", "group does not divide"),
    case(lambda: fq(x=torch.randn(4, 6), group_size=2, axis=1, scale=torch.ones(4, 2),
                    zero_point=torch.zeros(4, 2, dtype=torch.int32)), ValueError,
         r"per-group scale must have shape \[4, 3\] .*got \[4, 2\]", "per-group shape"),
    case(lambda: fq_backward(torch.ones(3)), ValueError, r"grad shape \[3\] does not match input shape \[4, 3\]",
         "grad shape"),
    # ---------------------------------------------------------------- uniform_bounds
    case(lambda: qx.uniform_bounds(1, True), ValueError, r"bits must be in \[2, 16\], got 1", "bounds bits=1"),
    case(lambda: qx.uniform_bounds(17, False), ValueError, r"bits must be in \[2, 16\], got 17", "bounds bits=17"),
    case(lambda: qx.uniform_bounds(8.5, True), TypeError, "bits must be an int, got 8.5", "bounds bits float"),
    case(lambda: qx.uniform_bounds(8, "yes"), TypeError, "signed must be a bool, got 'yes'", "bounds signed str"),
    # ---------------------------------------------------------------- levels (PoT / APoT) and codes
    case(lambda: qx.levels("log", 4), ValueError, "quantext.levels: scheme must be 'pot' or 'apot', got 'log'",
         "levels scheme"),
    case(lambda: qx.levels("pot", 9), ValueError, r"bits must be in \[2, 8\] for a signed grid, got 9", "levels bits 9"),
    case(lambda: qx.levels("pot", 0, signed=False), ValueError, r"bits must be in \[1, 8\] for an unsigned grid, got 0",
         "levels unsigned bits 0"),
    case(lambda: qx.levels("pot", 2.5), TypeError, "bits must be an int, got 2.5", "levels bits float"),
    case(lambda: qx.levels("apot", 4, k=0), ValueError, r"k must be in \[1, 8\], got 0", "levels k 0"),
    case(lambda: qx.levels("apot", 4, k=1.5), TypeError, "k must be an int, got 1.5", "levels k float"),
    case(lambda: qx.levels("apot", 8, k=6), ValueError, "k=6 with 7 magnitude bits .*use k <= 5", "levels k too big"),
    case(lambda: qx.levels("apot", 4, signed="no"), TypeError, "signed must be a bool, got 'no'", "levels signed str"),
    case(lambda: qx.apot_decode_table(2.5), TypeError, "bits must be an int, got 2.5", "decode table bits float"),
    case(lambda: fql(alpha=torch.tensor(NAN)), ValueError,
         "quantext.fake_quant_levels: alpha must be positive and finite, got nan", "alpha nan"),
    case(lambda: fql(alpha=torch.tensor(-2.0)), ValueError, "alpha must be positive and finite, got -2", "alpha < 0"),
    case(lambda: fql(alpha=torch.tensor(1.0, device="meta")), ValueError,
         "fake_quant_levels: alpha is on meta but the input is on cpu", "alpha on meta"),
    case(lambda: fql(alpha=torch.tensor(1.0, dtype=torch.float16)), TypeError, "alpha must be float32 .*got Half",
         "alpha float16"),
    case(lambda: fql(x=torch.ones(3, dtype=torch.int32)), TypeError,
         "input must be a floating point tensor, got dtype Int", "levels x int"),
    case(lambda: fql(rounding="floor"), ValueError, "rounding must be 'nearest' or 'log', got 'floor'",
         "levels rounding"),
    case(lambda: fql(scheme="apot", rounding="log"), ValueError,
         "rounding='log' is only defined for scheme 'pot', got 'apot'", "levels log rounding apot"),
    case(lambda: fql(alpha=torch.ones(4), axis=1), ValueError,
         r"per-channel alpha must have shape \[3\] \(size of axis 1\), got \[4\]", "alpha per-channel shape"),
    case(lambda: fql(grad_factor=INF), ValueError, "grad_factor must be finite, got inf", "levels grad_factor inf"),
    case(lambda: qx.fake_quant(x2d(), QuantSpec(scheme="pot", bits=4)), ValueError,
         "alpha is required for scheme='pot'", "fake_quant without alpha"),
    case(lambda: qx.fake_quant(x2d(), QuantSpec(scheme="pot", bits=4), scale=1.0, alpha=1.0), ValueError,
         "scale is not a parameter of scheme='pot'", "fake_quant scale on pot"),
    case(lambda: qx.fake_quant(x2d(), QuantSpec(scheme="pot", bits=4), alpha="1"), TypeError,
         "alpha must be a tensor or a number, got str", "fake_quant alpha str"),
    case(lambda: qx.fake_quant(x2d(), "int8", scale=0.1), TypeError, "spec must be a QuantSpec, got str",
         "fake_quant spec str"),
    case(lambda: qx.fake_quant(x2d(), QuantSpec(symmetric=False, signed=False), scale=0.1), ValueError,
         "zero_point is required for an asymmetric spec", "fake_quant asymmetric without zero_point"),
    case(lambda: qx.fake_quant(x2d(), QuantSpec(symmetric=False, signed=False), scale=0.1, zero_point=3.7),
         TypeError, "zero_point must be an int, got 3.7", "fake_quant zero_point float"),
    case(lambda: qx.quantize(x2d(), QuantSpec(), scale=-1.0), ValueError,
         "quantext.quantize_uniform: scale must be positive and finite, got -1", "quantize scale"),
    case(lambda: qx.quantize(x2d(), QuantSpec(), scale=torch.tensor(0.1, device="meta")), ValueError,
         "quantize_uniform: scale is on meta but the input is on cpu", "quantize scale on meta"),
    case(lambda: qx.dequantize(x2d(), QuantSpec(), scale=0.1), TypeError,
         r"dequantize_uniform: codes must be an integer tensor \(.*\), got dtype Float", "dequantize float codes"),
    case(lambda: qx.dequantize(torch.tensor([9], dtype=torch.int8), QuantSpec(scheme="pot", bits=4), alpha=1.0),
         ValueError, r"dequantize_levels: codes must lie in \[-7, 7\] for 4-bit signed levels, got 9",
         "dequantize code out of range"),
    case(lambda: ops.dequantize_levels(torch.tensor([2**31 - 1], dtype=torch.int32), torch.tensor(1.0), "apot", 4,
                                       True, 2, None),
         ValueError, r"codes must lie in \[-7, 7\] for 4-bit signed levels, got 2147483647$",
         "integer code printed exactly"),
    case(lambda: qx.dequantize(torch.tensor([9], dtype=torch.int8), QuantSpec(symmetric=False, signed=False),
                               scale=1.0, zero_point=300), ValueError,
         r"zero_point must lie in \[qmin, qmax\] = \[-128, 127\], got 300", "dequantize zero_point range"),
    case(lambda: qx.dequantize(torch.zeros(3, dtype=torch.int8), QuantSpec(scheme="apot", bits=4),
                               alpha=torch.tensor(1.0, device="meta")), ValueError,
         "dequantize_levels: alpha is on meta but the input is on cpu", "dequantize alpha on meta"),
    # ---------------------------------------------------------------- QuantSpec / QConfig
    case(lambda: QuantSpec(scheme="log"), ValueError, "scheme must be one of .*got 'log'", "spec scheme"),
    case(lambda: QuantSpec(granularity="row"), ValueError, "granularity must be one of .*got 'row'", "spec granularity"),
    case(lambda: QuantSpec(calibration="kl"), ValueError, "calibration must be one of .*got 'kl'", "spec calibration"),
    case(lambda: QuantSpec(scheme="pot", rounding="floor"), ValueError, "rounding must be one of .*got 'floor'",
         "spec rounding"),
    case(lambda: QuantSpec(bits=17), ValueError, r"bits=17 is out of range \[2, 16\] for scheme='uniform'",
         "spec bits 17"),
    case(lambda: QuantSpec(scheme="pot", bits=9), ValueError, r"bits=9 is out of range \[2, 8\] for scheme='pot'",
         "spec pot bits 9"),
    case(lambda: QuantSpec(bits=8.0), TypeError, "bits must be an int, got 8.0", "spec bits float"),
    case(lambda: QuantSpec(granularity="channel", axis=1.5), TypeError, "axis must be an int, got 1.5",
         "spec axis float"),
    case(lambda: QuantSpec(scheme="apot", k=1.5), TypeError, "k must be an int, got 1.5", "spec k float"),
    case(lambda: QuantSpec(granularity="group", group_size=2.5), TypeError, "group_size must be an int, got 2.5",
         "spec group_size float"),
    case(lambda: QuantSpec(signed="no"), TypeError, "signed must be a bool, got 'no'", "spec signed str"),
    case(lambda: QuantSpec(learnable=1), TypeError, "learnable must be a bool, got 1", "spec learnable int"),
    case(lambda: QuantSpec(percentile="99"), TypeError, "percentile must be a number, got '99'", "spec percentile str"),
    case(lambda: QuantSpec(percentile=0), ValueError, r"percentile must be in \(0, 100\], got 0", "spec percentile 0"),
    case(lambda: QuantSpec(percentile=NAN), ValueError, r"percentile must be in \(0, 100\], got nan",
         "spec percentile nan"),
    case(lambda: QuantSpec(scheme="pot", symmetric=False), ValueError,
         "symmetric=False is only defined for scheme='uniform', got scheme='pot'", "spec asymmetric pot"),
    case(lambda: QuantSpec(signed=False, narrow_range=True), ValueError, "narrow_range=True needs .*signed=True",
         "spec narrow unsigned"),
    case(lambda: QuantSpec(granularity="group"), ValueError, "granularity='group' needs group_size >= 1, got None",
         "spec group without size"),
    case(lambda: QuantSpec(granularity="channel", group_size=4), ValueError,
         "group_size=4 is only used with granularity='group', got granularity='channel'", "spec group_size channel"),
    case(lambda: QuantSpec(scheme="apot", k=0), ValueError, "k must be >= 1, got 0", "spec k 0"),
    case(lambda: QuantSpec(scheme="apot", rounding="log"), ValueError,
         "rounding='log' is only defined for scheme='pot', got 'apot'", "spec log rounding apot"),
    case(lambda: QuantSpec(weight_norm=True), ValueError, "weight_norm=True .*use scheme='pot' or 'apot'",
         "spec weight_norm uniform"),
    case(lambda: QuantSpec().replace(bits=1), ValueError, r"bits=1 is out of range", "spec replace"),
    case(lambda: QConfig(weight="int8"), TypeError, "QConfig.weight must be a QuantSpec or None, got str",
         "qconfig weight str"),
    case(lambda: QConfig(activation=QuantSpec(granularity="channel")), ValueError,
         "QConfig.activation must be per tensor", "qconfig per-channel activation"),
    # ---------------------------------------------------------------- Quantizer
    case(lambda: Quantizer("int8"), TypeError, "spec must be a QuantSpec, got str", "quantizer spec str"),
    case(lambda: Quantizer(QuantSpec(), role="bias"), ValueError, "role must be 'weight' or 'activation', got 'bias'",
         "quantizer role"),
    case(lambda: Quantizer(QuantSpec(), min_scale=0.0), ValueError, "min_scale must be positive and finite, got 0",
         "quantizer min_scale 0"),
    case(lambda: Quantizer(QuantSpec(), min_scale=NAN), ValueError, "min_scale must be positive and finite, got nan",
         "quantizer min_scale nan"),
    case(lambda: Quantizer(QuantSpec(granularity="group", group_size=2, calibration="percentile")), ValueError,
         "per-group quantizers .*use calibration='max' or 'mse', got 'percentile'", "quantizer group percentile"),
    case(lambda: quantizer()(x2d()), RuntimeError, "Quantizer 'act' is used .*but was never calibrated",
         "quantizer before calibration"),
    case(lambda: quantizer().compute_qparams(), RuntimeError, "Quantizer 'act': compute_qparams needs observed data",
         "compute_qparams before observing"),
    case(lambda: quantizer().set_qparams(scale=NAN), ValueError, "Quantizer 'act': scale must be positive and finite",
         "set_qparams scale nan"),
    case(lambda: quantizer().set_qparams(scale=0.0), ValueError, "scale must be positive and finite, got 0",
         "set_qparams scale 0"),
    case(lambda: quantizer().set_qparams(), ValueError, "set_qparams needs scale for scheme='uniform'",
         "set_qparams without scale"),
    case(lambda: quantizer().set_qparams(scale=1.0, alpha=1.0), ValueError,
         "alpha is not a parameter of scheme='uniform'", "set_qparams alpha on uniform"),
    case(lambda: quantizer(QuantSpec(signed=False, symmetric=False)).set_qparams(scale=1.0, zero_point=300),
         ValueError, r"zero_point must lie in \[0, 255\], got 300", "set_qparams zero_point range"),
    case(lambda: quantizer(QuantSpec(signed=False, symmetric=False)).set_qparams(scale=1.0, zero_point=3.7),
         ValueError, "zero_point must hold integers, got 3.7", "set_qparams zero_point fraction"),
    case(lambda: quantizer().set_qparams(scale=1.0, zero_point=3), ValueError,
         "a symmetric spec needs zero_point 0, got 3", "set_qparams symmetric zero_point"),
    case(lambda: quantizer().set_qparams(scale=torch.ones(3)), ValueError, r"scale has shape \(\), got shape \(3,\)",
         "set_qparams scale shape"),
    case(lambda: quantizer(QuantSpec(scheme="pot", bits=4)).set_qparams(alpha=0.0), ValueError,
         "Quantizer 'act': alpha must be positive and finite, got 0", "set_qparams alpha 0"),
    case(lambda: quantizer(QuantSpec(scheme="pot", bits=4)).set_qparams(scale=1.0), ValueError,
         "scale is not a parameter of scheme='pot'", "set_qparams scale on pot"),
    case(lambda: quantizer(QuantSpec(scheme="pot", bits=4)).bounds, ValueError,
         "bounds are defined for scheme='uniform', got 'pot'", "bounds of pot"),
    case(lambda: observed(QuantSpec(granularity="channel"))(torch.randn(6, 4)), ValueError,
         r"a tensor of shape \(6, 4\) needs parameters of shape \(6,\), but this quantizer holds shape \(5,\)",
         "quantizer input shape changed"),
    case(lambda: param_shape(QuantSpec(granularity="channel", axis=3), (2, 2)), ValueError,
         r"axis=3 is out of range for a tensor of shape \(2, 2\)", "param_shape axis"),
    case(lambda: QuantConv2d.from_float(nn.Linear(2, 2), QConfig()), TypeError,
         "expects an nn.Conv2d, got Linear", "QuantConv2d.from_float"),
    case(lambda: QuantConvBn2d.from_float(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), QConfig(),
                                          bn_stats="batch"), ValueError,
         r"bn_stats must be one of \('exact', 'approx'\), got 'batch'", "QuantConvBn2d bn_stats"),
    # ---------------------------------------------------------------- prepare / calibrate / convert / export
    case(lambda: qx.prepare_qat("model", QConfig()), TypeError, "model must be an nn.Module, got str",
         "prepare model str"),
    case(lambda: qx.prepare_qat(Net(), "w8a8"), TypeError, "qconfig must be a quantext.QConfig, got str",
         "prepare qconfig str"),
    case(lambda: qx.prepare_qat(Net(), QConfig(), first_last_bits=2.5), ValueError,
         "first_last_bits must be an int, 'float' or None, got 2.5", "prepare first_last_bits"),
    case(lambda: qx.prepare_qat(Net(), QConfig(), skip=[3]), TypeError,
         r"skip entries must be module names or types, got \[3\]", "prepare skip entry"),
    case(lambda: qx.prepare_qat(Net(), QConfig(), freeze_bn_after=-1), ValueError,
         "freeze_bn_after must be None or an int >= 0, got -1", "prepare freeze_bn_after"),
    case(lambda: qx.calibrate(prepared(), [torch.randn(INPUT)], num_batches=0), ValueError,
         "num_batches must be >= 1 or None, got 0", "calibrate num_batches"),
    case(lambda: qx.calibrate(prepared(), [torch.randn(INPUT)], method="kl", progress=False), ValueError,
         "calibration must be one of .*got 'kl'", "calibrate method"),
    case(lambda: qx.calibrate(Net(), [torch.randn(INPUT)], progress=False), ValueError,
         "calibrate: the model has no quantext Quantizer", "calibrate float model"),
    case(lambda: qx.calibrate(prepared(), [], progress=False), RuntimeError,
         "these quantizers saw no data .*'features.0.input_quantizer'", "calibrate without batches"),
    case(lambda: qx.convert("model"), TypeError, "model must be an nn.Module, got str", "convert str"),
    case(lambda: export(qx.convert(prepared())), ValueError, "quantizer '.*' was never calibrated",
         "export uncalibrated"),
    case(lambda: export(calibrated()), ValueError, "module 'features.0' .* still computes BatchNorm",
         "export before convert"),
    case(lambda: export(qx.convert(calibrated()), opset=13), ValueError, r"opset must be an int in \[18, 23\].*got 13",
         "export opset"),
    # ---------------------------------------------------------------- histograms and range ops
    case(lambda: qx.histogram(x2d(), 0, -1, 1), ValueError, r"quantext.histogram: bins must be in \[1, \d+\], got 0",
         "histogram bins 0"),
    case(lambda: qx.histogram(x2d(), 2.5, -1, 1), TypeError, "bins must be an int, got 2.5", "histogram bins float"),
    case(lambda: qx.histogram(x2d(), 8, NAN, 1), ValueError, "hi - lo must be positive and finite, got nan",
         "histogram lo nan"),
    case(lambda: qx.histogram(x2d(), 8, 1, 1), ValueError, "hi - lo must be positive and finite, got 0",
         "histogram empty range"),
    case(lambda: qx.histogram(torch.ones(3, dtype=torch.long), 8, 0, 1), TypeError,
         "input must be a floating point tensor, got dtype Long", "histogram int input"),
    case(lambda: qx.histogram(x2d(), 8, torch.tensor(0.0, device="meta"), 1), ValueError,
         "quantext.histogram: lo is on meta but the input is on cpu", "histogram lo on meta"),
    case(lambda: qx.histogram(x2d(), 8, torch.tensor(0), 1), TypeError, "lo must be a floating tensor, got Long",
         "histogram lo int"),
    case(lambda: qx.histogram(x2d(), 8, torch.zeros(4), torch.ones(4), axis=1), ValueError,
         r"per-channel hi must have shape \[3\] \(size of axis 1\), got \[4\]", "histogram per-channel range"),
    case(lambda: qx.magnitude_histogram(x2d(), 8, -1.0), ValueError, "amax must be positive and finite, got -1",
         "magnitude_histogram amax"),
    case(lambda: qx.magnitude_histogram(x2d(), 8, torch.tensor(1.0, device="meta")), ValueError,
         "amax is on meta but the input is on cpu", "magnitude_histogram amax on meta"),
    case(lambda: ops.calib_percentile(torch.ones(8), torch.tensor(0.0), torch.tensor(1.0), 1.5), ValueError,
         r"q must be in \[0, 1\], got 1.5", "calib_percentile q"),
    case(lambda: ops.calib_entropy(torch.ones(256), torch.tensor(1.0), 128, 128, "mxnet"), ValueError,
         "variant must be 'tensorrt' or 'ppq', got 'mxnet'", "calib_entropy variant"),
    case(lambda: ops.calib_mse(torch.tensor([1.0, NAN]), torch.tensor(1.0), torch.tensor([0.0, 1.0])), ValueError,
         "hist counts must be finite and non-negative", "calib_mse NaN count"),
    case(lambda: ops.calib_mse(torch.ones(8), torch.tensor(1.0, device="meta"), torch.tensor([0.0, 1.0])),
         ValueError, "calib_mse: amax is on meta but hist is on cpu", "calib_mse amax on meta"),
    case(lambda: ops.calib_mse_affine(torch.ones(8), torch.tensor(0.0), torch.tensor(1.0), 0, 0), ValueError,
         "got qmin=0, qmax=0", "calib_mse_affine range"),
    case(lambda: qx.aciq_ratio(0), ValueError, r"bits must be in \[1, 16\], got 0", "aciq bits 0"),
    case(lambda: qx.aciq_ratio(4.5), TypeError, "bits must be an int, got 4.5", "aciq bits float"),
    case(lambda: qx.aciq_ratio(4, "cauchy"), ValueError, "prior must be 'gaussian' or 'laplace', got 'cauchy'",
         "aciq prior"),
    case(lambda: qx.compute_clip(x2d(), "kl"), ValueError, "calibration must be one of .*got 'kl'",
         "compute_clip method"),
    case(lambda: qx.compute_clip(torch.empty(0, 3)), ValueError, r"data is empty \(shape \(0, 3\)\)",
         "compute_clip empty"),
    case(lambda: qx.compute_clip([1.0, 2.0]), TypeError, "data must be a tensor or a HistogramObserver, got list",
         "compute_clip list"),
    case(lambda: qx.compute_clip(torch.full((5,), NAN), "percentile"), ValueError, "no finite values were observed",
         "compute_clip all NaN"),
    case(lambda: qx.compute_clip(x2d(), spec="int8"), TypeError, "spec must be a QuantSpec, got str",
         "compute_clip spec str"),
    case(lambda: qx.compute_clip(x2d(), "entropy", kl_variant="mxnet"), ValueError,
         r"kl_variant must be one of \('tensorrt', 'ppq'\), got 'mxnet'", "compute_clip kl_variant"),
    case(lambda: qx.compute_clip(x2d(), "aciq", aciq_prior="cauchy"), ValueError,
         "aciq_prior must be one of .*got 'cauchy'", "compute_clip aciq_prior"),
    case(lambda: qx.compute_clip(x2d(), "aciq", aciq_sigma="tengine"), ValueError,
         "aciq_sigma='tengine' .* needs aciq_prior='gaussian', got 'laplace'", "compute_clip tengine laplace"),
    case(lambda: qx.compute_clip(x2d(), bins=0), ValueError, "bins must be a positive int, got 0",
         "compute_clip bins"),
    case(lambda: qx.HistogramObserver(kl_start_bin=0), ValueError, "kl_start_bin must be a positive int, got 0",
         "observer kl_start_bin"),
    case(lambda: qx.HistogramObserver().compute_range(QuantSpec()), RuntimeError,
         "compute_range called before any data was observed", "observer before data"),
    case(lambda: [o(t) for o in [qx.HistogramObserver(axis=0)] for t in (torch.randn(3, 2), torch.randn(5, 2))],
         ValueError, r"observed 3 channels before, got 5 now \(axis=0\)", "observer channel count"),
    case(lambda: MinMaxObserver(averaging_constant=0.0), ValueError, r"averaging_constant must be in \(0, 1\], got 0",
         "minmax averaging_constant"),
    case(lambda: MinMaxObserver(axis=0)(torch.tensor([[1.0], [NAN]])), ValueError,
         "a channel has no finite values", "minmax all-NaN channel"),
]


@pytest.mark.parametrize("fn,exc,match", CASES)
def test_bad_input(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("moved,match", [("x", "scale is on cpu but the input is on cuda:0"),
                                         ("scale", "scale is on cuda:0 but the input is on cpu"),
                                         ("zero_point", "zero_point is on cuda:0 but the input is on cpu")])
def test_cuda_device_mismatch(moved, match):
    args = {"x": x2d(), "scale": s1(), "zero_point": z1()}
    args[moved] = args[moved].cuda()
    with pytest.raises(ValueError, match=match):
        fq(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("call,match", [
    (lambda: fql(alpha=torch.tensor(1.0, device="cuda")), "alpha is on cuda:0 but the input is on cpu"),
    (lambda: fql(x=x2d().cuda()), "alpha is on cpu but the input is on cuda:0"),
    (lambda: ops.quantize_levels(x2d(), torch.tensor(1.0, device="cuda"), "apot", 4, True, 2, "nearest", None),
     "alpha is on cuda:0 but the input is on cpu"),
    (lambda: ops.quantize_uniform(x2d(), s1(device="cuda"), z1(), 0, 15, None, 0),
     "scale is on cuda:0 but the input is on cpu"),
    (lambda: fq_backward(torch.ones(4, 3, device="cuda")), "grad is on cuda:0 but the input is on cpu"),
    (lambda: qx.histogram(x2d(), 8, torch.tensor(-1.0, device="cuda"), torch.tensor(1.0)), "is on cuda:0"),
])
def test_cuda_device_mismatch_other_ops(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_untraceable_model_falls_back_with_a_warning():
    with pytest.warns(UserWarning, match="torch.fx could not trace Untraceable .*falling back to module swapping"):
        model = qx.prepare_qat(Untraceable(), QConfig())
    assert isinstance(model.features[0], QuantConvBn2d) and len(dict(qx.quantizers(model))) > 0


def test_nothing_to_quantize_warns():
    with pytest.warns(UserWarning, match="nothing in ReLU was quantized"):
        qx.prepare_qat(nn.ReLU(), QConfig())


def test_a_single_skip_name_is_one_name():
    model = qx.prepare_qat(Net(), QConfig(), example_inputs=(torch.randn(INPUT),), skip="head")
    assert type(model.head) is nn.Linear


@pytest.mark.parametrize("n", [3, 5000], ids=["scanned", "reduced"])
def test_value_checks_scan_and_reduction_agree(n):
    """Small CPU tensors are scanned in place, large ones reduced to their extremes: the rules and
    the reported value (the smallest if it breaks the rule, else the largest) are the same."""
    codes = torch.zeros(n, dtype=torch.int64)
    codes[n - 1], codes[1] = 9, -8
    decode = lambda: ops.dequantize_levels(codes, torch.tensor(1.0), "apot", 4, True, 2, None)  # noqa: E731
    with pytest.raises(ValueError, match=r"codes must lie in \[-7, 7\] for 4-bit signed levels, got -8$"):
        decode()
    codes[1] = 0
    with pytest.raises(ValueError, match=r"got 9$"):
        decode()
    codes[n - 1] = 2**40 + 1
    with pytest.raises(ValueError, match=f"got {2**40 + 1}$"):
        decode()
    codes[n - 1] = 7
    assert decode().shape == (n,)

    x = torch.randn(2, n)
    zero = torch.zeros(n, dtype=torch.int32)
    for bad, shown in ((0.0, "0"), (NAN, "nan"), (-INF, "-inf"), (INF, "inf")):
        scale = torch.full((2 * n,), 0.1)[::2]  # strided
        scale[n - 1] = bad
        with pytest.raises(ValueError, match=f"scale must be positive and finite, got {shown}$"):
            qx.fake_quant_uniform(x, scale, zero, 0, 15, axis=1)
    scale = torch.full((n,), 0.1)
    # Floating zero points are rounded half to even first: 15.5 -> 16.
    assert qx.fake_quant_uniform(x, scale, torch.full((n,), 14.5), 0, 15, axis=1).shape == x.shape
    with pytest.raises(ValueError, match=r"zero_point must lie in \[qmin, qmax\] = \[0, 15\], got 15.5$"):
        qx.fake_quant_uniform(x, scale, torch.full((n,), 15.5), 0, 15, axis=1)
    alpha = torch.full((n,), 2.0, dtype=torch.float64)
    alpha[0] = -1e-300
    with pytest.raises(ValueError, match="alpha must be positive and finite, got -1e-300$"):
        qx.functional.fake_quant_levels(x.double(), alpha, "apot", 4, axis=1)
