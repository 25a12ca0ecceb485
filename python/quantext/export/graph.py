"""Small helpers over an ``onnx.GraphProto``: constant lookup, producer and
consumer maps, the model path a node came from, and pruning."""

from __future__ import annotations

import ast
import itertools

import numpy as np
import onnx
from onnx import numpy_helper


class Graph:
    """A view of ``graph`` for rewriting passes: the node list is rebuilt by the
    caller, initializers are added through :meth:`add_const`."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain == "" and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self._names = itertools.count()
        self._taken = {v for node in graph.node for v in itertools.chain(node.input, node.output)}
        self._taken |= set(self.consts) | {i.name for i in graph.input}

    def fresh(self, hint: str) -> str:
        """A tensor name not used in the graph yet."""
        while True:
            name = f"{hint}__{next(self._names)}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def add_const(self, hint: str, value: np.ndarray) -> str:
        """Adds ``value`` as an initializer under a fresh name and returns the name."""
        name = self.fresh(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        self.consts[name] = np.asarray(value)
        return name

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer or Constant node), else ``None``."""
        return self.consts.get(name)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def module_path(node: onnx.NodeProto) -> str:
    """The ``nn.Module`` path a node was exported from ('' for the top module),
    read from the name scopes the torch exporter records in the node's metadata."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return scopes[-2] if len(scopes) >= 2 else ""
    return node.name


def describe(node: onnx.NodeProto) -> str:
    """``module 'path'`` for error messages."""
    path = module_path(node)
    return f"module '{path}'" if path else "the top-level module"


def prune(model: onnx.ModelProto) -> None:
    """Drops nodes whose outputs nobody reads, then unused initializers."""
    graph = model.graph
    live = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in live for out in node.output):
            kept.append(node)
            live.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    unused = [t for t in graph.initializer if t.name not in live]
    for t in unused:
        graph.initializer.remove(t)
    vinfo = [v for v in graph.value_info if v.name not in live]
    for v in vinfo:
        graph.value_info.remove(v)
