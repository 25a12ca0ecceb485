"""Range methods: the C++ searches against slow references, and the ranges
they choose on data drawn from known distributions."""

import math

import numpy as np
import pytest
import torch

import quantext as qx
from quantext.calibration import magnitude_levels
from quantext.spec import CALIBRATION_METHODS, QuantSpec

N = 1_000_000


def sample(name: str, seed: int = 0, n: int = N) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    if name == "uniform":
        return (2 * u - 1).float()
    if name == "laplace":  # b = 1
        return (-torch.sign(u - 0.5) * torch.log1p(-2 * (u - 0.5).abs())).float()
    if name == "gaussian":
        return torch.randn(n, generator=gen)
    if name == "student_t3":
        z = torch.randn(n, generator=gen, dtype=torch.float64)
        chi2 = torch.randn(3, n, generator=gen, dtype=torch.float64).square().sum(0)
        return (z / (chi2 / 3).sqrt()).float()
    raise ValueError(name)


def abs_hist(x: torch.Tensor, bins: int = 2048) -> tuple[torch.Tensor, float]:
    """|x| histogram over [0, max|x|] (TensorRT's layout)."""
    amax = x.abs().max().item()
    return qx.magnitude_histogram(x, bins, amax).sum(0), amax


# ------------------------------------------------------------------ ACIQ --
TABLE = {"gaussian": [1.24, 1.71, 2.15, 2.55, 2.93, 3.28, 3.61, 3.92],
         "laplace": [1.86, 2.83, 3.89, 5.03, 6.20, 7.41, 8.64, 9.89]}


def analytic_mse(ratio: float, bits: int, prior: str) -> float:
    """Banner et al.: clipping error of a unit prior plus the noise alpha^2 / (3 * 4^M)."""
    if prior == "laplace":
        clip = 2 * math.exp(-ratio)
    else:
        clip = (1 + ratio**2) * math.erfc(ratio / math.sqrt(2)) - math.sqrt(2 / math.pi) * ratio * math.exp(
            -ratio**2 / 2)
    return clip + ratio**2 / (3 * 4**bits)


@pytest.mark.parametrize("prior", ["gaussian", "laplace"])
def test_aciq_ratios_reproduce_the_published_table(prior):
    for bits, published in enumerate(TABLE[prior], start=1):
        ratio = qx.aciq_ratio(bits, prior)
        assert abs(ratio - published) < 0.01, (bits, ratio, published)
        # Independently: the minimum of the analytic MSE on a fine grid.
        grid = np.arange(0.5, 15, 1e-4)
        best = grid[np.argmin([analytic_mse(r, bits, prior) for r in grid])]
        assert abs(best - ratio) < 2e-4


@pytest.mark.parametrize("prior,bits", [("laplace", 4), ("laplace", 8), ("gaussian", 3), ("gaussian", 8)])
def test_aciq_on_samples_of_its_prior(prior, bits):
    scale = 2.5
    x = sample(prior, seed=bits) * scale  # Laplace b = 2.5; Gaussian sigma = 2.5
    lo, hi = qx.compute_clip(x, "aciq", QuantSpec(bits=bits), aciq_prior=prior)
    expected = qx.aciq_ratio(bits, prior) * scale
    assert abs(hi.item() - expected) < 0.05 * expected
    assert lo.item() == -hi.item()


def test_aciq_tengine_sigma():
    x = sample("gaussian", seed=3) * 0.7
    lo, hi = qx.compute_clip(x, "aciq", QuantSpec(bits=8), aciq_prior="gaussian", aciq_sigma="tengine")
    c = 0.5 * 0.35 * (1 + math.sqrt(math.pi * math.log(4)))
    sigma = 2 * x.abs().max().item() * c / math.sqrt(2 * math.log(x.numel()))
    # Symmetric: |mean| + ratio * sigma.
    assert hi.item() == pytest.approx(x.double().mean().abs().item() + qx.aciq_ratio(8, "gaussian") * sigma, rel=1e-6)
    assert abs(hi.item() - 3.92 * 0.7) < 0.05 * 3.92 * 0.7
    with pytest.raises(ValueError, match="needs aciq_prior='gaussian'"):
        qx.compute_clip(x, "aciq", QuantSpec(bits=8), aciq_sigma="tengine")


