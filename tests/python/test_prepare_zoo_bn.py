"""Every BatchNorm is handled (issue 17, items 3 and 4): folded into the conv
before it, otherwise turned by ``convert`` into a per-channel affine that
exports and runs in ONNX Runtime; and folding never gives NaN or inf."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import quantext as qx
from quantext.export.module_checks import check_modules
from quantext.nn import ChannelAffine, QuantConvBn2d
from quantext.nn.affine import INFERENCE_FORMS

tvm = pytest.importorskip("torchvision.models")
ort = pytest.importorskip("onnxruntime")


class PostAddBN(nn.Module):
    """A BN after a residual add, and BatchNorm1d after a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc, self.bn1d, self.head = nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = self.bn(y + self.conv2(y))
        y = y.mean(dim=(2, 3))
        return self.head(torch.relu(self.bn1d(self.fc(y))))


def _densenet() -> nn.Module:
    # torchvision's DenseNet at toy size: conv0 -> norm0 folds; every block's norm -> relu -> conv and norm5 do not.
    return tvm.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10)


def _qat(model: nn.Module, x: torch.Tensor, qconfig: qx.QConfig) -> nn.Module:
    """prepare -> calibrate -> 2 SGD steps -> freeze_bn (the README's flow)."""
    prepared = qx.prepare_qat(model, qconfig, example_inputs=(x,))
    qx.calibrate(prepared, [torch.randn_like(x) for _ in range(2)], progress=False)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01)
    prepared.train()
    for _ in range(2):
        opt.zero_grad()
        out = prepared(torch.randn(8, *x.shape[1:]))
        nn.functional.mse_loss(out, torch.randn_like(out)).backward()
        opt.step()
    return qx.freeze_bn(prepared)


@pytest.mark.parametrize("build, shape", [(_densenet, (2, 3, 32, 32)), (PostAddBN, (2, 3, 16, 16))],
                         ids=["densenet", "post_add_bn"])
@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime"])
def test_unfolded_batchnorm_converts_exports_and_runs(build, shape, backend, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(shape)
    model = build()
    prepared = _qat(model, x, qx.QConfig.uniform(8, backend=backend))
    fused = {n for n, m in prepared.named_modules() if isinstance(m, QuantConvBn2d)}
    standalone = [n for n, m in prepared.named_modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and n.rpartition(".")[0] not in fused]
    assert standalone  # the models do hold BNs that follow no conv
    assert all(type(prepared.get_submodule(n)) in INFERENCE_FORMS.values() for n in standalone)
    converted = qx.convert(prepared)
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, QuantConvBn2d)) for m in converted.modules())
    assert all(isinstance(converted.get_submodule(n), ChannelAffine) for n in standalone)
    with torch.no_grad():
        expected = prepared.eval()(x)
        got = converted(x)
    assert torch.equal(got, expected)  # the prepared BNs' eval mode is the affine convert makes
    check_modules(converted)  # the exporter's module check accepts what convert made
    path = qx.export_onnx(converted, (x,), tmp_path / "m.onnx", verify=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.array_equal(onnx_out.argmax(1), got.argmax(1).numpy())


@pytest.mark.parametrize("kind, shape", [(nn.BatchNorm1d, (4, 6)), (nn.BatchNorm2d, (4, 6, 5, 5)),
                                         (nn.BatchNorm3d, (2, 6, 2, 3, 3))])
def test_inference_form_trains_as_batchnorm_and_evaluates_as_its_affine(kind, shape):
    """prepare_qat's standalone BatchNorms: training mode, state and state_dict are
    BatchNorm's; eval mode is bit for bit the ChannelAffine convert makes."""
    torch.manual_seed(0)
    bn = kind(6, momentum=0.3)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    form = INFERENCE_FORMS[kind].from_batchnorm(bn)
    assert isinstance(form, kind) and form.state_dict().keys() == bn.state_dict().keys()
    for _ in range(3):
        x = torch.randn(shape) * 3 + 1
        torch.testing.assert_close(form(x), bn(x), rtol=0, atol=0)
    for a, b in zip(form.state_dict().values(), bn.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(shape)
    assert torch.equal(form.eval()(x), ChannelAffine.from_batchnorm(form)(x))
    torch.testing.assert_close(form(x), bn.eval()(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        form(torch.randn(2, 6, 1, 1, 1, 1))


def test_export_still_refuses_an_unconverted_batchnorm():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1))
    with pytest.raises(ValueError, match=r"module '0' \(BatchNorm2d\) is not folded: call qx.convert"):
        check_modules(model)


def test_channel_affine_equals_eval_batchnorm():
    torch.manual_seed(0)
    for bn, x in ((nn.BatchNorm2d(6), torch.randn(2, 6, 5, 5)), (nn.BatchNorm1d(6), torch.randn(3, 6)),
                  (nn.BatchNorm1d(6, affine=False), torch.randn(3, 6, 4)), (nn.BatchNorm3d(6), torch.randn(1, 6, 2, 3, 3))):
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.1, 3)
        if bn.affine:
            nn.init.normal_(bn.weight)
            nn.init.normal_(bn.bias)
        affine = ChannelAffine.from_batchnorm(bn.eval())
        torch.testing.assert_close(affine(x), bn(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"expects input of shape \[N, 6, \.\.\.\]"):
        affine(torch.randn(2, 5, 3))


def _planted(conv_bias: bool = True, eps: float = 1e-5) -> QuantConvBn2d:
    """A frozen QuantConvBn2d (quantization off) with degenerate channels:
    0 dead (var 0), 1 gamma 0, 2 var 1e-30, 3 huge mean (|gamma * mean| > float32 max), 4 ordinary."""
    torch.manual_seed(0)
    float_parts = nn.Sequential(nn.Conv2d(3, 5, 3, bias=conv_bias), nn.BatchNorm2d(5, eps=eps))
    m = QuantConvBn2d.from_float(float_parts, qx.QConfig.uniform(8))
    with torch.no_grad():
        m.bn.running_var.copy_(torch.tensor([0.0, 1.0, 1e-30, 1e4, 2.0]))
        m.bn.running_mean.copy_(torch.tensor([0.5, 3.0, -1.0, 1e37, 0.1]))
        m.bn.weight.copy_(torch.tensor([1.5, 0.0, 2.0, 100.0, 0.7]))
        m.bn.bias.copy_(torch.tensor([0.25, -1.0, 0.5, 3.0, 0.0]))
    for q in (m.weight_quantizer, m.input_quantizer):
        q.disable()
    return m.freeze_bn().eval()


def _reference(m: QuantConvBn2d, x: torch.Tensor) -> torch.Tensor:
    """conv then eval BatchNorm in float64, a zero-width channel's limit being beta."""
    w, b = m.weight.double(), (m.bias.double() if m.bias is not None else None)
    y = nn.functional.conv2d(x.double(), w, b)
    bn = m.bn
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    factor = torch.where(std > 0, bn.weight.double() / std.clamp_min(1e-300), torch.zeros_like(std))
    return (y - bn.running_mean.double().reshape(-1, 1, 1)) * factor.reshape(-1, 1, 1) + bn.bias.double().reshape(-1, 1, 1)


@pytest.mark.parametrize("eps", [1e-5, 0.0])
@pytest.mark.parametrize("conv_bias", [True, False])
def test_fold_of_degenerate_statistics_is_finite_and_exact(eps, conv_bias):
    m = _planted(conv_bias, eps)
    x = torch.randn(2, 3, 6, 6)
    folded = m.fold("layer")
    assert torch.isfinite(folded.weight).all() and torch.isfinite(folded.bias).all()
    assert torch.isfinite(m.folded_weight()).all() and torch.isfinite(m.folded_bias()).all()
    with torch.no_grad():
        frozen, converted = m(x), folded(x)
    assert torch.isfinite(frozen).all()
    assert torch.equal(converted, frozen)
    ref = _reference(m, x).float()
    assert torch.equal(frozen[:, 1], torch.full_like(frozen[:, 1], -1.0))  # gamma 0: exactly beta
    for c in range(ref.shape[1]):  # channels of 1e15 and 1e37: each on its own scale
        torch.testing.assert_close(frozen[:, c], ref[:, c], rtol=1e-4, atol=1e-5 * ref[:, c].abs().max().item())
    if eps == 0.0:  # the dead channel folds to its limit, beta
        assert torch.equal(frozen[:, 0], torch.full_like(frozen[:, 0], 0.25))


def test_training_forward_of_a_dead_channel_is_finite():
    """eps = 0 and a channel that is constant in the batch: BN's limit (beta), not 0/0."""
    torch.manual_seed(0)
    float_parts = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, eps=0.0))
    with torch.no_grad():
        float_parts[0].weight[0] = 0.0  # channel 0 is its bias: constant
    m = QuantConvBn2d.from_float(float_parts, qx.QConfig.uniform(8)).train()
    for q in (m.weight_quantizer, m.input_quantizer):
        q.disable()
    out = m(torch.randn(4, 3, 5, 5))
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, 0], torch.full_like(out[:, 0], m.bn.bias[0].item()))
    out.sum().backward()
    assert torch.isfinite(m.weight.grad).all() and torch.isfinite(m.bn.weight.grad).all()


