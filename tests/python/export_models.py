"""Models for the export tests, made by quantext's own pipeline (prepare_qat ->
calibrate -> a few SGD steps -> freeze_bn -> convert), and checks of the Q/DQ
structure of an exported graph."""

from __future__ import annotations

import atexit
import functools
import pathlib
import shutil
import tempfile
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn
from torchvision.models import mobilenet_v2, resnet18
from torchvision.models.resnet import BasicBlock, ResNet

import quantext as qx
from quantext.export.graph import consumers, producers


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


class Net(nn.Module):
    """Hand-picked layers under ``body`` (module paths ``body.<i>``), for the
    exporter's checks on modules that prepare_qat would not produce."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MLP(nn.Module):
    """Linear layers: Gemm on a [batch, features] input, MatMul on [batch, tokens, features]."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(12, 32), nn.Linear(32, 32), nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


# name: (constructor, input shape, (first layer, last layer) after qx.convert)
MODELS = {
    "cnn": (cnn, (2, 3, 16, 16), ("0.conv", "7")),
    "mlp": (MLP, (4, 12), ("a", "c")),
    "mlp3d": (MLP, (2, 7, 12), ("a", "c")),
    "resnet18": (lambda: resnet18(num_classes=10), (2, 3, 32, 32), ("conv1.conv", "fc")),
    "mobilenet_v2": (lambda: mobilenet_v2(num_classes=10), (2, 3, 32, 32), ("features.0.0", "classifier.1")),
    # one BasicBlock per stage: residual adds and downsampling at half ResNet-18's export time
    "resnet10": (lambda: ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10), (2, 3, 32, 32), ("conv1.conv", "fc")),
}
QAT_MODELS = ("cnn", "mlp", "mlp3d", "resnet18", "mobilenet_v2")  # the models every export test runs


@torch.no_grad()
def _float_bn_statistics(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """BatchNorm running statistics of the data, as a trained float model has them.
    (With the initial ones, eval-mode BN is the identity and a randomly initialized
    MobileNetV2 shrinks its activations below 1e-6 by its last blocks.)"""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # cumulative average
    model.train()
    model(torch.randn(8, *shape[1:]))
    for bn in bns:
        bn.momentum = 0.1
    return model


def qat_model(name: str, qconfig: qx.QConfig, steps: int = 2, **prepare_options) -> tuple[nn.Module, torch.Tensor]:
    """``MODELS[name]`` through prepare_qat, calibrate, ``steps`` SGD steps,
    freeze_bn and convert; returns the converted model and an example input."""
    torch.manual_seed(0)
    ctor, shape, _ = MODELS[name]
    model = _float_bn_statistics(ctor(), shape)
    x = torch.randn(shape)
    prepared = qx.prepare_qat(model, qconfig, example_inputs=(x,), **prepare_options)
    qx.calibrate(prepared, [torch.randn(shape) for _ in range(2)], progress=False)
    opt = torch.optim.SGD(prepared.parameters(), lr=0.01, momentum=0.9)
    prepared.train()
    for _ in range(steps):  # batches of 8: BN statistics of 2 values per channel (1x1 maps) blow gradients up
        opt.zero_grad()
        out = prepared(torch.randn(8, *shape[1:]))
        nn.functional.mse_loss(out, torch.randn_like(out)).backward()
        opt.step()
    qx.freeze_bn(prepared)
    return qx.convert(prepared), x


def exported(name: str, bits: int = 8, backend: str = "tensorrt"):
    """``(model, x, proto, path)``: the export (verify=True) of ``qat_model(name,
    QConfig.uniform(bits, backend=backend))``, made once per test session."""
    return _exported(name, bits, backend)  # one cache key however the defaults are passed


@functools.cache
def _exported(name: str, bits: int, backend: str):
    folder = tempfile.mkdtemp(prefix=f"qx_export_{name}_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    model, x = qat_model(name, qx.QConfig.uniform(bits, backend=backend))
    path = qx.export_onnx(model, (x,), pathlib.Path(folder) / f"{name}.onnx", verify=True)
    return model, x, onnx.load(path), path


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def assert_qdq_structure(model: onnx.ModelProto) -> None:
    """Only standard operators; every Q feeds DQ (directly or through one Clip),
    every DQ reads a Q, a Clip of a Q, a constant or a codebook Gather of constant codes, a Q and its DQ share
    parameters, and no tensor is quantized twice with the same parameters (in
    parallel or in a chain)."""
    graph = model.graph
    consts = constants(model)
    prod, users, outputs = producers(graph), consumers(graph), {o.name for o in graph.output}
    assert all(n.domain in ("", "ai.onnx") for n in graph.node)
    assert [o.domain for o in model.opset_import if o.domain not in ("", "ai.onnx")] == []
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)

    def params(node):
        return [consts[i].tobytes() for i in node.input[1:]], sorted(str(a) for a in node.attribute)

    seen = set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear":
            assert node.input[1] in consts and node.input[2] in consts, "Q parameters must be constants"
            nxt = users.get(node.output[0], [])
            assert nxt, f"dangling QuantizeLinear {node.name}"
            dqs = [d for n in nxt for d in ([n] if n.op_type == "DequantizeLinear" else users[n.output[0]])]
            assert all(n.op_type in ("DequantizeLinear", "Clip") for n in nxt)
            assert all(d.op_type == "DequantizeLinear" and params(d) == params(node) for d in dqs)
            key = (node.input[0], repr(params(node)))
            assert key not in seen, f"duplicated Q/DQ pair on {node.input[0]}"
            seen.add(key)
            src = prod.get(node.input[0])
            if src is not None and src.op_type == "DequantizeLinear":
                assert params(src) != params(node), f"{node.name} re-quantizes a DQ with the same parameters"
        if node.op_type == "DequantizeLinear":
            assert users.get(node.output[0]) or node.output[0] in outputs, f"dangling DequantizeLinear {node.name}"
            src = node.input[0]
            if src not in consts:
                p = prod[src]
                codebook = p.op_type == "Gather" and p.input[0] in consts and prod[p.input[1]].op_type == "Cast" \
                    and prod[p.input[1]].input[0] in consts  # PoT/APoT weight codes decoded to integer levels
                assert codebook or p.op_type == "QuantizeLinear" or (p.op_type == "Clip"
                                                                     and prod[p.input[0]].op_type == "QuantizeLinear")


def weight_dqs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto, np.ndarray]]:
    """(DQ of a constant, its consumer, codes) for every quantized weight."""
    consts = constants(model)
    users = consumers(model.graph)
    return [(n, u, consts[n.input[0]]) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in consts for u in users[n.output[0]]]


def optimized_ops(path, folder: pathlib.Path) -> Counter:
    """Op counts of the graph ONNX Runtime (CPU, extended optimizations) runs."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