def test_aciq_mean_abs_deviation_from_histogram():
    x = sample("laplace", seed=5) * 1.5 + 0.8
    obs = qx.HistogramObserver()
    obs(x)
    want = (x.double() - x.double().mean()).abs().mean().item()
    assert obs.stats().mean_abs_deviation().item() == pytest.approx(want, rel=1e-4)


# --------------------------------------------------------------- entropy --
def kl_tensorrt_reference(h: np.ndarray, levels: int = 128, start: int = 128) -> dict[int, float]:
    """The TensorRT slides' loop, literally (MXNet's non-empty mask), in float64."""
    out = {}
    for i in range(max(start, levels), len(h)):
        p = h[:i].copy()
        p[i - 1] += h[i:].sum()
        nonzero = p > 0
        k = i // levels
        starts = np.arange(levels) * k
        lengths = np.diff(np.append(starts, i))
        sums = np.add.reduceat(h[:i], starts)
        counts = np.add.reduceat(nonzero.astype(np.float64), starts)
        q = np.repeat(np.divide(sums, counts, out=np.zeros(levels), where=counts > 0), lengths) * nonzero
        p, q = p / p.sum(), q / q.sum()
        with np.errstate(divide="ignore"):
            out[i] = float(np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero])))
    return out


def kl_ppq_reference(histogram: torch.Tensor, quant_bins: int = 128) -> dict[int, float]:
    """PPQ's TorchHistObserver.hist_to_scale_offset (symmetric branch), in float64."""
    histogram = histogram.double().clone()
    hist_bins = histogram.numel()
    histogram[: int(hist_bins * .002)] = 0
    histogram[int(hist_bins * .002)] = 1
    hist_sum = histogram.sum()
    out = {}
    for bin_range in range(quant_bins, hist_bins + quant_bins - 1, quant_bins):
        p_hist = histogram[:bin_range].clone()
        p_hist[bin_range - 1] += histogram[bin_range:].sum()
        p_hist = p_hist / hist_sum
        expand_ratio = bin_range // quant_bins
        q_hist = histogram[:bin_range].clone().reshape(quant_bins, expand_ratio)
        positive_map = q_hist > 0
        positive_cnt = positive_map.sum(1, keepdim=True)
        positive_cnt[positive_cnt == 0] = 1
        q_hist = (q_hist.sum(1, keepdim=True) / positive_cnt).repeat(1, expand_ratio) * positive_map
        q_hist = (q_hist / q_hist.sum()).flatten()
        out[bin_range] = (p_hist * torch.log((p_hist + 1e-30) / (q_hist + 1e-30))).sum().item()
    return out


def argmin_first(curve: dict[int, float]) -> int:
    return min(curve, key=lambda i: (curve[i], i))


@pytest.mark.parametrize("name", ["laplace", "student_t3", "gaussian", "uniform"])
def test_kl_tensorrt_matches_reference(name):
    h, amax = abs_hist(sample(name, seed=11))
    clip, curve = qx.ops.calib_entropy(h, torch.tensor(amax), 128, 128, "tensorrt")
    ref = kl_tensorrt_reference(h.double().numpy())
    got = {i: curve[i].item() for i in ref}
    np.testing.assert_allclose(list(got.values()), list(ref.values()), rtol=1e-8, atol=1e-12)
    assert torch.isinf(curve[:128]).all() and torch.isinf(curve[2048])
    assert clip.item() == pytest.approx((argmin_first(ref) + 0.5) * amax / 2048, rel=1e-12)


@pytest.mark.parametrize("name", ["laplace", "student_t3", "uniform"])
def test_kl_ppq_matches_reference(name):
    h, amax = abs_hist(sample(name, seed=12))
    clip, curve = qx.ops.calib_entropy(h, torch.tensor(amax), 128, 128, "ppq")
    ref = kl_ppq_reference(h)
    np.testing.assert_allclose([curve[i].item() for i in ref], list(ref.values()), rtol=1e-8, atol=1e-12)
    assert clip.item() == pytest.approx(argmin_first(ref) * amax / 2048, rel=1e-12)
    assert int(torch.isfinite(curve).sum()) == 16


@pytest.mark.parametrize("name,fraction", [("laplace", 0.8), ("student_t3", 0.3)])
def test_kl_clips_heavy_tails_well_below_the_max(name, fraction):
    # 8 bits: TensorRT's KL keeps ~11 b of a Laplace (max ~14-16 b at 1e6 samples).
    x = sample(name, seed=13)
    lo, hi = qx.compute_clip(x, "entropy", QuantSpec(bits=8))
    assert hi.item() < fraction * x.abs().max().item()


