"""A prepared QAT model under torch.compile(fullgraph=True) and under bf16
autocast: no graph break, same outputs and gradients as eager."""

import copy

import pytest
import torch
from torch import nn

import quantext as qx
from qat_models import INPUT_SHAPE, batches, prepared_cnn


def calibrated(device: str) -> nn.Module:
    model = prepared_cnn(0).to(device)
    qx.calibrate(model, [x.to(device) for x, _ in batches(1, 2)], progress=False)
    return model


def loss_and_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    loss = nn.functional.cross_entropy(model(x), y)
    params = [p for p in model.parameters() if p.requires_grad]
    return loss, torch.autograd.grad(loss, params)


def test_compile_fullgraph_matches_eager(device):
    eager = calibrated(device)
    compiled_model = copy.deepcopy(eager)
    backend = "inductor" if device == "cuda" else "aot_eager"
    compiled = torch.compile(compiled_model, fullgraph=True, backend=backend)
    x, y = (t.to(device) for t in batches(2, 1)[0])
    for mode in ("train", "eval"):
        getattr(eager, mode)()
        getattr(compiled_model, mode)()
        loss_e, grads_e = loss_and_grads(eager, x, y)
        loss_c, grads_c = loss_and_grads(compiled, x, y)
        # aot_eager runs the same kernels: bit-identical. Inductor may fuse the
        # float ops around the quantizers differently.
        tol = dict(rtol=0, atol=0) if backend == "aot_eager" else dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loss_c, loss_e, **tol)
        for a, b in zip(grads_c, grads_e):
            torch.testing.assert_close(a, b, **tol)


def test_bf16_autocast_training(device):
    model = calibrated(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for x, y in batches(3, 3):
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            out = model(x)
            loss = nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        for name, p in model.named_parameters():
            assert torch.isfinite(p).all(), name
            assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert out.shape == (INPUT_SHAPE[0], 5)