def test_standalone_batchnorm_with_degenerate_statistics_is_finite():
    bn = nn.BatchNorm1d(4, eps=0.0).eval()
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([0.0, 1e-30, 1.0, 1e4]))
        bn.running_mean.copy_(torch.tensor([1.0, 2.0, 0.0, 1e37]))
        bn.weight.copy_(torch.tensor([1.0, 0.0, 2.0, 100.0]))
    affine = ChannelAffine.from_batchnorm(bn)
    assert torch.isfinite(affine.scale).all() and torch.isfinite(affine.shift).all()
    assert affine.scale[0] == 0 and affine.shift[0] == bn.bias[0]
    assert math.isclose(affine.shift[3].item(), -1e37, rel_tol=1e-5)


@pytest.mark.parametrize("what, value", [("running_var", float("nan")), ("running_mean", float("inf")),
                                         ("running_var", -1.0)])
def test_convert_names_the_module_with_broken_statistics(what, value):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1))
    prepared = qx.prepare_qat(model, qx.QConfig.uniform(8), first_last_bits=None)
    bn = prepared.get_submodule("0").bn
    with torch.no_grad():
        getattr(bn, what)[2] = value
    with pytest.raises(ValueError, match=r"BatchNorm '0'.*" + what):
        qx.convert(prepared)


def test_convert_names_a_batchnorm_without_running_statistics():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 2))
    prepared = qx.prepare_qat(model, qx.QConfig.uniform(8), first_last_bits=None)
    with pytest.raises(ValueError, match=r"BatchNorm '1' has track_running_stats=False"):
        qx.convert(prepared)


def test_fold_overflow_is_an_error_not_inf():
    m = _planted()
    with torch.no_grad():
        m.bn.running_mean[4] = 3e38
        m.bn.weight[4] = 1e3
    with pytest.raises(ValueError, match=r"folding the BatchNorm of 'layer' overflows torch.float32 in its bias"):
        m.fold("layer")
