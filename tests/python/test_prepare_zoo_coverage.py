"""``qx.coverage``: prepare_qat reports which Conv/Linear/attention/embedding
weights it left in float and why, and warns once when that was not asked for
(issue 17, item 8)."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quantext as qx

W8A8 = qx.QConfig.uniform(bits=8)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(20, 8)
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1)
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(8, 8)
        self.functional = nn.Linear(8, 8)  # its weight is used by F.linear: never called as a layer
        self.head = nn.Linear(8 + 4, 3)

    def forward(self, ids: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1d(self.tok(ids).transpose(1, 2)).mean(-1)
        x = F.linear(self.fc(x), self.functional.weight, self.functional.bias)
        return self.head(torch.cat([x, self.conv(image).mean((2, 3))], 1))


def _inputs():
    return torch.randint(0, 20, (2, 5)), torch.randn(2, 1, 6, 6)


def _prepare(model, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = qx.prepare_qat(model, options.pop("qconfig", W8A8), example_inputs=_inputs(), **options)
    return prepared, [str(w.message) for w in caught if "stay in float" in str(w.message)]


def test_coverage_lists_every_weight_with_a_reason_and_warns_once():
    prepared, warned = _prepare(Mixed(), first_last_bits=None, skip="fc")
    report = qx.coverage(prepared)
    assert sorted(report.quantized) == ["conv", "head", "tok"]
    assert set(report.in_float) == {"conv1d", "fc", "functional"}
    assert "no QAT module for Conv1d" in report.in_float["conv1d"]
    assert report.in_float["fc"] == "in `skip`"
    assert "never called as a module" in report.in_float["functional"]
    assert set(report.unexpected) == {"conv1d", "functional"} and report.total == 6
    assert len(warned) == 1  # once, for what was not asked for; the skipped layer is not in it
    assert "2 of 6" in warned[0] and "'conv1d'" in warned[0] and "'fc'" not in warned[0]
    text = str(report)
    assert text.splitlines()[0] == "3 of 6 weights quantized" and "float  functional: never called" in text
    assert qx.coverage(qx.convert(prepared)) == report  # convert carries it


def test_requested_float_layers_do_not_warn():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared = qx.prepare_qat(model, W8A8, example_inputs=(torch.randn(2, 3, 8, 8),), first_last_bits="float")
        weightless = qx.prepare_qat(model, qx.QConfig(weight=None, activation=W8A8.activation),
                                    example_inputs=(torch.randn(2, 3, 8, 8),))
    report = qx.coverage(prepared)
    assert report.quantized == ["2"] and report.in_float == {"0": "first_last_bits='float'",
                                                             "4": "first_last_bits='float'"}
    assert report.unexpected == {}
    assert set(qx.coverage(weightless).in_float.values()) == {"qconfig.weight is None"}


def test_fallback_path_reports_coverage():
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.conv1d = nn.Linear(4, 4), nn.Conv1d(1, 1, 1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = x * 2
            return self.conv1d(self.fc(x).unsqueeze(1))

    with pytest.warns(UserWarning) as caught:
        prepared = qx.prepare_qat(Untraceable(), W8A8, first_last_bits=None)
    assert sum("stay in float" in str(w.message) for w in caught) == 1
    report = qx.coverage(prepared)
    assert report.quantized == ["fc"] and list(report.in_float) == ["conv1d"]


def test_coverage_of_a_model_prepare_qat_did_not_make():
    with pytest.raises(ValueError, match=r"coverage: Linear was not made by qx.prepare_qat"):
        qx.coverage(nn.Linear(2, 2))
