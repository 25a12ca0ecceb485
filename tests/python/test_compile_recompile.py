"""torch.compile of a whole QAT training step (forward, loss, backward, SGD step)
of a prepared model: it compiles once per documented phase (docs/compile.md),
not once per step, and computes what eager mode computes.

Each phase's first step may compile; its later steps run under
``error_on_recompile``. ``freeze_bn_after`` crosses its step inside a phase
without a recompile; the freeze becomes a graph change (one compile) at the
next sync point (``train()``)."""

import copy

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch import nn

import quantext as qx
from quantext.nn import QuantConvBn2d, QuantConvBnReLU2d

SHAPE = (4, 3, 10, 10)
FREEZE_AT = 3
TOL = dict(rtol=1e-4, atol=1e-5)


class ResNetlet(nn.Module):
    """Conv-BN-ReLU stem, a residual block (two conv-BN, an add), avgpool, linear.
    One BN has ``momentum=None`` (cumulative average, a tensor factor)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8, momentum=None)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(self.pool(torch.relu(x + y)).flatten(1))


def data(seed: int, count: int, device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(SHAPE, generator=g).to(device), torch.randint(0, 5, (SHAPE[0],), generator=g).to(device))
            for _ in range(count)]


def prepared(device: str, bn_stats: str = "exact") -> nn.Module:
    torch.manual_seed(0)
    model = qx.prepare_qat(ResNetlet(), qx.QConfig.uniform(bits=8), example_inputs=(torch.randn(SHAPE),),
                           freeze_bn_after=FREEZE_AT, bn_stats=bn_stats).to(device)
    qx.calibrate(model, [x for x, _ in data(1, 2, device)], progress=False)
    return model.train()


def train_step(model: nn.Module):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(x)
        loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # at the end: every step starts without .grad (the same guards)
        return loss.detach(), out.detach()

    return step


def conv_bns(model: nn.Module) -> list[QuantConvBn2d]:
    mods = [m for m in model.modules() if isinstance(m, QuantConvBn2d)]
    assert len(mods) == 3
    return mods


class Harness:
    """A compiled training step on ``model`` and the eager step on a copy, run side by side."""

    def __init__(self, model: nn.Module, device: str, backend: str = "aot_eager") -> None:
        torch._dynamo.reset()
        self.model, self.eager_model = model, copy.deepcopy(model)
        self.counter = torch._dynamo.testing.CompileCounterWithBackend(backend)
        self.compiled = torch.compile(train_step(model), backend=self.counter)
        self.eager = train_step(self.eager_model)
        self.batches = iter(data(2, 100, device))

    def both(self, fn) -> None:
        """Applies a phase change to both models."""
        fn(self.model)
        fn(self.eager_model)

    def phase(self, steps: int) -> int:
        """Runs ``steps`` steps; returns how many frames the first one compiled (the others may compile none)."""
        before = self.counter.frame_count
        for k in range(steps):
            x, y = next(self.batches)
            with torch._dynamo.config.patch(error_on_recompile=k > 0):
                loss_c, out_c = self.compiled(x, y)
            loss_e, out_e = self.eager(x, y)
            torch.testing.assert_close(out_c, out_e, **TOL)
            torch.testing.assert_close(loss_c, loss_e, **TOL)
            if k == 0:
                compiled_first = self.counter.frame_count - before
        assert self.counter.frame_count - before == compiled_first
        self.check_state()
        return compiled_first

    def check_state(self) -> None:
        got, want = self.model.state_dict(), self.eager_model.state_dict()
        assert got.keys() == want.keys()
        for name in got:
            if isinstance(got[name], torch.Tensor):
                torch.testing.assert_close(got[name], want[name], **TOL, msg=lambda m: f"{name}: {m}")
            else:  # extra state
                assert got[name] == want[name], name


def test_training_step_compiles_once_per_phase(device):
    h = Harness(prepared(device), device)
    mods = conv_bns(h.model)

    # Training with batch statistics; freeze_bn_after=3 is crossed on the device: steps 4 and 5 already run
    # with the running statistics, through the same graph.
    assert h.phase(FREEZE_AT) >= 1
    assert all(int(m.qat_steps) == FREEZE_AT and int(m.bn_frozen) == 1 for m in mods)
    assert all(m._get_mirrored("bn_frozen") == 0 for m in mods)  # the Python copy is behind: no guard changed
    stats = [m.bn.running_mean.clone() for m in mods]
    assert h.phase(2) == 0
    assert all(int(m.qat_steps) == FREEZE_AT and int(m.bn.num_batches_tracked) == FREEZE_AT for m in mods)
    assert all(torch.equal(m.bn.running_mean, s) for m, s in zip(mods, stats))  # frozen since step 3

    # train() is a sync point: the Python copy catches up, the frozen graph (no batch statistics) compiles once.
    h.both(lambda m: m.train())
    assert all(m.is_bn_frozen and m._get_mirrored("bn_frozen") == 1 for m in mods)
    assert h.phase(3) == 1

    # Quantization off, then on again: one compile, then the frozen graph compiled before is reused.
    h.both(qx.disable_quant)
    assert h.phase(2) == 1
    h.both(qx.enable_quant)
    assert h.phase(2) == 0

    # Calibration runs eagerly and ends with the flags as before: the compiled graph still applies.
    calib = [x for x, _ in data(3, 2, device)]
    h.both(lambda m: qx.calibrate(m, calib, progress=False))
    assert h.phase(2) == 0

    # eval: a compiled evaluation compiles once; back to training reuses the training graph.
    h.both(lambda m: m.eval())
    evaluate = torch.compile(lambda x: h.model(x), backend=h.counter)
    before = h.counter.frame_count
    for k in range(2):
        x, _ = next(h.batches)
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=k > 0):
            torch.testing.assert_close(evaluate(x), h.eager_model(x), **TOL)
    assert h.counter.frame_count - before == 1
    h.both(lambda m: m.train())
    assert h.phase(2) == 0


def test_approx_bn_stats_and_explicit_freeze_bn(device):
    """bn_stats="approx"; the stem without freeze_bn_after (batch statistics unconditionally), the block's
    convs crossing it; then qx.freeze_bn, the one phase change."""
    h = Harness(prepared(device, bn_stats="approx"), device)
    stem, *block = conv_bns(h.model)
    h.both(lambda m: setattr(m.get_submodule("stem.0"), "freeze_bn_after", None))
    assert h.phase(FREEZE_AT + 2) >= 1
    assert int(stem.qat_steps) == FREEZE_AT + 2 and not stem.is_bn_frozen
    assert all(int(m.qat_steps) == FREEZE_AT and int(m.bn_frozen) == 1 for m in block)
    h.both(qx.freeze_bn)
    assert h.phase(2) == 1
    assert int(stem.qat_steps) == FREEZE_AT + 2 and stem.is_bn_frozen


@pytest.mark.slow
def test_inductor_crosses_freeze_bn_after_without_recompile(device):
    """Inductor (about 40 s of C++ compilation on a 2-core CPU with a cold cache): one BN-folded conv,
    forward and backward, over the freeze_bn_after step."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    float_parts = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    module = QuantConvBnReLU2d.from_float(float_parts, qx.QConfig.uniform(bits=8), freeze_bn_after=2).to(device)
    qx.calibrate(module, [torch.randn(2, 3, 6, 6, device=device)], progress=False)
    module.train()
    eager = copy.deepcopy(module)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(module, backend=counter)
    for k in range(4):
        x = torch.randn(2, 3, 6, 6, device=device)
        with torch._dynamo.config.patch(error_on_recompile=k > 0):
            got = compiled(x)
        got.square().sum().backward()
        want = eager(x)
        want.square().sum().backward()
        torch.testing.assert_close(got, want, **TOL)
    assert counter.frame_count == 1
    for (name, p), q in zip(module.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=lambda m: f"{name}.grad: {m}")
    for name, b in module.named_buffers():
        torch.testing.assert_close(b, eager.get_buffer(name), **TOL, msg=lambda m: f"{name}: {m}")
    assert int(module.qat_steps) == 2 and module.is_bn_frozen


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="bn_stats='approx' under inductor: weight gradients differ from eager "
                   "(docs/bn_folding.md); when this passes, approx can become the default")
def test_inductor_approx_bn_stats_gradients(device):
    torch._dynamo.reset()
    torch.manual_seed(0)
    float_parts = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    module = QuantConvBnReLU2d.from_float(float_parts, qx.QConfig.uniform(bits=8), freeze_bn_after=2,
                                          bn_stats="approx").to(device)
    qx.calibrate(module, [torch.randn(2, 3, 6, 6, device=device)], progress=False)
    module.train()
    eager = copy.deepcopy(module)
    compiled = torch.compile(module, backend="inductor")
    for _ in range(4):
        x = torch.randn(2, 3, 6, 6, device=device)
        compiled(x).square().sum().backward()
        eager(x).square().sum().backward()
    for p, q in zip(module.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL)
