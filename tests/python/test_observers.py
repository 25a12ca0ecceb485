"""HistogramObserver: exact growing range, per-channel statistics, state_dict,
the make_observer path the quantizers use, and DDP reduction (two gloo ranks)."""

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import quantext as qx
from quantext.calibration import MinMaxObserver, make_observer
from quantext.spec import CALIBRATION_METHODS, QuantSpec


def batches(seed=0):
    """Batches whose magnitude grows by factors that are not powers of two."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 1000, generator=gen) * s for s in (0.3, 1.0, 7.0, 0.01, 130.0, 2.5)]


def pow2_above(a: float) -> float:
    return 2.0 ** (math.floor(math.log2(a)) + 1)


def test_growing_range_is_exact():
    data = batches()
    obs = qx.HistogramObserver(bins=2048)
    for b in data:
        obs(b)
    everything = torch.cat([b.reshape(-1) for b in data])
    amax = everything.abs().max().item()
    assert obs.amax.item() == pow2_above(amax)
    # Equal, count for count, to the histogram of all data built at the final range.
    direct = qx.magnitude_histogram(everything, 2048, obs.amax.item())
    assert torch.equal(obs.hist[0], direct)
    assert obs.hist.sum().item() == everything.numel()


def test_order_does_not_matter():
    data = batches(1)
    forward, backward = qx.HistogramObserver(bins=512), qx.HistogramObserver(bins=512)
    for b in data:
        forward(b)
    for b in reversed(data):
        backward(b)
    assert torch.equal(forward.hist, backward.hist)
    assert torch.equal(forward.amax, backward.amax)


def test_statistics():
    data = batches(2)
    obs = qx.HistogramObserver()
    for b in data:
        obs(b)
    x = torch.cat([b.reshape(-1) for b in data]).double()
    assert obs.count.item() == x.numel()
    assert obs.min_val.item() == x.min().item() and obs.max_val.item() == x.max().item()
    torch.testing.assert_close(obs.sum, x.sum().reshape(1), rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(obs.sum_sq, x.square().sum().reshape(1), rtol=1e-6, atol=0)


def test_zeros_then_data_and_non_finite_values():
    obs = qx.HistogramObserver(bins=64)
    obs(torch.zeros(10))
    assert obs.amax.item() == 0 and obs.hist[0, 1, 0].item() == 10
    x = torch.tensor([0.5, -0.25, float("nan"), float("inf"), -float("inf"), 0.0])
    obs(x)
    assert obs.amax.item() == 1.0
    assert obs.count.item() == 13
    assert torch.equal(obs.hist[0], qx.magnitude_histogram(torch.cat([torch.zeros(10), x]), 64, 1.0))


def test_all_nan_is_a_value_error():
    obs = qx.HistogramObserver()
    obs(torch.full((5,), float("nan")))
    assert obs.observed
    with pytest.raises(ValueError, match="no finite values"):
        obs.compute_range(QuantSpec(calibration="entropy"))


def test_not_observed():
    obs = qx.HistogramObserver()
    assert not obs.observed
    obs(torch.empty(0))
    assert not obs.observed
    with pytest.raises(RuntimeError, match="before any data"):
        obs.compute_range(QuantSpec())


def test_per_channel():
    gen = torch.Generator().manual_seed(3)
    scales = torch.tensor([0.1, 1.0, 3.0, 50.0])
    obs = qx.HistogramObserver(axis=1, bins=256)
    chunks = [torch.randn(8, 4, 5, generator=gen) * scales.view(1, 4, 1) * k for k in (1.0, 3.3)]
    for x in chunks:
        obs(x)
    assert obs.hist.shape == (4, 2, 256)
    full = torch.cat(chunks)
    for c in range(4):
        amax = full[:, c].abs().max().item()
        assert obs.amax[c].item() == pow2_above(amax)
        assert torch.equal(obs.hist[c], qx.magnitude_histogram(full[:, c], 256, obs.amax[c].item()))
    lo, hi = obs.compute_range(QuantSpec(granularity="channel", axis=1, calibration="max"))
    assert lo.shape == hi.shape == (4,) and lo.dtype == torch.float32
    torch.testing.assert_close(hi, full.abs().amax(dim=(0, 2)))
    torch.testing.assert_close(lo, -hi)
    # Every method gives one range per channel.
    for method in CALIBRATION_METHODS:
        lo, hi = obs.compute_range(QuantSpec(granularity="channel", axis=1, calibration=method))
        assert lo.shape == (4,) and bool((hi > lo).all()) and bool((hi <= full.abs().amax(dim=(0, 2))).all())


def test_channel_count_must_not_change():
    obs = qx.HistogramObserver(axis=0)
    obs(torch.randn(3, 4))
    with pytest.raises(ValueError, match="observed 3 channels before, got 5"):
        obs(torch.randn(5, 4))


def test_state_dict_round_trip():
    obs = qx.HistogramObserver(axis=0, bins=128)
    obs(torch.randn(3, 100, generator=torch.Generator().manual_seed(4)))
    fresh = qx.HistogramObserver(axis=0, bins=128)
    fresh.load_state_dict(obs.state_dict())
    assert torch.equal(fresh.hist, obs.hist) and torch.equal(fresh.amax, obs.amax)
    spec = QuantSpec(granularity="channel", calibration="percentile")
    for a, b in zip(fresh.compute_range(spec), obs.compute_range(spec)):
        assert torch.equal(a, b)
    # The base class keeps MinMaxObserver loadable too.
    mm = MinMaxObserver()
    mm(torch.randn(10))
    loaded = MinMaxObserver()
    loaded.load_state_dict(mm.state_dict())
    assert torch.equal(loaded.max_val, mm.max_val)


def test_bad_options():
    with pytest.raises(ValueError, match="kl_variant must be one of"):
        qx.HistogramObserver(kl_variant="mxnet")
    with pytest.raises(ValueError, match="bins must be a positive int, got 0"):
        qx.HistogramObserver(bins=0)
    obs = qx.HistogramObserver()
    obs(torch.randn(100))
    with pytest.raises(ValueError, match="aciq_prior must be one of"):
        obs.compute_range(QuantSpec(calibration="aciq"), aciq_prior="cauchy")


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
@pytest.mark.parametrize("spec_kw", [{}, {"signed": False}, {"symmetric": False, "signed": False},
                                     {"granularity": "channel", "axis": 0}])
def test_make_observer_path(method, spec_kw):
    """What the quantizers do: make_observer(spec), observe, all_reduce_ (no-op without DDP), compute_range."""
    spec = QuantSpec(calibration=method, **spec_kw)
    obs = make_observer(spec)
    assert isinstance(obs, MinMaxObserver if method == "max" else qx.HistogramObserver)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        obs(torch.relu(torch.randn(6, 200, generator=gen)) - 0.1)
    obs.all_reduce_()
    lo, hi = obs.compute_range(spec)
    assert lo.shape == (() if spec.granularity == "tensor" else (6,))
    assert bool(torch.isfinite(lo).all() and torch.isfinite(hi).all() and (hi > lo).all())
    assert bool((lo <= 0).all() and (hi >= 0).all())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_data(rank: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(10 + rank)
    scale = (1.0, 37.0)[rank]  # the ranks see different ranges
    return [torch.randn(3, 500, generator=gen) * scale * k for k in (1.0, 0.2)]


SPECS = [QuantSpec(calibration=m) for m in CALIBRATION_METHODS] + [
    QuantSpec(calibration="mse", symmetric=False, signed=False)]


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        observers = [qx.HistogramObserver(), qx.HistogramObserver(axis=0), qx.HistogramObserver()]
        for x in _rank_data(rank):
            observers[0](x)
            observers[1](x)
            if rank == 1:
                observers[2](x)  # rank 0 observes nothing with this one
        for obs in observers:
            obs.all_reduce_()
        ranges = [observers[0].compute_range(s) for s in SPECS]
        torch.save(([obs.state_dict() for obs in observers], ranges), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_all_reduce_matches_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    # Single process over all data.
    single, single_channel, only_rank1 = (qx.HistogramObserver(), qx.HistogramObserver(axis=0),
                                          qx.HistogramObserver())
    for rank in (0, 1):
        for x in _rank_data(rank):
            single(x)
            single_channel(x)
            if rank == 1:
                only_rank1(x)
    expected = [single.state_dict(), single_channel.state_dict(), only_rank1.state_dict()]
    for rank in (0, 1):
        for got, want in zip(results[rank][0], expected):
            assert got.keys() == want.keys()
            for name in ("hist", "amax", "min_val", "max_val", "count"):
                assert torch.equal(got[name], want[name]), name
            for name in ("sum", "sum_sq"):
                torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-9)
    for spec, r0, r1 in zip(SPECS, results[0][1], results[1][1]):
        want = single.compute_range(spec)
        for a, b, w in zip(r0, r1, want):
            assert torch.equal(a, b), spec.calibration
            torch.testing.assert_close(a, w, rtol=1e-6, atol=0)
