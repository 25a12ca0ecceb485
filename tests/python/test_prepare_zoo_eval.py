"""Eval mode is eval mode after prepare_qat: the bools that fx records for
``self.training`` (torchvision's stochastic depth, ``F.dropout(training=
self.training)``) follow the modules' training flags (issue 17, item 7)."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantext as qx

tvm = pytest.importorskip("torchvision.models")

QCONFIG = qx.QConfig.uniform(bits=8)


class FunctionalDropout(nn.Module):
    """The classic ``F.dropout(x, training=self.training)`` of a hand-written model."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 64), nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(F.relu(self.fc1(x)), p=0.5, training=self.training))


class Inverted(nn.Module):
    """A bool that is ``not self.training``, and a literal ``training=True`` (MC dropout) that must stay."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.dropout(self.fc(x), p=0.5, training=not self.training)
        return F.dropout(y, p=0.5, training=True)


class ModeBranch(nn.Module):
    """Python control flow on self.training: cannot be bound, must warn."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 2 if self.training else self.fc(x)


def _zoo() -> dict:
    return {
        "swin_t": (lambda: tvm.swin_t(), 32),
        "convnext_tiny": (lambda: tvm.convnext_tiny(), 32),
        "efficientnet_b0": (lambda: tvm.efficientnet_b0(), 32),
        "vit": (lambda: tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                              mlp_dim=64, dropout=0.3, attention_dropout=0.3), 32),
    }


def _nonzero_head(model: nn.Module) -> None:
    """ViT's head starts at zero (its output would not show dropout): give it weights."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.2)


@pytest.mark.parametrize("name", list(_zoo()))
def test_prepared_zoo_model_is_deterministic_in_eval_and_drops_in_train(name):
    torch.manual_seed(0)
    build, size = _zoo()[name]
    model = build()
    _nonzero_head(model)
    x = torch.randn(2, 3, size, size)
    prepared = qx.prepare_qat(model, QCONFIG, example_inputs=(x,))
    qx.disable_quant(prepared)  # float compute: only dropout / stochastic depth can make runs differ
    with torch.no_grad():
        prepared.eval()
        first, second = prepared(x), prepared(x)
        assert torch.equal(first, second)
        # and it is the float model's eval output (BN folded: equal up to rounding)
        reference = model.eval()(x)
        torch.testing.assert_close(first, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())
        prepared.train()
        assert not torch.equal(prepared(x), prepared(x))


def test_functional_dropout_follows_the_mode():
    torch.manual_seed(0)
    prepared = qx.prepare_qat(FunctionalDropout(), QCONFIG, first_last_bits=None)
    qx.disable_quant(prepared)
    x = torch.randn(4, 16)
    with torch.no_grad():
        prepared.eval()
        assert torch.equal(prepared(x), prepared(x))
        prepared.train()
        assert not torch.equal(prepared(x), prepared(x))
        # A submodule's own flag counts: the flag is looked up on the module that calls F.dropout.
        prepared.eval()
        assert "self.training" in prepared.code


def test_negated_flag_is_negated_and_literal_true_stays():
    torch.manual_seed(0)
    model = Inverted()
    prepared = qx.prepare_qat(model, QCONFIG, first_last_bits=None)
    qx.disable_quant(prepared)
    code = prepared.code
    assert "not_" in code and "training = True" in code
    x = torch.randn(256, 16)
    with torch.no_grad():
        for mode in (True, False):
            prepared.train(mode)
            model.train(mode)
            torch.manual_seed(1)
            got = prepared(x)
            torch.manual_seed(1)
            assert torch.equal(got, model(x))


class WithConstant(nn.Module):
    """A tensor made in forward (fx stores it as a constant on the root, once per trace), as MaxViT does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.fc(x) * torch.tensor([1.0, 2.0, 3.0, 4.0]), p=0.5, training=self.training)


def test_tensor_constants_do_not_count_as_a_mode_difference():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared = qx.prepare_qat(WithConstant(), QCONFIG, first_last_bits=None)
    assert [n for n in dir(prepared) if n.startswith("_tensor_constant")] == ["_tensor_constant0"]
    qx.disable_quant(prepared)
    x = torch.randn(64, 4)
    with torch.no_grad():
        prepared.eval()
        assert torch.equal(prepared(x), prepared(x))


def test_mode_dependent_control_flow_warns_with_the_place():
    with pytest.warns(UserWarning, match=r"another path in training than in eval mode .* training-mode path"):
        qx.prepare_qat(ModeBranch(), QCONFIG, first_last_bits=None)


def test_plain_models_trace_without_mode_warning():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(8 * 30 * 30, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qx.prepare_qat(model, QCONFIG, example_inputs=(torch.randn(2, 3, 32, 32),))


class SlicedPositions(nn.Module):
    """A learned positional table sliced by the traced sequence length (GPT-style), then dropout:
    the slice holds fx nodes, which differ between the two traces without being a mode difference."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(32, 8))
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.fc(x + self.pos[: x.shape[1]]), p=0.5, training=self.training)


def test_slices_with_traced_bounds_are_not_a_mode_difference():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared = qx.prepare_qat(SlicedPositions(), QCONFIG, example_inputs=(torch.randn(2, 16, 8),),
                                  first_last_bits=None)
    qx.disable_quant(prepared)
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        prepared.eval()
        assert torch.equal(prepared(x), prepared(x))  # the dropout after the slice follows eval()
        prepared.train()
        assert not torch.equal(prepared(x), prepared(x))
