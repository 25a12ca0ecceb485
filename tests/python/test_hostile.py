"""Hostile-input suite (issue 18): what a careless or malicious user does to the
public entry points. Every case asserts either a clear error that names the
argument (or the quantizer / file) or a result equal to the reference, and
the guarantees around it: loads are all or nothing, a failed calibration
changes nothing, observers are thread-safe and keep float64 values, casting a
model keeps the quantization state float32, observing costs at most one
temporary the size of the input."""

from __future__ import annotations

import copy
import datetime
import glob
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import quantext as qx
from quantext.calibration import HistogramObserver, MinMaxObserver
from quantext.checkpoint import CheckpointError
from quantext.nn import Quantizer
from quantext.spec import QConfig, QuantSpec

HYPO = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- helpers
class Net(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.head = nn.Linear(channels, 4)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = x + self.conv2(x)
        return self.head(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def prepared(channels: int = 8, seed: int = 0, calibrate: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    model = qx.prepare_qat(Net(channels), QConfig(), example_inputs=(torch.randn(2, 3, 8, 8),))
    if calibrate:
        qx.calibrate(model, [torch.randn(2, 3, 8, 8) for _ in range(2)], progress=False)
    return model


def trained(model: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        opt.step()
    return opt


def tensors_of(model: nn.Module, opt: torch.optim.Optimizer | None = None) -> dict:
    """Every tensor of the model (by name, values and dtype) and of the optimizer state."""
    out = {("m", k): v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    out.update({("p", k): v.detach().clone() for k, v in model.named_parameters()})
    if opt is not None:
        for i, (p, state) in enumerate(opt.state.items()):
            for k, v in state.items():
                out[("o", i, k)] = v.clone() if isinstance(v, torch.Tensor) else v
        out[("o", "groups")] = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    return out


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, want in before.items():
        got = after[key]
        if isinstance(want, torch.Tensor):
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), key
        else:
            assert got == want, key


def quantizer_state(model: nn.Module) -> dict:
    out = {}
    for name, q in qx.quantizers(model):
        out[name] = (q.enabled, q.observing, q.calibrated, q.spec,
                     {k: v.detach().clone() for k, v in q.state_dict().items() if isinstance(v, torch.Tensor)})
    return out


def assert_same_quantizers(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name][:4] == b[name][:4], name
        assert a[name][4].keys() == b[name][4].keys(), name
        for k in a[name][4]:
            assert torch.equal(a[name][4][k], b[name][4][k]), (name, k)


# --------------------------------------------------------------------------- 1, 3: atomic loads
def test_checkpoint_of_another_width_loads_nothing(tmp_path):
    small = prepared(8)
    trained(small)
    qx.save_checkpoint(tmp_path / "c.pt", small)
    big = prepared(16, seed=1)
    opt = trained(big)
    before = tensors_of(big, opt)
    with pytest.raises(CheckpointError, match="differ in shape"):
        qx.load_checkpoint(tmp_path / "c.pt", big)
    assert_same(before, tensors_of(big, opt))


def test_incompatible_optimizer_state_restores_model_and_optimizer(tmp_path):
    model = prepared(8)
    opt = trained(model)
    qx.save_checkpoint(tmp_path / "c.pt", model, opt)
    other = prepared(8, seed=3)
    other_opt = torch.optim.SGD([{"params": [p]} for p in other.parameters()], lr=0.1, momentum=0.9)
    other_opt.zero_grad()
    other(torch.randn(2, 3, 8, 8)).sum().backward()
    other_opt.step()
    before = tensors_of(other, other_opt)
    rng = torch.get_rng_state()
    with pytest.raises(CheckpointError, match="nothing was changed"):
        qx.load_checkpoint(tmp_path / "c.pt", other, other_opt)
    assert_same(before, tensors_of(other, other_opt))
    assert torch.equal(rng, torch.get_rng_state())


def test_failure_inside_load_state_dict_restores_everything(tmp_path):
    """A spec mismatch is only found while loading (after other entries were copied)."""
    model = prepared(8)
    qx.save_checkpoint(tmp_path / "c.pt", model)
    torch.manual_seed(5)
    other = qx.prepare_qat(Net(8), QConfig.uniform(4), example_inputs=(torch.randn(2, 3, 8, 8),))
    qx.calibrate(other, [torch.randn(2, 3, 8, 8)], progress=False)
    before = tensors_of(other)
    with pytest.raises(CheckpointError, match="bits=8.*bits=4|bits=4.*bits=8"):
        qx.load_checkpoint(tmp_path / "c.pt", other)
    assert_same(before, tensors_of(other))


def test_quantizer_load_state_dict_is_atomic():
    q = Quantizer(QuantSpec(granularity="channel"), (4, 3))
    q.set_qparams(scale=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    before = {k: v.clone() for k, v in q.state_dict().items() if isinstance(v, torch.Tensor)}
    state = q.state_dict()
    state["scale"] = torch.full((4,), 9.0)
    state["zero_point"] = torch.zeros(5, dtype=torch.int32)  # misshaped after scale was fine
    with pytest.raises(RuntimeError):
        q.load_state_dict(state)
    after = q.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


def test_lazy_quantizer_failed_load_stays_lazy():
    q = Quantizer(QuantSpec(granularity="channel"))
    src = Quantizer(QuantSpec(granularity="channel", bits=4), (3, 2))
    src.set_qparams(scale=torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(RuntimeError, match="bits=4"):
        q.load_state_dict(src.state_dict())
    assert q.scale.shape == (0,) and not q.calibrated


# --------------------------------------------------------------------------- 4: spec mismatches
SPECS = [QuantSpec(bits=8), QuantSpec(bits=4), QuantSpec(bits=8, signed=False, symmetric=False),
         QuantSpec(bits=8, symmetric=False), QuantSpec(bits=8, narrow_range=True),
         QuantSpec(bits=8, granularity="channel"), QuantSpec(scheme="pot", bits=4), QuantSpec(scheme="apot", bits=4),
         QuantSpec(scheme="apot", bits=5, k=1)]


@pytest.mark.parametrize("saved", range(len(SPECS)))
@pytest.mark.parametrize("target", range(len(SPECS)))
def test_spec_mismatch_is_an_error_naming_both_specs(saved, target):
    a, b = SPECS[saved], SPECS[target]
    src = Quantizer(a, (4, 3))
    src.set_qparams(**({"alpha": torch.ones(src._primary.shape)} if a.scheme != "uniform" else
                       {"scale": torch.full(src._primary.shape, 0.5)}))
    dst = Quantizer(b, (4, 3))
    state = src.state_dict()
    same = all(getattr(a, f) == getattr(b, f) for f in ("scheme", "bits", "signed", "symmetric", "narrow_range",
                                                        "granularity", "axis", "group_size", "k"))
    if same:
        dst.load_state_dict(state)
        return
    with pytest.raises(RuntimeError) as info:
        dst.load_state_dict(state)
    msg = str(info.value)
    assert f"bits={a.bits}" in msg and f"bits={b.bits}" in msg and "strict=False" in msg


def test_spec_mismatch_loads_with_strict_false_and_old_state_dicts_load():
    src = Quantizer(QuantSpec(bits=4))
    src.set_qparams(scale=torch.tensor(0.25))
    dst = Quantizer(QuantSpec(bits=8))
    dst.load_state_dict(src.state_dict(), strict=False)
    assert float(dst.scale) == 0.25 and dst.spec.bits == 8
    # a state dict written before quantizers stored their spec
    old = {k: v for k, v in src.state_dict().items() if not k.endswith("_extra_state")}
    fresh = Quantizer(QuantSpec(bits=4))
    fresh.load_state_dict(old)
    assert float(fresh.scale) == 0.25 and fresh.calibrated


def test_old_checkpoint_without_specs_loads(tmp_path):
    from quantext import checkpoint as ck
    model = prepared(8)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    content = {"model": state, "optimizer": None, "rng": None, "extra": {}}
    torch.save({"format": ck.FORMAT, "version": ck.VERSION, **content, "sha256": ck._digest(content)},
               tmp_path / "old.pt")
    other = prepared(8, seed=2)
    qx.load_checkpoint(tmp_path / "old.pt", other)
    for k, v in state.items():
        assert torch.equal(other.state_dict()[k], v), k


def test_checkpoint_spec_mismatch_strict_false(tmp_path):
    model = prepared(8)
    qx.save_checkpoint(tmp_path / "c.pt", model)
    torch.manual_seed(5)
    other = qx.prepare_qat(Net(8), QConfig.uniform(4), example_inputs=(torch.randn(2, 3, 8, 8),))
    qx.load_checkpoint(tmp_path / "c.pt", other, strict=False)
    assert torch.equal(other.state_dict()["conv2.weight_quantizer.scale"],
                       model.state_dict()["conv2.weight_quantizer.scale"])


# --------------------------------------------------------------------------- 5: checkpoint values and files
@pytest.mark.parametrize("value", [np.float64(1.5), np.arange(3), datetime.datetime(2024, 1, 1),
                                   pathlib.Path("/tmp"), {"nested": [np.int64(3)]}, object()])
def test_save_rejects_extra_values_load_cannot_read(tmp_path, value):
    with pytest.raises(TypeError, match=r"extra\['v'\]"):
        qx.save_checkpoint(tmp_path / "c.pt", MLP(), extra={"v": value})
    assert not os.listdir(tmp_path)


def test_plain_extra_values_round_trip(tmp_path):
    extra = {"step": 3, "lr": 0.1, "name": "x", "flags": [True, None], "t": torch.arange(3), "d": {"a": (1, 2.0)},
             "b": b"\x00", "dtype": torch.float16}
    qx.save_checkpoint(tmp_path / "c.pt", MLP(), extra=extra)
    assert qx.load_checkpoint(tmp_path / "c.pt", MLP()).keys() == extra.keys()


def test_refused_value_is_not_called_corruption(tmp_path):
    from quantext import checkpoint as ck
    content = {"model": MLP().state_dict(), "optimizer": None, "rng": None, "extra": {"v": np.float64(1.0)}}
    torch.save({"format": ck.FORMAT, "version": ck.VERSION, **content, "sha256": ck._digest(content)},
               tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="not a corruption"):
        qx.load_checkpoint(tmp_path / "c.pt", MLP())


def test_corrupted_and_truncated_files(tmp_path):
    path = tmp_path / "c.pt"
    qx.save_checkpoint(path, MLP())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        qx.load_checkpoint(path, MLP())
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        qx.load_checkpoint(path, MLP())


def test_killed_save_leaves_no_temporary_after_the_next_save(tmp_path):
    path = tmp_path / "c.pt"
    code = ("import os, signal, torch, quantext as qx\n"
            "from quantext import checkpoint as ck\n"
            "orig = torch.save\n"
            "def save(obj, f, *a, **k):\n"
            "    f.write(b'partial'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            "torch.save = save\n"
            f"qx.save_checkpoint({str(path)!r}, torch.nn.Linear(2, 2))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert len(glob.glob(str(path) + ".*.tmp")) == 1  # SIGKILL runs no cleanup
    qx.save_checkpoint(path, nn.Linear(2, 2))
    assert glob.glob(str(path) + ".*.tmp") == []
    qx.load_checkpoint(path, nn.Linear(2, 2))


# --------------------------------------------------------------------------- 2: calibration cannot half-fail
def test_failed_calibration_changes_nothing_and_names_the_quantizer():
    model = prepared(8).eval()
    before = quantizer_state(model)
    x = torch.randn(2, 3, 8, 8)
    want = model(x)
    with pytest.raises(ValueError, match=r"Quantizer '.*'.*no finite values"):
        qx.calibrate(model, [torch.full((2, 3, 8, 8), float("nan"))], progress=False)
    assert_same_quantizers(before, quantizer_state(model))
    assert torch.equal(model(x), want)


def test_failed_first_calibration_leaves_quantizers_uncalibrated():
    torch.manual_seed(0)
    model = qx.prepare_qat(MLP(), QConfig(), example_inputs=(torch.randn(2, 6),))
    before = quantizer_state(model)
    with pytest.raises(ValueError, match="Quantizer"):
        qx.calibrate(model, [torch.full((2, 6), float("nan"))], progress=False)
    assert_same_quantizers(before, quantizer_state(model))
    with pytest.raises(RuntimeError, match="never calibrated"):
        model(torch.randn(2, 6))  # not silently float


def test_calibrate_bad_batches():
    model = prepared(8, calibrate=False)
    with pytest.raises(TypeError, match="batch 0"):
        qx.calibrate(model, [None], progress=False)
    with pytest.raises(TypeError, match="batches"):
        qx.calibrate(model, 3, progress=False)
    with pytest.raises(TypeError, match="single tensor"):
        qx.calibrate(model, torch.randn(2, 3, 8, 8), progress=False)
    with pytest.raises(TypeError, match="num_batches"):
        qx.calibrate(model, [torch.randn(2, 3, 8, 8)], num_batches=1.5, progress=False)


# --------------------------------------------------------------------------- 3: threads
@pytest.mark.parametrize("calibration", ["entropy", "max"])
def test_threads_feeding_one_quantizer_lose_nothing(calibration):
    q = Quantizer(QuantSpec(calibration=calibration)).observe(True).disable()
    data = [torch.randn(20_000, generator=torch.Generator().manual_seed(i)) for i in range(32)]

    def feed(chunk):
        for t in chunk:
            q(t)

    threads = [threading.Thread(target=feed, args=(data[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ref = Quantizer(QuantSpec(calibration=calibration)).observe(True).disable()
    for t in data:
        ref(t)
    if calibration == "entropy":
        assert int(q.observer.hist.sum()) == int(q.observer.count.sum()) == 32 * 20_000
        assert torch.equal(q.observer.hist, ref.observer.hist)
    else:
        assert torch.equal(q.observer.min_val, ref.observer.min_val)
        assert torch.equal(q.observer.max_val, ref.observer.max_val)


def test_observer_copies_get_their_own_lock():
    q = Quantizer(QuantSpec(calibration="entropy"))
    c = copy.deepcopy(q)
    assert c._lock is not q._lock and c.observer._lock is not q.observer._lock
    import pickle
    pickle.loads(pickle.dumps(q.observer))


# --------------------------------------------------------------------------- 9: float64 observers
def test_float64_values_beyond_float32_are_observed():
    obs = HistogramObserver()
    obs(torch.tensor([1e300, -5e200, 1.0], dtype=torch.float64))
    assert int(obs.count) == 3 and int(obs.hist.sum()) == 3
    assert float(obs.max_val) == 1e300 and float(obs.min_val) == -5e200
    mm = MinMaxObserver()
    mm(torch.tensor([1e300, 1.0], dtype=torch.float64))
    assert float(mm.max_val) == torch.finfo(torch.float32).max  # saturates, never inf or dropped


@HYPO
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32)), min_size=1, max_size=60),
       st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
def test_histogram_observer_matches_reference(values, dtype):
    x = torch.tensor(values, dtype=torch.float32).to(dtype)
    finite = x[torch.isfinite(x)].double()
    obs = HistogramObserver(bins=64)
    obs(x)
    assert int(obs.count) == finite.numel() == int(obs.hist.sum())
    if finite.numel():
        assert float(obs.min_val) == float(finite.min()) and float(obs.max_val) == float(finite.max())
        assert torch.allclose(obs.sum, finite.sum().reshape(1))
        assert torch.allclose(obs.sum_sq, finite.square().sum().reshape(1), rtol=1e-6)


@HYPO
@given(st.integers(0, 2), st.sampled_from(["contiguous", "transposed", "sliced"]))
def test_per_channel_observers_on_strided_inputs(axis, layout):
    base = torch.randn(5, 6, 7)
    x = {"contiguous": base, "transposed": base.transpose(0, 2).contiguous().transpose(0, 2),
         "sliced": torch.randn(10, 6, 14)[::2, :, ::2]}[layout]
    x = x.clone()
    x[0, 0, 0] = float("nan")
    obs, ref = HistogramObserver(axis=axis, bins=32), HistogramObserver(axis=axis, bins=32)
    obs(x)
    ref(x.contiguous())
    for name in ("hist", "count", "min_val", "max_val"):
        assert torch.equal(getattr(obs, name), getattr(ref, name)), name
    rows = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    want_min = torch.stack([r[r.isfinite()].min() for r in rows]).double()
    assert torch.equal(obs.min_val, want_min)
    mm = MinMaxObserver(axis=axis)
    mm(x)
    assert torch.equal(mm.min_val, want_min.float())


def test_observer_rejects_complex_and_bad_axis():
    with pytest.raises(TypeError, match="complex"):
        HistogramObserver()(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="complex"):
        MinMaxObserver()(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="axis=3"):
        HistogramObserver(axis=3)(torch.randn(2, 2))
    with pytest.raises(ValueError, match="axis=-4"):
        MinMaxObserver(axis=-4)(torch.randn(2, 2))
    with pytest.raises(TypeError, match="axis"):
        MinMaxObserver(axis=1.0)
    with pytest.raises(TypeError, match="complex"):
        qx.compute_clip(torch.randn(4, dtype=torch.complex64))


# --------------------------------------------------------------------------- 15: observer temporaries
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _peak_temporaries(fn, x) -> int:
    """Peak resident bytes that ``fn(x)`` adds: Linux's peak RSS (VmHWM), reset
    through /proc/self/clear_refs before the call. glibc is told to serve every
    allocation above 1 MiB with mmap and return it at once, so a freed
    temporary is not silently reused (which would hide it) nor kept."""
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (fixed: no dynamic raise)
    libc.mallopt(-1, 1 << 20)  # M_TRIM_THRESHOLD
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    fn(x)
    return _status("VmHWM") - base


@pytest.mark.parametrize("make", [lambda: HistogramObserver(), lambda: HistogramObserver(axis=1),
                                  lambda: MinMaxObserver(), lambda: MinMaxObserver(axis=1)],
                         ids=["hist", "hist-channel", "minmax", "minmax-channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_observing_costs_at_most_one_input_sized_temporary(make, dtype):
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    x = torch.randn(64, 32, 4096).to(dtype)
    obs = make()
    obs(x[:1])  # state allocated: later calls measure the temporaries only
    nbytes = x.numel() * x.element_size()
    # the least of three: the process's resident peak also counts what other threads (a runtime's pools
    # left by earlier tests) allocate meanwhile; the observer's own temporaries recur in every call
    peak = min(_peak_temporaries(obs, x) for _ in range(3))
    assert peak <= 1.1 * nbytes + 2 ** 21, f"{peak / nbytes:.2f}x the input"


# --------------------------------------------------------------------------- 13: casting a prepared model
@pytest.mark.parametrize("cast", [lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.double()],
                         ids=["half", "bfloat16", "double"])
def test_casting_a_prepared_model_keeps_quantizer_state_float32(cast):
    torch.manual_seed(0)
    model = qx.prepare_qat(MLP(), QConfig(), example_inputs=(torch.randn(2, 6),))
    qx.calibrate(model, [torch.randn(8, 6)], progress=False)
    scales = {n: q.scale.clone() for n, q in qx.quantizers(model)}
    cast(model)
    dtype = model.fc1.weight.dtype
    for n, q in qx.quantizers(model):
        assert q.scale.dtype == torch.float32 and q.zero_point.dtype == torch.int32, n
        assert torch.equal(q.scale, scales[n]), n
    y = model(torch.randn(4, 6, dtype=dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().sum().backward()


def test_casting_keeps_learnable_scale_and_observer_stats():
    q = Quantizer(QuantSpec(learnable=True, calibration="entropy"))
    q.observe(True)(torch.randn(100))
    q.half()
    assert q.scale.dtype == torch.float32 and isinstance(q.scale, nn.Parameter)
    assert q.observer.sum.dtype == torch.float64
    out = q(torch.randn(10).half())
    assert out.dtype == torch.float16


# --------------------------------------------------------------------------- 6: a layer called twice
def test_module_called_twice_is_quantized():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(4, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.c(F.relu(self.c(x))).mean((2, 3)))

    model = qx.prepare_qat(Twice(), QConfig(), example_inputs=(torch.randn(1, 4, 6, 6),), first_last_bits=None)
    assert isinstance(model.c, qx.nn.QuantConv2d)
    qx.calibrate(model, [torch.randn(2, 4, 6, 6)], progress=False)
    model(torch.randn(2, 4, 6, 6))


# --------------------------------------------------------------------------- 8: zero points and codes
def test_symmetric_spec_rejects_a_nonzero_zero_point():
    spec = QuantSpec(bits=8)
    x = torch.randn(10)
    for op in (qx.fake_quant, qx.quantize):
        with pytest.raises(ValueError, match="zero_point must be 0"):
            op(x, spec, scale=0.1, zero_point=3)
        with pytest.raises(ValueError, match="zero_point must be 0"):
            op(x, spec, scale=torch.tensor(0.1), zero_point=torch.tensor(1, dtype=torch.int32))
        op(x, spec, scale=0.1, zero_point=0)
    with pytest.raises(ValueError, match="zero_point must be 0"):
        qx.dequantize(torch.zeros(3, dtype=torch.int8), spec, scale=0.1, zero_point=2)


def test_dequantize_rejects_codes_outside_the_spec():
    spec = QuantSpec(bits=4)
    with pytest.raises(ValueError, match=r"\[-8, 7\].*\[-128, 100\]"):
        qx.dequantize(torch.tensor([100, -128], dtype=torch.int8), spec, scale=0.5)
    codes = torch.tensor([7, -8], dtype=torch.int8)
    assert qx.dequantize(codes, spec, scale=0.5).tolist() == [3.5, -4.0]


@HYPO
@given(st.integers(2, 8), st.booleans())
def test_quantize_dequantize_round_trip(bits, signed):
    spec = QuantSpec(bits=bits, signed=signed, symmetric=signed)
    x = torch.randn(50) * 3
    kw = {"scale": 0.1} if signed else {"scale": 0.1, "zero_point": 1}
    assert torch.equal(qx.dequantize(qx.quantize(x, spec, **kw), spec, **kw), qx.fake_quant(x, spec, **kw))


# --------------------------------------------------------------------------- 11: fakes check arguments
META = torch.device("meta")


def _m(*shape):
    return torch.empty(shape, device=META)


FAKE_CASES = [
    (lambda: qx.ops.fake_quant_uniform(_m(4), _m(), torch.zeros((), dtype=torch.int32, device=META), 5, 1),
     "qmin must be <= qmax"),
    (lambda: qx.ops.fake_quant_uniform(_m(4, 3), _m(3), torch.zeros(3, dtype=torch.int32, device=META), -8, 7, 5),
     "axis=5"),
    (lambda: qx.ops.fake_quant_uniform(_m(4), _m(), torch.zeros((), dtype=torch.int32, device=META), -8, 7, None, 0,
                                       float("nan")), "grad_factor"),
    (lambda: qx.ops.fake_quant_uniform_backward(_m(4), _m(4), _m(), torch.zeros((), dtype=torch.int32, device=META),
                                                -8, 7, None, 0, float("nan"), True), "grad_factor"),
    (lambda: qx.ops.fake_quant_uniform_backward(torch.empty(4, dtype=torch.complex64, device=META), _m(4), _m(),
                                                torch.zeros((), dtype=torch.int32, device=META), -8, 7, None, 0, 1.0,
                                                True), "real tensor"),
    (lambda: qx.ops.fake_quant_levels(_m(4), _m(), "zzz", 4, True), "scheme"),
    (lambda: qx.ops.fake_quant_levels(_m(4), _m(), "pot", 99, True), "bits"),
    (lambda: qx.ops.fake_quant_levels(_m(4), _m(), "apot", 4, True, 0), "k must be"),
    (lambda: qx.ops.quantize_levels(_m(4), _m(), "pot", 4, True, 2, "zzz"), "rounding"),
    (lambda: qx.ops.quantize_uniform(_m(4), _m(), torch.zeros((), dtype=torch.int32, device=META), 9, 1), "qmin"),
    (lambda: qx.ops.levels("zzz", 4, True), "scheme"),
    (lambda: qx.ops.histogram(_m(4), 0, _m(), _m()), "bins"),
    (lambda: qx.ops.calib_mse_affine(_m(4), _m(), _m(), -2 ** 63, 2 ** 63 - 1), "qmin"),
]


@pytest.mark.parametrize("call,match", FAKE_CASES)
def test_fake_kernels_check_arguments(call, match):
    with pytest.raises((ValueError, RuntimeError), match=match):
        call()


# --------------------------------------------------------------------------- 14: clear messages
def test_second_prepare_qat_is_an_error():
    model = prepared(8, calibrate=False)
    with pytest.raises(ValueError, match="already prepared"):
        qx.prepare_qat(model, QConfig.uniform(4))


def test_wrong_shape_example_inputs_name_the_cause():
    with pytest.raises(ValueError, match=r"example_inputs \[\(2, 5, 8, 8\)\].*(channels|size|shape)"):
        qx.prepare_qat(Net(), QConfig(), example_inputs=(torch.randn(2, 5, 8, 8),))


def test_prepare_qat_skip_arguments():
    with pytest.raises(TypeError, match="skip"):
        qx.prepare_qat(Net(), QConfig(), skip=1)
    with pytest.raises(ValueError, match="nonexistent"):
        qx.prepare_qat(Net(), QConfig(), skip="nonexistent")
    with pytest.raises(TypeError, match="example_inputs"):
        qx.prepare_qat(Net(), QConfig(), example_inputs=3)


def test_inf_learnable_scale_is_reported_as_inf():
    q = Quantizer(QuantSpec(learnable=True))
    q.set_qparams(scale=torch.tensor(0.1))
    with torch.no_grad():
        q.scale.fill_(float("inf"))
    with pytest.raises((ValueError, RuntimeError), match="inf"):
        q(torch.randn(4))


def test_learnable_projection_is_straight_through():
    q = Quantizer(QuantSpec(learnable=True))
    q.set_qparams(scale=torch.tensor(0.1))
    with torch.no_grad():
        q.scale.fill_(-1.0)  # projected to min_scale
    q(torch.randn(8) * 1e-7).sum().backward()
    assert q.scale.grad is not None and torch.isfinite(q.scale.grad).all()


BAD_ARGS = [
    (lambda: qx.fake_quant([1.0], QuantSpec(), scale=0.1), TypeError, "x must be a torch.Tensor"),
    (lambda: qx.quantize((1.0,), QuantSpec(), scale=0.1), TypeError, "x must be a torch.Tensor"),
    (lambda: qx.dequantize([1], QuantSpec(), scale=0.1), TypeError, "codes must be a torch.Tensor"),
    (lambda: qx.fake_quant(torch.randn(3, dtype=torch.complex64), QuantSpec(), scale=0.1), TypeError, "real"),
    (lambda: qx.fake_quant(torch.randn(3), QuantSpec(), scale="a"), TypeError, "scale"),
    (lambda: Quantizer(QuantSpec()).set_qparams(scale="a"), TypeError, "scale"),
    (lambda: Quantizer(QuantSpec()).set_qparams(scale=[0.1, "b"]), TypeError, "scale"),
    (lambda: Quantizer(QuantSpec()).set_qparams(scale=torch.tensor(0.1), zero_point="z"), TypeError, "zero_point"),
    (lambda: Quantizer(QuantSpec()).set_qparams(scale=True), TypeError, "scale"),
    (lambda: qx.fake_quant_uniform(torch.randn(3), torch.tensor(0.1), torch.tensor(0), True, 7), TypeError, "qmin"),
    (lambda: qx.fake_quant_uniform([1.0], torch.tensor(0.1), torch.tensor(0), -8, 7), TypeError, "x must"),
    (lambda: qx.fake_quant_uniform(torch.randn(3), torch.tensor(0.1), torch.tensor(0), -8, 7, grad_factor="1"),
     TypeError, "grad_factor"),
    (lambda: qx.levels("pot", True), TypeError, "bits"),
    (lambda: qx.levels(3, 4), TypeError, "scheme"),
    (lambda: qx.uniform_bounds(True, True), TypeError, "bits"),
    (lambda: qx.apot_decode_table(4.0), TypeError, "bits"),
    (lambda: Quantizer(QuantSpec())(None), TypeError, "tensor"),
]


@pytest.mark.parametrize("call,exc,match", BAD_ARGS)
def test_bad_arguments_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("dtype, scale", [(torch.float32, 1e-39), (torch.float32, 2.0**-127),
                                          (torch.float64, 1e-310)])
def test_subnormal_scale_is_an_error(dtype, scale):
    """Item 7: a subnormal scale has no finite reciprocal (0 * inf = NaN): an error naming it,
    not a NaN output. The smallest normal scale still works, bit-exact with ATen."""
    x = torch.tensor([0.0, 1e-39], dtype=dtype)
    with pytest.raises(ValueError, match=r"scale must be normal \(at least .*\), got "):
        qx.fake_quant_uniform(x, torch.tensor(scale, dtype=dtype), torch.tensor(0, dtype=torch.int32), -128, 127)
    tiny = torch.tensor(torch.finfo(torch.float32).tiny)
    y = qx.fake_quant_uniform(x.float(), tiny, torch.tensor(0, dtype=torch.int32), -128, 127)
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x.float(), float(tiny), 0, -128, 127))