def test_kl_keeps_about_the_max_of_uniform_data():
    x = sample("uniform", seed=14)
    lo, hi = qx.compute_clip(x, "entropy", QuantSpec(bits=8))
    assert hi.item() > 0.9 * x.abs().max().item()


@pytest.mark.parametrize("spec", [QuantSpec(bits=16), QuantSpec(bits=13, signed=False),
                                  QuantSpec(bits=16, symmetric=False, signed=False)])
def test_kl_without_candidates_keeps_the_max(spec):
    # 2^(bits-1) levels >= 2048 bins: nothing to merge.
    x = sample("laplace", seed=16, n=10_000)
    lo, hi = qx.compute_clip(x, "entropy", spec)
    assert hi.item() == (x.abs().max() if spec.signed else x.max()).item()


def test_kl_per_channel_rows_are_independent():
    hs = torch.stack([abs_hist(sample(n, seed=15, n=100_000))[0] for n in ("laplace", "uniform", "gaussian")])
    amax = torch.tensor([3.0, 1.0, 5.0])
    clip, curve = qx.ops.calib_entropy(hs, amax)
    assert clip.shape == (3,) and curve.shape == (3, 2049)
    for c in range(3):
        one, _ = qx.ops.calib_entropy(hs[c], amax[c])
        assert clip[c].item() == one.item()


# ------------------------------------------------------------------- MSE --
def pot_levels(magnitude_bits: int) -> torch.Tensor:
    """{0} U {2^-j : j = 0 .. 2^B - 2} (DESIGN 2.2), ascending."""
    return torch.tensor([0.0] + [2.0**-j for j in range(2**magnitude_bits - 2, -1, -1)], dtype=torch.float64)


APOT_LEVELS = {  # DESIGN 2.3, normalized magnitudes
    2: [0, 1 / 4, 1 / 2, 1],
    3: [0, .1, .2, .3, .4, .6, .8, 1],
    4: [0, 1 / 48, 1 / 24, 1 / 16, 1 / 12, 1 / 8, 1 / 6, 3 / 16, 1 / 4, 1 / 3, 3 / 8, 1 / 2, 2 / 3, 11 / 16, 3 / 4, 1],
}


def nearest_level_quant(x: torch.Tensor, alpha: float, levels: torch.Tensor) -> torch.Tensor:
    """Reference: sign(x) * alpha * (the level nearest to min(|x| / alpha, 1)), ties to the smaller level
    (found among the midpoints of the sorted table)."""
    v = (x.double().abs() / alpha).clamp(max=1.0)
    idx = torch.bucketize(v, (levels[1:] + levels[:-1]) / 2)
    return torch.sign(x.double()) * alpha * levels[idx]


def uniform_quant(x: torch.Tensor, alpha: float, qmin: int, qmax: int) -> torch.Tensor:
    """Slow reference for a symmetric uniform grid with scale alpha / qmax."""
    s = alpha / qmax
    return (x.double() / s).round().clamp(qmin, qmax) * s


def chunked_mse(x: torch.Tensor, quant) -> float:
    return sum(((c.double() - quant(c)).square().sum().item() for c in x.split(50_000))) / x.numel()


def density_error_reference(h: torch.Tensor, width: float, alpha: float, levels: torch.Tensor,
                            sub: int = 64) -> float:
    """Expected squared error of the piecewise-uniform density by the midpoint rule."""
    bins = h.numel()
    points = (torch.arange(bins * sub, dtype=torch.float64) + 0.5) * width / sub
    weights = h.double().repeat_interleave(sub) / sub
    keep = weights > 0
    q = nearest_level_quant(points[keep].float(), alpha, levels)
    return float((weights[keep] * (points[keep] - q).square()).sum() / h.sum())


@pytest.mark.parametrize("levels", [torch.arange(8, dtype=torch.float64) / 7, pot_levels(3),
                                    torch.tensor(APOT_LEVELS[3], dtype=torch.float64)])
