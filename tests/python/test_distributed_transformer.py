"""QAT of a small transformer under DDP and FSDP2 (issue 19, item 6): two CPU
processes (gloo) launched by torchrun (distributed_worker.py) train it with
learned (LSQ) scales; the ranks agree, equal a single-process run, hold the
quantizer state as docs/distributed.md says, and their
torch.distributed.checkpoint checkpoints load into one process."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict, set_state_dict

import quantext as qx
import distributed_worker as w

RUNS = [f"{wrapper}-{qconfig}" for wrapper in w.WRAPPERS for qconfig in w.QCONFIGS]
TOLERANCE = dict(rtol=1e-5, atol=1e-6)  # float32 sums in another order (per-rank halves, all-reduce)


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[list[dict], Path]:
    """One torchrun launch for every test here (process start-up is most of the cost)."""
    out = tmp_path_factory.mktemp("distributed")
    here = Path(__file__).parent
    # The workers import the quantext this test imports (a clone's, not the one the venv points at).
    path = [str(Path(qx.__file__).parent.parent), str(here), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={w.WORLD}",
           str(here / "distributed_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(w.WORLD)], out


@pytest.fixture(scope="module")
def reference() -> dict[str, dict]:
    """The single-process run per qconfig: calibrated on all the data, each
    global batch as WORLD micro-batches (the ranks' rows) with accumulated
    gradients, which is what data parallelism computes (see
    test_lsq_activation_gradient_scale_counts_the_elements_a_process_sees)."""
    out = {}
    for name in w.QCONFIGS:
        model = qx.calibrate(w.prepared(name), w.calibration_batches(), progress=False)
        calibrated = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
        opt = w.optimizer(model)
        losses = w.train(model, opt, w.training_batches(), micro=w.WORLD)
        out[name] = {"model": model, "optimizer": opt, "calibrated": calibrated, "losses": losses}
    return out


def _assert_states_close(got: dict, expected: dict, **tolerance) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if not isinstance(value, torch.Tensor):  # a quantizer's saved spec
            assert got[key] == value, key
        elif value.is_floating_point():
            torch.testing.assert_close(got[key], value, **tolerance, msg=lambda m: f"{key}: {m}")
        else:  # flags, integer zero points
            assert torch.equal(got[key], value), key


def _learned(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the learned quantizer parameters."""
    return [f"{name}.{p}" for name, q in qx.quantizers(model) for p, _ in q.named_parameters(recurse=False)]


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_ranks_hold_the_same_model_after_training(launched, run):
    ranks, _ = launched
    # The gathered state, every buffer included: fully_shard does not broadcast buffers, so the quantizers'
    # buffers (scales fixed by calibration, flags, observer ranges) agree only because every rank computes them.
    _assert_states_close(ranks[1][run]["state"], ranks[0][run]["state"], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_training_equals_the_single_process_run(launched, reference, run):
    ranks, _ = launched
    ref = reference[run.split("-")[1]]
    for rank, result in enumerate(ranks):
        # Calibration reduced the observers over both ranks: the single-process ranges of all the data, exactly.
        assert result[run]["calibrated"].keys() == ref["calibrated"].keys()
        for key, value in ref["calibrated"].items():
            assert torch.equal(result[run]["calibrated"][key], value), key
        torch.testing.assert_close(torch.tensor(result[run]["losses"]).flatten(),
                                   torch.tensor(ref["losses"])[:, rank], **TOLERANCE)
    _assert_states_close(ranks[0][run]["state"], ref["model"].state_dict(), **TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_learned_scales_are_updated_and_calibrated_ones_kept(launched, reference, run):
    ranks, _ = launched
    result, qconfig = ranks[0][run], run.split("-")[1]
    model = reference[qconfig]["model"]
    learned = _learned(model)
    activations = [f"{name}.scale" for name, q in qx.quantizers(model) if q.role == "activation"]
    # lsq: the activations' scales are learned too; static: they are buffers.
    assert set(activations) <= set(learned) if qconfig == "lsq" else not set(activations) & set(learned)
    for key in (k for k in learned if k.endswith(".scale")):  # every learned scale moved, 10x TOLERANCE at least
        change = (result["state"][key] - result["calibrated"][key]).abs().max() / result["calibrated"][key].abs().max()
        assert change > 10 * TOLERANCE["rtol"], (key, float(change))
    for key in activations if qconfig == "static" else ():  # buffers: what calibration set, bit for bit
        assert torch.equal(result["state"][key], result["calibrated"][key]), key


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_quantizer_state_is_sharded_or_replicated(launched, reference, run):
    ranks, _ = launched
    wrapper, qconfig = run.split("-")
    model = reference[qconfig]["model"]
    shapes = {**{n: tuple(p.shape) for n, p in model.named_parameters()},
              **{n: tuple(b.shape) for n, b in model.named_buffers()}}
    parameters = {n for n, _ in model.named_parameters()}
    scalars = sorted(n for n, p in model.named_parameters() if p.ndim == 0)
    assert bool(scalars) == (qconfig == "lsq")  # per-tensor LSQ scales and LSQ+ zero points are 0-dim
    assert [n for n in scalars if "quantizer." not in n] == []
    for rank, result in enumerate(ranks):
        layout = result[run]["layout"]
        assert layout.keys() == shapes.keys()
        assert sorted(result[run]["replicated"]) == (scalars if wrapper == "fsdp2" else [])
        for name, (kind, placements, local) in layout.items():
            if wrapper == "fsdp2" and name in parameters and name not in scalars:
                # Shard(0), in torch.chunk's pieces: a 47-channel scale is 24 + 23.
                assert (kind, placements) == ("DTensor", ("Shard(dim=0)",)), name
                assert local == tuple(torch.empty(shapes[name]).chunk(w.WORLD)[rank].shape), name
            else:  # DDP's replicas, the parameters fully_shard was told to ignore, every buffer
                assert (kind, local) == ("Parameter" if name in parameters else "Tensor", shapes[name]), name


@pytest.mark.slow
def test_unsupported_fsdp2_setups_fail_loudly(launched):
    ranks, _ = launched
    for result in ranks:
        errors = result["limitations"]
        assert errors["scalar_parameters"].startswith("ValueError: fully_shard doesn't support scalar parameters")
        # The block's forward never runs in prepare_qat's graph, so its parameters are never all-gathered.
        assert "got mixed torch.Tensor and DTensor" in errors["block_forward"]
        assert "calibrate before fully_shard" in errors["calibrate_learned_after_sharding"]
        assert "scale must be float32" in errors["bf16_scales"]  # MixedPrecisionPolicy cast the scales too
        before, after = result["calibrated_before_and_after_sharding"]  # buffers only: calibrating after is fine
        _assert_states_close(after, before, rtol=0, atol=0)


@pytest.mark.slow
def test_bf16_mixed_precision_with_float32_quantizer_groups(launched, reference):
    ranks, _ = launched
    run, ref = "bf16-lsq", reference["lsq"]
    _assert_states_close(ranks[1][run]["state"], ranks[0][run]["state"], rtol=0, atol=0)
    state, calibrated = ranks[0][run]["state"], ranks[0][run]["calibrated"]
    for key in _learned(ref["model"]):
        assert state[key].dtype == torch.float32, key
        if key.endswith(".scale"):
            assert not torch.equal(state[key], calibrated[key]), key
    # bfloat16 layers (8 significant bits): the float32 run's losses to a few percent (measured: 0.9%).
    torch.testing.assert_close(torch.tensor(ranks[0][run]["losses"]).flatten(), torch.tensor(ref["losses"])[:, 0],
                               rtol=3e-2, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_dcp_checkpoint_loads_into_one_process(launched, reference, run, tmp_path):
    ranks, out = launched
    ref = reference[run.split("-")[1]]
    # A fresh model (other weights, uncalibrated) and optimizer (no state yet) of the same configuration.
    model = w.prepared(run.split("-")[1], seed=1)
    opt = w.optimizer(model)
    dcp_to_torch_save(out / run, tmp_path / "full.pt")
    saved = torch.load(tmp_path / "full.pt", weights_only=True)
    set_state_dict(model, opt, model_state_dict=saved["model"], optim_state_dict=saved["optim"])
    assert all(q.calibrated and q.enabled for _, q in qx.quantizers(model))
    _assert_states_close(model.state_dict(), ranks[0][run]["state"], rtol=0, atol=0)
    loaded = {n: opt.state[p] for n, p in model.named_parameters()}
    for name, p in ref["model"].named_parameters():  # Adam's moments and step counts
        _assert_states_close(loaded[name], ref["optimizer"].state[p], **TOLERANCE)
    ids = w.token_batches(3, 1)[0]
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref["model"](ids), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("qconfig", list(w.QCONFIGS))
def test_fsdp2_run_resumed_from_dcp_continues_identically(launched, qconfig):
    """The step after the checkpoint, taken by the run that saved it and by a
    new one (fresh model, calibrated, sharded) that loaded it: the same bits,
    so model, optimizer moments and step counts were all restored."""
    ranks, _ = launched
    key = "head.weight_quantizer.scale"
    for result in ranks:
        run = result[f"fsdp2-{qconfig}"]
        assert not torch.equal(run["continued"][key], run["state"][key])
        _assert_states_close(run["resumed"], run["continued"], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:torch.distributed is disabled, unavailable or uninitialized")
def test_dcp_in_place_load_needs_the_observer_shapes(launched):
    """dcp.load fills the tensors it is given: observer statistics start empty
    (shape [0]) and take their shape from data, so a model is calibrated
    (on any batch) before loading in place."""
    ranks, out = launched
    run = "fsdp2-lsq"
    model = w.prepared("lsq", seed=1)
    state = get_model_state_dict(model)
    with pytest.raises(CheckpointException, match=r"Size mismatch between saved torch.Size\(\[47\]\) and current: "
                                        r"torch.Size\(\[0\]\) for model.tok.weight_quantizer.observer.min_val"):
        dcp.load({"model": state}, checkpoint_id=out / run)
    qx.calibrate(model, w.token_batches(4, 1), progress=False)
    state = get_model_state_dict(model)
    dcp.load({"model": state}, checkpoint_id=out / run)
    set_model_state_dict(model, state)
    _assert_states_close(model.state_dict(), ranks[0][run]["state"], rtol=0, atol=0)


def _input_sizes(model: torch.nn.Module) -> dict[str, int]:
    """Filled by the next forward: each quantizer's input size (in elements)."""
    sizes: dict[str, int] = {}

    def record(q: qx.nn.Quantizer, args: tuple) -> None:
        sizes.setdefault(q.name, args[0].numel())  # the first micro-batch's

    for _, q in qx.quantizers(model):
        q.register_forward_pre_hook(record)
    return sizes


def test_lsq_activation_gradient_scale_counts_the_elements_a_process_sees():
    """LSQ's gradient scale 1/sqrt(n * qmax) takes n from the tensor a process
    quantizes: an activation of a per-rank batch of 1/WORLD the rows has 1/WORLD
    the elements, so data parallelism gives its scale (and LSQ+ zero point)
    sqrt(WORLD) times the gradient of one process running the global batch.
    Weights and the position embedding (no batch dimension) keep their n."""
    ids = w.training_batches()[0]
    grads, sizes = [], []
    for micro in (1, w.WORLD):
        model = qx.calibrate(w.prepared("lsq"), w.calibration_batches(), progress=False)
        sizes.append(_input_sizes(model))
        w.train(model, torch.optim.SGD(model.parameters(), lr=0.0), [ids], micro=micro)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    ratios = {name: sizes[0][name] // sizes[1][name] for name in sizes[0]}
    assert ratios["add_input1_quantizer"] == 1 and ratios["head.input_quantizer"] == w.WORLD  # pos; a batch
    for name, one_pass in grads[0].items():
        quantizer = name.rpartition(".")[0]
        factor = math.sqrt(ratios[quantizer]) if quantizer in ratios else 1.0  # a layer's own weight: 1
        torch.testing.assert_close(grads[1][name], one_pass * factor, rtol=1e-4, atol=1e-7,
                                   msg=lambda m: f"{name}: {m}")
