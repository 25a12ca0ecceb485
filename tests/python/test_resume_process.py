"""Checkpoint/resume across processes: a QAT run trained in one process,
checkpointed, killed, and resumed in a fresh process ends bit-identical to an
uninterrupted run (CPU), both with qx.save_checkpoint/load_checkpoint and with
plain torch.save/torch.load(weights_only=True). Truncated, corrupted or
mismatched checkpoint files are clear errors that load nothing.

Run as a script, this file is the training worker the tests start.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import quantext as qx
from qat_models import batches, prepared_cnn

STEPS, CHECKPOINT_AT, FREEZE_BN_AT = 12, 5, 8  # BN freezes after the checkpoint: its step counter must carry over
TIMEOUT = 300


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-4)


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, start: int, stop: int, on_step) -> None:
    data = batches(2, 8)
    model.train()
    for step in range(start, stop):
        x, y = data[step % len(data)]
        x = x + 0.05 * torch.randn_like(x)  # noise from the global RNG: resuming must restore its state
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        on_step(step + 1, model, opt)


def save(kind: str, path: str, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    if kind == "helper":
        qx.save_checkpoint(path, model, opt, extra={"step": step})
    else:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                    "step": step}, path)


def load(kind: str, path: str, model: nn.Module, opt: torch.optim.Optimizer) -> int:
    if kind == "helper":
        return qx.load_checkpoint(path, model, opt)["step"]
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return state["step"]


def worker(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kind", choices=("helper", "torch"), default="helper")
    p.add_argument("--resume")  # checkpoint to continue from
    p.add_argument("--checkpoint")  # where to checkpoint after CHECKPOINT_AT steps (then keep training)
    p.add_argument("--final")  # where to write the final state
    p.add_argument("--hang", action="store_true")  # after training, wait to be killed
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.resume:
        model = prepared_cnn(seed=1, freeze_bn_after=FREEZE_BN_AT)  # other weights, never calibrated
        opt = make_optimizer(model)
        start = load(args.kind, args.resume, model, opt)
    else:
        model = prepared_cnn(seed=0, freeze_bn_after=FREEZE_BN_AT)
        qx.calibrate(model, batches(1, 2), progress=False)
        opt = make_optimizer(model)
        torch.manual_seed(1234)
        start = 0

    def on_step(step, model, opt):
        if args.checkpoint and step == CHECKPOINT_AT:
            save(args.kind, args.checkpoint, model, opt, step)
            print("SAVED", flush=True)

    train_steps(model, opt, start, STEPS, on_step)
    if args.final:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, args.final)
    if args.hang:
        time.sleep(TIMEOUT)


# ------------------------------------------------------------------- tests --
def start_worker(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, __file__, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_worker(*args: str) -> None:
    proc = start_worker(*args)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, f"worker {args} failed:\n{err}"


def assert_same(a, b, where: str) -> None:
    """Nested state dicts equal: tensors bit for bit (same dtype), everything else by ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            assert_same(u, v, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    path = str(tmp_path_factory.mktemp("reference") / "final.pt")
    run_worker("--final", path)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("kind", ["helper", "torch"])
def test_killed_and_resumed_run_is_bit_identical(kind, uninterrupted, tmp_path):
    checkpoint, final = str(tmp_path / "checkpoint.pt"), str(tmp_path / "final.pt")
    first = start_worker("--kind", kind, "--checkpoint", checkpoint, "--hang")
    try:
        line = first.stdout.readline()  # blocks until the checkpoint is on disk (or the worker died)
        assert line.strip() == "SAVED", f"worker said {line!r}:\n{first.stderr.read() if first.poll() else ''}"
    finally:
        first.kill()  # mid-training, or waiting: either way no clean exit
        first.communicate(timeout=TIMEOUT)
    assert first.returncode != 0
    run_worker("--kind", kind, "--resume", checkpoint, "--final", final)
    resumed = torch.load(final, weights_only=True)
    assert_same(resumed, uninterrupted, "state")
    assert resumed["model"]["stem.0.bn_frozen"].item() == 1  # froze after step 8, counted across the checkpoint


# ------------------------------------------------------- damaged checkpoints --
def small_model(seed: int = 0) -> nn.Module:
    model = prepared_cnn(seed)
    qx.calibrate(model, batches(1, 1), progress=False)
    return model


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert_same(dict(model.state_dict()), before, "model")


@pytest.fixture
def saved(tmp_path):
    model = small_model(0)
    opt = make_optimizer(model)
    train_steps(model, opt, 0, 2, lambda *a: None)
    path = str(tmp_path / "ckpt.pt")
    qx.save_checkpoint(path, model, opt, extra={"step": 2})
    return path, model


def target():
    model = small_model(1)
    return model, make_optimizer(model), snapshot(model)


def test_round_trip_in_process(saved):
    path, source = saved
    model, opt, _ = target()
    assert qx.load_checkpoint(path, model, opt) == {"step": 2}
    assert_same(dict(model.state_dict()), dict(source.state_dict()), "model")
    # The file is an ordinary torch.save file.
    assert torch.load(path, weights_only=True)["format"] == "quantext-checkpoint"


@pytest.mark.parametrize("keep", [0.5, 0.99, 10])
def test_truncated_file_is_an_error_that_loads_nothing(saved, keep):
    path, _ = saved
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep) if keep < 1 else keep)
    model, opt, before = target()
    with pytest.raises(qx.CheckpointError, match=r"checkpoint '.*ckpt.pt' cannot be read \(truncated or corrupted\?\)"):
        qx.load_checkpoint(path, model, opt)
    assert_untouched(model, before)


