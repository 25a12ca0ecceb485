"""Integer codes: quantize_* / dequantize_* against ATen and the brute-force
level reference, and dequantize(quantize(x)) == fake_quant(x) bit for bit."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.library import opcheck

import quantext as qx
import schemes_reference as ref
from quantext.spec import QuantSpec

ops = torch.ops.quantext


def sample(shape, seed, dtype=torch.float32, spread=1.5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * spread).to(dtype)


@pytest.mark.parametrize("qmin,qmax,dtype", [(-128, 127, torch.int8), (-8, 7, torch.int8), (0, 255, torch.uint8),
                                             (0, 15, torch.int8), (-129, 127, torch.int16), (0, 256, torch.int16),
                                             (-32768, 32767, torch.int16), (0, 65535, torch.int32),
                                             (-65536, 0, torch.int32)])
def test_uniform_code_dtype(qmin, qmax, dtype):
    x = sample((10,), 0)
    codes = ops.quantize_uniform(x, torch.tensor(0.01), torch.tensor(qmin), qmin, qmax)
    assert codes.dtype == dtype


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*:UserWarning")
@pytest.mark.parametrize("qdtype,qmin,qmax", [(torch.qint8, -128, 127), (torch.quint8, 0, 255)])
def test_uniform_matches_aten(qdtype, qmin, qmax):
    x = sample((4, 1000), 1, spread=3.0)
    scale, zp = 0.0173, (0 if qmin < 0 else 131)
    codes = ops.quantize_uniform(x, torch.tensor(scale), torch.tensor(zp), qmin, qmax)
    expected = torch.quantize_per_tensor(x, scale, zp, qdtype).int_repr()
    assert torch.equal(codes, expected)
    s, z = torch.tensor([0.01, 0.02, 0.05, 0.1]), torch.tensor([0, 3, 100, 255]).clamp(qmin, qmax)
    codes = ops.quantize_uniform(x, s, z, qmin, qmax, 0)
    expected = torch.quantize_per_channel(x, s.double(), z.long(), 0, qdtype).int_repr()
    assert torch.equal(codes, expected)
    assert torch.equal(ops.dequantize_uniform(codes, s, z, 0), torch.fake_quantize_per_channel_affine(
        x, s, z.int(), 0, qmin, qmax))


def roundtrip_cases():
    return st.tuples(st.sampled_from(["uniform", "pot", "apot"]), st.integers(2, 8), st.booleans(),
                     st.sampled_from(["tensor", "channel", "group"]), st.integers(0, 2 ** 16))


@settings(derandomize=True, max_examples=60, deadline=None)
@given(case=roundtrip_cases(), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_roundtrip_is_fake_quant(case, dtype):
    scheme, bits, signed, granularity, seed = case
    if granularity == "group" and scheme != "uniform":
        granularity = "channel"
    shape = (6, 4, 3)
    x = sample(shape, seed, dtype)
    x[0, 0, 0] = math.inf
    x[1, 0, 0] = -math.inf
    spec = QuantSpec(scheme=scheme, bits=bits, signed=signed, granularity=granularity, axis=1,
                     group_size=2 if granularity == "group" else None)
    g = torch.Generator().manual_seed(seed)
    pshape = {"tensor": (), "channel": (4,), "group": (6, 2, 3)}[granularity]
    p = torch.rand(pshape, generator=g) * 0.5 + 0.05
    if scheme == "uniform":
        qmin, qmax = qx.uniform_bounds(bits, signed)
        z = torch.randint(qmin, qmax + 1, pshape, generator=g, dtype=torch.int32) if not signed else None
        kw = dict(scale=p, zero_point=z)
        spec = spec.replace(symmetric=signed)
    else:
        kw = dict(alpha=p * 8)
    codes = qx.quantize(x, spec, **kw)
    y = qx.dequantize(codes, spec, **kw)
    assert y.dtype == torch.float32 and codes.shape == x.shape
    assert torch.equal(y.to(dtype), qx.fake_quant(x, spec, **kw))


@pytest.mark.parametrize("scheme", ["pot", "apot"])
@pytest.mark.parametrize("bits,signed", [(4, True), (8, True), (3, False), (8, False)])
def test_level_code_format(device, scheme, bits, signed):
    x = sample((3, 500), 4)
    alpha = torch.tensor([0.5, 1.0, 2.0])
    codes = ops.quantize_levels(x.to(device), alpha.to(device), scheme, bits, signed, 2, "nearest", 0).cpu()
    assert codes.dtype == (torch.int8 if signed else torch.uint8)
    assert torch.equal(codes, ref.codes(x, alpha, scheme, bits, signed, axis=0))
    # sign * index into the ascending magnitude table, times alpha.
    b = ref.magnitude_bits(bits, signed)
    mags = qx.levels(scheme, b, signed=False).float()
    value = torch.sign(codes.float()) * mags[codes.long().abs()] * alpha[:, None]
    y = ops.dequantize_levels(codes.to(device), alpha.to(device), scheme, bits, signed, 2, 0)
    assert torch.equal(y.cpu(), value)
    assert torch.equal(y, ops.fake_quant_levels(x.to(device), alpha.to(device), scheme, bits, signed, 2, "nearest", 0))


def test_log_rounding_codes():
    x = sample((2000,), 8)
    alpha = torch.tensor(1.7)
    codes = ops.quantize_levels(x, alpha, "pot", 5, True, 2, "log")
    assert torch.equal(codes, ref.codes(x, alpha, "pot", 5, True, rounding="log"))
    assert torch.equal(ops.dequantize_levels(codes, alpha, "pot", 5, True),
                       qx.functional.fake_quant_levels(x, alpha, "pot", 5, True, rounding="log"))


def test_nan_codes(device):
    x = torch.tensor([math.nan, 1.0], device=device)
    one = torch.tensor(1.0, device=device)
    assert ops.quantize_uniform(x, one / 10, torch.tensor(5, device=device), 0, 255).tolist() == [5, 10 + 5]
    assert ops.quantize_levels(x, one, "apot", 4, True).tolist() == [0, 7]


def test_float64_roundtrip_and_layouts(device):
    x = sample((2, 5, 4, 3), 3, torch.float64).contiguous(memory_format=torch.channels_last).to(device)
    alpha = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5], dtype=torch.float64, device=device)
    codes = ops.quantize_levels(x, alpha, "apot", 6, True, 2, "nearest", 1)
    assert codes.is_contiguous(memory_format=torch.channels_last)
    y = ops.dequantize_levels(codes, alpha, "apot", 6, True, 2, 1)
    assert y.dtype == torch.float64 and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, ops.fake_quant_levels(x, alpha, "apot", 6, True, 2, "nearest", 1))
    t = x[:, :, ::2].transpose(0, 3)  # non-contiguous
    s = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64, device=device)
    z = torch.zeros(5, dtype=torch.int32, device=device)
    codes = ops.quantize_uniform(t, s, z, -8, 7, 1)
    assert torch.equal(ops.dequantize_uniform(codes, s, z, 1), ops.fake_quant_uniform(t, s, z, -8, 7, 1))
    # per group along the last axis
    g = torch.rand(2, 5, 4, 1, dtype=torch.float64, device=device) + 0.1
    codes = ops.quantize_uniform(x, g, torch.zeros_like(g), -8, 7, 3, 3)
    assert torch.equal(ops.dequantize_uniform(codes, g, torch.zeros_like(g), 3, 3),
                       ops.fake_quant_uniform(x, g, torch.zeros_like(g), -8, 7, 3, 3))


def test_empty(device):
    x = torch.empty(0, 4, device=device)
    ones, one, zero = torch.ones(4, device=device), torch.tensor(1.0, device=device), torch.tensor(0, device=device)
    codes = ops.quantize_levels(x, ones, "pot", 4, False, 2, "nearest", 1)
    assert codes.shape == (0, 4) and codes.dtype == torch.uint8
    assert ops.dequantize_levels(codes, ones, "pot", 4, False, 2, 1).shape == (0, 4)
    assert ops.dequantize_uniform(ops.quantize_uniform(x, one, zero, -8, 7), one, zero).shape == (0, 4)


@pytest.mark.parametrize("call,error,match", [
    (lambda: ops.dequantize_levels(torch.tensor([8], dtype=torch.int8), torch.tensor(1.0), "pot", 4, True),
     ValueError, r"codes must lie in \[-7, 7\] for 4-bit signed levels, got 8"),
    (lambda: ops.dequantize_levels(torch.tensor([-1], dtype=torch.int8), torch.tensor(1.0), "apot", 4, False),
     ValueError, r"codes must lie in \[0, 15\] for 4-bit unsigned levels, got -1"),
    (lambda: ops.dequantize_levels(torch.tensor([1.0]), torch.tensor(1.0), "pot", 4, True),
     TypeError, r"codes must be an integer tensor \(uint8, int8, int16, int32 or int64\), got dtype Float"),
    (lambda: ops.dequantize_levels(torch.zeros(2, dtype=torch.uint16), torch.tensor(1.0), "pot", 4, True),
     TypeError, "codes must be an integer tensor .*got dtype UInt16"),
    (lambda: ops.dequantize_uniform(torch.zeros(2, dtype=torch.uint32), torch.tensor(1.0), torch.tensor(0)),
     TypeError, "codes must be an integer tensor .*got dtype UInt32"),
    (lambda: ops.dequantize_uniform(torch.tensor([1.0]), torch.tensor(1.0), torch.tensor(0)),
     TypeError, "codes must be an integer tensor"),
    (lambda: ops.dequantize_uniform(torch.tensor([1], dtype=torch.int8), torch.tensor(-1.0), torch.tensor(0)),
     ValueError, "scale must be positive and finite, got -1"),
    (lambda: ops.dequantize_uniform(torch.tensor([1], dtype=torch.int8), torch.tensor(1.0), torch.tensor(300)),
     ValueError, r"zero_point must lie in \[qmin, qmax\] = \[-128, 127\], got 300"),
    (lambda: ops.quantize_uniform(torch.ones(3), torch.tensor(1.0), torch.tensor(0), 5, 4),
     ValueError, "qmin must be <= qmax, got qmin=5, qmax=4"),
    (lambda: ops.quantize_levels(torch.ones(3), torch.tensor(0.0), "apot", 4, True),
     ValueError, "alpha must be positive and finite, got 0"),
    (lambda: ops.quantize_levels(torch.ones(3), torch.tensor(1.0), "apot", 9, True),
     ValueError, r"bits must be in \[2, 8\]"),
])
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_opcheck():
    x = sample((3, 4, 5), 0)
    s, z = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 2], dtype=torch.int32)
    opcheck(ops.quantize_uniform.default, (x, s, z, -8, 7, 0, 0))
    codes = ops.quantize_uniform(x, s, z, -8, 7, 0)
    opcheck(ops.dequantize_uniform.default, (codes, s, z, 0, 0))
    alpha = torch.tensor(2.0)
    opcheck(ops.quantize_levels.default, (x, alpha, "apot", 5, False, 2, "nearest", None))
    codes = ops.quantize_levels(x, alpha, "apot", 5, False)
    opcheck(ops.dequantize_levels.default, (codes, alpha, "apot", 5, False, 2, None))
