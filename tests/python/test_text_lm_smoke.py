"""The text language-model example (examples/text_lm.py, issue 19 item 5) on
its --quick path: a tiny byte-level GPT on the standard library's source,
every configuration, one seed."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

import quantext as qx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def text_lm():
    spec = importlib.util.spec_from_file_location("text_lm", os.path.join(ROOT, "examples", "text_lm.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_corpus_is_split_by_file_and_deterministic(text_lm):
    a, b = text_lm.load_corpus(), text_lm.load_corpus()
    assert a.sha256 == b.sha256 and torch.equal(a.heldout, b.heldout)
    assert a.heldout_files >= 10 and a.train_files > 5 * a.heldout_files
    assert len(a.heldout) > 64 * 1024  # enough for the full run's evaluation


def test_quick_run_learns_and_quantizes(text_lm, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "text_lm.md"
        rows = text_lm.configs()
        table = text_lm.run(text_lm.QUICK, [0], rows, str(out), "python examples/text_lm.py --quick",
                            log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    by_label = {e["config"].label: e for e in table}
    assert list(by_label) == [r.label for r in rows]
    assert ("W4A8-dyn" in by_label) == hasattr(qx.QConfig, "int8_dynamic_int4_weight")
    float_ppl = by_label["float"]["ptq"][0]
    recipe = text_lm.QUICK
    unigram = text_lm.unigram_perplexity(text_lm.load_corpus(), recipe.context, recipe.eval_tokens)
    assert float_ppl < 0.7 * unigram < 256  # it uses the context: better than the byte frequencies alone
    for label in ("W8A8", "W4A8", "W4 g32"):
        assert by_label[label]["qat_ratio"][0] < 1.05, label  # close to float after QAT
        assert by_label[label]["ptq_ratio"][0] < 1.10, label
    assert by_label["W2 g32"]["steps"] == 4 * by_label["W8A8"]["steps"]
    text = out.read_text()
    assert "python examples/text_lm.py --quick" in text.splitlines()[3]
    assert text.count("\n| ") == len(rows) + 1  # header and one line per row
    assert "W4A8 (int8 per tensor, static) QAT" in text


def test_quick_run_of_the_floating_point_rows(text_lm):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = text_lm.run(text_lm.QUICK, [0], text_lm.fp_configs(), None, "python examples/text_lm.py --quick "
                            "--rows fp", log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    by_label = {e["config"].label: e for e in table}
    assert list(by_label) == ["float", "FP8", "MXFP8", "MXFP4-A8", "NVFP4"]
    for label in ("FP8", "MXFP8", "MXFP4-A8", "NVFP4"):
        assert by_label[label]["ptq_ratio"][0] < 1.10, label
        assert by_label[label]["qat_ratio"][0] < 1.05, label
