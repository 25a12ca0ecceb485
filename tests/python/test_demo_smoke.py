"""The digits demo (examples/qat_digits.py) end to end at a tiny size: one QAT
row and one PTQ row, one seed, one epoch, 400 images."""

import csv
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("qat_digits", os.path.join(ROOT, "examples", "qat_digits.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_demo_pipeline_tiny(demo, tmp_path):
    recipe = demo.Recipe(float_epochs=1, qat_epochs=1, calibration_batches=2)
    jobs = [demo.Job("uniform", 4, "mse", qat=True), demo.Job("uniform", 8, "max", qat=False)]
    rows = demo.run_demo(jobs, [0], recipe, str(tmp_path), subset=400, progress=False)

    assert [(r["scheme"], r["bits"], r["method"]) for r in rows] == [("uniform", 4, "QAT, mse"),
                                                                       ("uniform", 8, "PTQ, max")]
    qat, ptq = rows
    for row in rows:
        assert set(row) == set(demo.COLUMNS)
        assert 0 <= row["float"][0] <= 100 and row["float"][1] == 0  # one seed: no spread
        assert 0 <= row["ptq"][0] <= 100
    assert qat["ort"] == qat["qat"] and qat["ort_differs"] == 0  # ONNX Runtime predicts what PyTorch does
    assert ptq["qat"] is None and ptq["ort"] is None and ptq["ort_differs"] is None
    assert ptq["bytes"] > qat["bytes"] > 0  # 8-bit weights take more room than 4-bit ones

    assert os.path.isfile(tmp_path / "onnx" / "uniform_w4a4_seed0.onnx")
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[0] == "| " + " | ".join(demo.HEADER) + " |" and len(lines) >= 4
    with open(tmp_path / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["QAT, mse", "PTQ, max"]
    assert float(table[0]["ort_mean"]) == pytest.approx(qat["ort"][0])
    with open(tmp_path / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