def test_mse_curve_matches_density_reference(levels):
    h, amax = abs_hist(sample("laplace", seed=21, n=200_000), bins=256)
    clip, curve = qx.ops.calib_mse(h, torch.tensor(amax), levels)
    width = amax / 256
    for i in (3, 40, 100, 200, 255):
        want = density_error_reference(h, width, (i + 1) * width, levels)
        assert curve[i].item() == pytest.approx(want, rel=2e-3)
    assert clip.item() == pytest.approx((int(curve.argmin()) + 1) * width)


def _spec_and_quant(scheme: str, bits: int):
    if scheme == "uniform":
        return QuantSpec(bits=bits), lambda a: (lambda c: uniform_quant(c, a, -2**(bits - 1), 2**(bits - 1) - 1)), None
    table = pot_levels(bits - 1) if scheme == "pot" else torch.tensor(APOT_LEVELS[bits - 1], dtype=torch.float64)
    return QuantSpec(scheme=scheme, bits=bits), lambda a: (lambda c: nearest_level_quant(c, a, table)), table


@pytest.mark.parametrize("scheme,bits", [("uniform", 4), ("uniform", 6), ("pot", 4), ("apot", 3), ("apot", 4),
                                         ("apot", 5)])
def test_mse_beats_max_and_percentile_on_laplace(scheme, bits):
    x = sample("laplace", seed=22, n=100_000)
    spec, quant, table = _spec_and_quant(scheme, bits)
    error = {m: chunked_mse(x, quant(qx.compute_clip(x, m, spec, levels=table)[1].item()))
             for m in ("max", "percentile", "mse")}
    assert error["mse"] < error["max"] and error["mse"] < error["percentile"], error
    # And it is close to the best clip found by brute force on the data itself.
    grid = np.linspace(0.02, 0.8, 80) * x.abs().max().item()
    brute = min(chunked_mse(x, quant(a)) for a in grid)
    assert error["mse"] <= brute * 1.01


def test_magnitude_levels():
    assert torch.equal(magnitude_levels(QuantSpec(bits=4)), torch.arange(8, dtype=torch.float64) / 7)
    assert torch.equal(magnitude_levels(QuantSpec(bits=4, signed=False)), torch.arange(16, dtype=torch.float64) / 15)
    spec = QuantSpec(scheme="apot", bits=5)
    if hasattr(qx, "levels"):  # the level builder lives on another branch until merged
        torch.testing.assert_close(magnitude_levels(spec), torch.tensor(APOT_LEVELS[4], dtype=torch.float64))
    else:
        with pytest.raises(ValueError, match="needs quantext.levels"):
            magnitude_levels(spec)


def affine_fake_quant(x: torch.Tensor, lo: float, hi: float, qmin: int, qmax: int) -> torch.Tensor:
    """The quantizers' range -> (scale, zero point) rule, then ATen's fake quant."""
    scale = max((hi - lo) / (qmax - qmin), 1e-12)
    zero = int(min(max(qmin - round(lo / scale), qmin), qmax))
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, qmin, qmax)


def test_affine_mse_beats_max_and_percentile_on_skewed_data():
    x = (sample("laplace", seed=23, n=300_000).abs() * 2 - 0.4).clamp(min=-0.4 + 1e-3) + 0.05 * sample("gaussian", 24,
                                                                                                        300_000)
    spec = QuantSpec(bits=4, symmetric=False, signed=False)
    errors = {}
    for m in ("max", "percentile", "mse"):
        lo, hi = qx.compute_clip(x, m, spec)
        assert lo.item() <= 0 <= hi.item()
        errors[m] = (affine_fake_quant(x, lo.item(), hi.item(), 0, 15) - x).square().mean().item()
    assert errors["mse"] < errors["max"] and errors["mse"] < errors["percentile"], errors