def test_corrupted_tensor_bytes_are_detected(saved):
    path, source = saved
    raw = source.state_dict()["head.weight"].numpy().tobytes()
    data = bytearray(open(path, "rb").read())
    at = data.find(raw)
    assert at >= 0  # torch.save stores tensor payloads uncompressed
    data[at + len(raw) // 2] ^= 0x40
    open(path, "wb").write(bytes(data))
    torch.load(path, weights_only=True)  # torch itself loads the wrong values without complaint
    model, opt, before = target()
    with pytest.raises(qx.CheckpointError, match="is corrupted: its content does not match its SHA-256 digest"):
        qx.load_checkpoint(path, model, opt)
    assert_untouched(model, before)


def test_checkpoint_of_another_model_loads_nothing(saved):
    path, _ = saved
    other = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(qx.CheckpointError, match=r"does not fit this model: missing \['0.bias', '0.weight'\]"):
        qx.load_checkpoint(path, other)
    model, _, before = target()
    del model.head  # the checkpoint has entries this model lacks
    with pytest.raises(qx.CheckpointError, match=r"missing \[\], unexpected \['head.bias'"):
        qx.load_checkpoint(path, model)


def test_not_a_quantext_checkpoint(tmp_path):
    path = str(tmp_path / "plain.pt")
    model, opt, before = target()
    torch.save(model.state_dict(), path)
    with pytest.raises(qx.CheckpointError, match="is not a quantext checkpoint"):
        qx.load_checkpoint(path, model, opt)
    qx.save_checkpoint(path, model)
    with pytest.raises(qx.CheckpointError, match="holds no optimizer state"):
        qx.load_checkpoint(path, model, opt)


def test_pickled_objects_are_refused(tmp_path):
    path = str(tmp_path / "object.pt")
    model, _, _ = target()
    with pytest.raises(TypeError, match=r"extra\['callback'\] is a argparse.Namespace"):
        qx.save_checkpoint(path, model, extra={"callback": argparse.Namespace(x=1)})
    # a file written by other means (or an older quantext) holding an object: refused, never run
    from quantext import checkpoint as ck
    content = {"model": model.state_dict(), "optimizer": None, "rng": None,
               "extra": {"callback": argparse.Namespace(x=1)}}
    torch.save({"format": ck.FORMAT, "version": ck.VERSION, **content, "sha256": ck._digest(content)}, path)
    with pytest.raises(qx.CheckpointError, match="refuses to unpickle"):
        qx.load_checkpoint(path, model)


def test_failed_save_keeps_the_previous_checkpoint(saved, monkeypatch):
    path, _ = saved
    before = open(path, "rb").read()

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # as if the process were interrupted mid-write

    monkeypatch.setattr(torch, "save", crash)
    model, opt, _ = target()
    with pytest.raises(KeyboardInterrupt):
        qx.save_checkpoint(path, model, opt)
    assert open(path, "rb").read() == before
    assert os.listdir(os.path.dirname(path)) == ["ckpt.pt"]  # no temporary file left behind


if __name__ == "__main__":
    worker(sys.argv[1:])
