"""Checkpoints of prepared models: an interrupted and resumed QAT run is
bit-identical to an uninterrupted one; bad quantizer entries are errors."""

import io

import pytest
import torch

import quantext as qx
from qat_models import batches, prepared_cnn, train


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def calibrated(seed: int):
    model = prepared_cnn(seed, freeze_bn_after=6)
    qx.calibrate(model, batches(1, 2), progress=False)
    return model


def test_resumed_training_is_bit_identical():
    data = batches(2, 8)
    reference = calibrated(0)
    train(reference, sgd(reference), data)

    first = calibrated(0)
    opt = sgd(first)
    train(first, opt, data[:4])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    checkpoint = torch.load(buf)

    resumed = prepared_cnn(seed=1, freeze_bn_after=6)  # other initial weights, never calibrated
    resumed_opt = sgd(resumed)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    train(resumed, resumed_opt, data[4:])

    want, got = reference.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        if isinstance(want[key], torch.Tensor):
            assert torch.equal(want[key], got[key]), key
        else:  # a quantizer's saved spec (_extra_state)
            assert want[key] == got[key], key
    assert resumed.get_submodule("stem.0").is_bn_frozen  # frozen after step 6, counted across the checkpoint


def test_missing_or_misshaped_quantizer_entries_are_errors():
    model = calibrated(0)
    state = model.state_dict()
    del state["conv1.input_quantizer.scale"]
    with pytest.raises(RuntimeError, match=r"Quantizer 'conv1.input_quantizer': the state dict has no \['scale'\]"):
        prepared_cnn(0).load_state_dict(state, strict=False)
    state = model.state_dict()
    state["conv2.weight_quantizer.scale"] = torch.ones(3)
    with pytest.raises(RuntimeError, match="size mismatch for conv2.weight_quantizer.scale"):
        prepared_cnn(0).load_state_dict(state)