# ------------------------------------------------------------ percentile --
def test_percentile_symmetric_and_affine():
    x = sample("student_t3", seed=31)
    amax = x.abs().max().item()
    width = 2 * amax / 2048  # the observer's range is at most twice the max
    lo, hi = qx.compute_clip(x, "percentile", QuantSpec(percentile=99.9))
    assert abs(hi.item() - torch.quantile(x.abs()[:N // 2 * 2].double(), 0.999).item()) < width
    lo, hi = qx.compute_clip(x, "percentile", QuantSpec(percentile=99.0, symmetric=False, signed=False))
    xs = x.double().sort().values
    assert abs(lo.item() - xs[int(0.01 * N)].item()) < width and abs(hi.item() - xs[int(0.99 * N)].item()) < width


def test_percentile_op_interpolates_inside_the_bin():
    h = torch.tensor([0, 4, 0, 4])
    q = qx.ops.calib_percentile(h, torch.tensor(0.0), torch.tensor(4.0), 0.25)
    assert q.item() == 1.5  # half of bin 1 ([1, 2))
    assert qx.ops.calib_percentile(h, torch.tensor(0.0), torch.tensor(4.0), 1.0).item() == 4.0


# ------------------------------------------------------------- bad input --
DEGENERATE = {"zeros": torch.zeros(100), "constant": torch.full((100,), -3.0), "single": torch.tensor([2.5]),
              "outlier": torch.cat([torch.zeros(10_000), torch.tensor([1e6])]), "tiny": torch.full((50,), 1e-30)}


@pytest.mark.parametrize("data", DEGENERATE)
@pytest.mark.parametrize("spec", [QuantSpec(), QuantSpec(signed=False), QuantSpec(symmetric=False, signed=False),
                                  QuantSpec(scheme="pot", bits=4)])
def test_degenerate_data_never_gives_an_empty_or_nan_range(data, spec):
    x = DEGENERATE[data]
    for method in CALIBRATION_METHODS:
        table = pot_levels(3) if spec.scheme == "pot" else None
        lo, hi = qx.compute_clip(x, method, spec, levels=table)
        assert math.isfinite(lo.item()) and math.isfinite(hi.item()) and hi.item() > lo.item(), (method, lo, hi)
        assert lo.item() <= 0 <= hi.item()


def test_bad_input_errors():
    with pytest.raises(ValueError, match="data is empty"):
        qx.compute_clip(torch.empty(0, 3), "entropy")
    with pytest.raises(ValueError, match="no finite values"):
        qx.compute_clip(torch.full((10,), float("nan")), "percentile")
    with pytest.raises(ValueError, match="calibration must be one of"):
        qx.compute_clip(torch.randn(10), "kl")
    with pytest.raises(TypeError, match="tensor or a HistogramObserver"):
        qx.compute_clip([1.0, 2.0], "max")
    h, amax = torch.ones(256), torch.tensor(1.0)
    with pytest.raises(ValueError, match="variant must be 'tensorrt' or 'ppq', got 'mxnet'"):
        qx.ops.calib_entropy(h, amax, 128, 128, "mxnet")
    with pytest.raises(ValueError, match="no candidate thresholds"):
        qx.ops.calib_entropy(h, amax, 128, 256)
    with pytest.raises(ValueError, match="non-negative"):
        qx.ops.calib_entropy(-h, amax)
    with pytest.raises(ValueError, match="row 1 is empty"):
        qx.ops.calib_mse(torch.stack([h, torch.zeros(256)]), torch.ones(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        qx.ops.calib_mse(h, amax, torch.tensor([0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="amax must be positive and finite, got 0"):
        qx.ops.calib_mse(h, torch.tensor(0.0), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="q must be in"):
        qx.ops.calib_percentile(h, torch.tensor(0.0), amax, 1.5)
    with pytest.raises(ValueError, match="lo < hi"):
        qx.ops.calib_mse_affine(h, torch.tensor(1.0), torch.tensor(1.0), 0, 15)
    with pytest.raises(ValueError, match="bits must be in"):
        qx.aciq_ratio(0, "laplace")
    with pytest.raises(ValueError, match="prior must be 'gaussian' or 'laplace'"):
        qx.aciq_ratio(4, "cauchy")


def test_compute_clip_on_an_observer_and_per_channel_weights():
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(41)) * torch.linspace(0.1, 2, 16).view(
        -1, 1, 1, 1)
    spec = QuantSpec(granularity="channel", axis=0, calibration="mse", bits=4)
    lo, hi = qx.compute_clip(w, spec=spec)
    assert hi.shape == (16,) and torch.equal(lo, -hi)
    obs = qx.HistogramObserver(axis=0)
    obs(w)
    for a, b in zip(qx.compute_clip(obs, spec=spec), (lo, hi)):
        assert torch.equal(a, b)
    # Each channel on its own gives the same clip.
    for c in (0, 7, 15):
        assert qx.compute_clip(w[c], spec=QuantSpec(calibration="mse", bits=4))[1].item() == hi[c].item()
