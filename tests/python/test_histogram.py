"""Histogram ops (torch.ops.quantext.histogram / magnitude_histogram) against
torch.histc and numpy.histogram."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import quantext as qx

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def histc_reference(x: torch.Tensor, bins: int, lo: float, hi: float) -> torch.Tensor:
    """torch.histc in float64 (the kernels place values in float64 too), NaN dropped."""
    x = x.double().reshape(-1)
    return torch.histc(x[~x.isnan()], bins, lo, hi).long()


def magnitude_reference(x: torch.Tensor, bins: int, amax: float) -> torch.Tensor:
    x = x.double().reshape(-1)
    x = x[~x.isnan()]
    return torch.stack([histc_reference(-x[x < 0], bins, 0, amax), histc_reference(x[x >= 0], bins, 0, amax)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_histc(dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(100_003, generator=gen) * 3).to(dtype)
    out = qx.histogram(x, 2048, -4.0, 5.0)
    assert out.dtype == torch.int64 and out.shape == (2048,)
    assert torch.equal(out, histc_reference(x, 2048, -4.0, 5.0))


def test_matches_numpy_histogram():
    rng = np.random.default_rng(1)
    x = rng.standard_t(3, size=200_000)
    counts, _ = np.histogram(x, bins=1000, range=(-6.0, 7.5))
    out = qx.histogram(torch.from_numpy(x), 1000, -6.0, 7.5)
    np.testing.assert_array_equal(out.numpy(), counts)


def test_large_input_is_deterministic_and_exact():
    # Many chunks and threads: integer counts do not depend on the merge order.
    x = torch.rand(3_000_000, generator=torch.Generator().manual_seed(2))
    first = qx.histogram(x, 777, 0.0, 1.0)
    assert torch.equal(first, histc_reference(x, 777, 0.0, 1.0))
    assert torch.equal(first, qx.histogram(x, 777, 0.0, 1.0))


def test_edge_convention():
    # Bins are [lo + i w, lo + (i + 1) w); hi counts in the last bin; outside, NaN and inf are dropped.
    x = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, -1e-7, 1.0000001, float("nan"), float("inf"), -float("inf")])
    assert qx.histogram(x, 4, 0.0, 1.0).tolist() == [1, 1, 1, 2]


def test_range_tensors_stay_on_device_and_per_channel():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 6, 7, generator=gen).to(memory_format=torch.channels_last)
    lo = torch.tensor([-1.0, -2.0, -0.5, -3.0, 0.0])
    hi = torch.tensor([1.0, 2.5, 0.5, 1.0, 2.0])
    out = qx.histogram(x, 50, lo, hi, axis=1)
    assert out.shape == (5, 50)
    for c in range(5):
        assert torch.equal(out[c], histc_reference(x[:, c], 50, lo[c].item(), hi[c].item()))


def test_non_contiguous_per_tensor():
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(4)).t()[::2]
    assert torch.equal(qx.histogram(x, 100, -3.0, 3.0), histc_reference(x, 100, -3.0, 3.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_magnitude_histogram(dtype):
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(50_000, generator=gen) * 2).to(dtype)
    x[::97] = 0.0
    x[1::101] = -0.0
    x[2::103] = float("nan")
    out = qx.magnitude_histogram(x, 512, 8.0)
    assert out.shape == (2, 512)
    assert torch.equal(out, magnitude_reference(x, 512, 8.0))
    # Zeros (including -0.0) count as non-negative.
    assert out[1, 0] >= (x == 0).sum()


def test_magnitude_histogram_per_channel():
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(8, 3, 3, 3, generator=gen) * torch.arange(1, 9).view(8, 1, 1, 1)
    amax = torch.tensor([1.0, 2.0, 4.0, 4.0, 8.0, 8.0, 8.0, 16.0])
    out = qx.magnitude_histogram(w, 64, amax, axis=0)
    assert out.shape == (8, 2, 64)
    for c in range(8):
        assert torch.equal(out[c], magnitude_reference(w[c], 64, amax[c].item()))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(0, 3000), bins=st.integers(1, 300), lo=st.floats(-100, 100), width=st.floats(1e-3, 1e3),
       seed=st.integers(0, 2**31 - 1))
def test_random_ranges_match_numpy(n, bins, lo, width, seed):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * width + lo
    counts, _ = np.histogram(x.numpy(), bins=bins, range=(lo, lo + width))
    np.testing.assert_array_equal(qx.histogram(x, bins, lo, lo + width).numpy(), counts)


def test_empty_input():
    assert torch.equal(qx.histogram(torch.empty(0), 8, 0.0, 1.0), torch.zeros(8, dtype=torch.long))
    assert qx.magnitude_histogram(torch.empty(3, 0), 8, torch.ones(3), axis=0).shape == (3, 2, 8)


def test_bad_arguments():
    x = torch.randn(10)
    with pytest.raises(ValueError, match="bins must be in"):
        qx.histogram(x, 0, 0.0, 1.0)
    with pytest.raises(ValueError, match="hi - lo must be positive and finite, got 0"):
        qx.histogram(x, 4, 1.0, 1.0)
    with pytest.raises(ValueError, match="hi - lo must be positive and finite"):
        qx.histogram(x, 4, 0.0, float("nan"))
    with pytest.raises(ValueError, match="amax must be positive and finite, got -1"):
        qx.magnitude_histogram(x, 4, -1.0)
    with pytest.raises(ValueError, match=r"per-channel lo must have shape \[2\]"):
        qx.histogram(torch.randn(2, 3), 4, torch.zeros(3), torch.ones(2), axis=0)
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        qx.histogram(torch.randn(2, 3), 4, torch.zeros(2), torch.ones(2), axis=2)
    with pytest.raises(TypeError, match="floating point"):
        qx.histogram(torch.arange(4), 4, 0.0, 1.0)


def test_opcheck():
    x = torch.randn(6, 40)
    torch.library.opcheck(qx.ops.histogram.default, (x, 16, torch.tensor(-1.0), torch.tensor(1.0)))
    torch.library.opcheck(qx.ops.magnitude_histogram.default, (x, 16, torch.full((6,), 2.0), 0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(4, 300_000, generator=gen) * 3).to(dtype)
    lo, hi = torch.tensor([-1.0, -2.0, -4.0, 0.0]), torch.tensor([1.0, 3.0, 4.0, 9.0])
    assert torch.equal(qx.histogram(x.cuda(), 2048, lo.cuda(), hi.cuda(), axis=0).cpu(),
                       qx.histogram(x, 2048, lo, hi, axis=0))
    # 40000 bins per side do not fit shared memory: the global-atomics path.
    for bins in (2048, 40_000):
        assert torch.equal(qx.magnitude_histogram(x.cuda(), bins, torch.tensor(8.0).cuda()).cpu(),
                           qx.magnitude_histogram(x, bins, 8.0))
