"""``prepare_qat``: swaps float layers for QAT modules and inserts quantizers
where a deployment quantizes: the inputs of every Conv2d/Linear (held by the
QAT modules) and both inputs of every residual add (standalone
:class:`~quantext.nn.Quantizer` modules).

The model is traced with ``torch.fx``; Conv2d -> BatchNorm2d (-> ReLU) chains
become :class:`~quantext.nn.QuantConvBn2d` / ``QuantConvBnReLU2d`` (ReLU6 and
other activations stay as they are, after the fused module), other Conv2d and
Linear layers :class:`~quantext.nn.QuantConv2d` / ``QuantLinear``, ``nn.Embedding``
tables :class:`~quantext.nn.QuantEmbedding` (the weight spec on the table, no
input quantizer; a table tied to the output head is quantized once, one
quantizer shared by both layers). A BatchNorm
that follows no convolution becomes ``InferenceFormBatchNorm{1,2,3}d``
(nn/affine.py): a BatchNorm in training, state and ``state_dict``, whose eval
mode computes the ``ChannelAffine`` that ``convert`` makes of it, so that
``convert`` does not change the output by a bit. Modules keep
their qualified names, so state-dict keys of the float parameters stay
recognizable (``layer1.0.conv1.weight``, ``layer1.0.conv1.bn.running_mean``).
When tracing fails, a module walk replaces Conv2d+BatchNorm2d(+ReLU) runs inside
``nn.Sequential`` containers and every other Conv2d/Linear, and warns: it cannot
see functional adds, so no add quantizers are inserted.

Attention: ``nn.MultiheadAttention`` and torchvision's Swin
``ShiftedWindowAttention`` become :class:`~quantext.nn.QuantMultiheadAttention` /
``QuantShiftedWindowAttention`` (every projection a QuantLinear) before tracing;
inside modules that fx does not trace into (``nn.TransformerEncoder``/``Decoder``
and their layers are torch.nn modules, hence leaves), Conv2d/Linear layers are
swapped by the module walk. Attention matmuls, softmax, norms and activations
stay float (``docs/attention.md``).

Hugging Face transformers: a ``PreTrainedModel`` (the model itself, or one
inside the model) is prepared by the module walk, on purpose and without the
fallback's warning (its forward builds masks and caches from input values,
which fx cannot trace): ``nn.Linear`` -> ``QuantLinear``, ``nn.Embedding`` ->
``QuantEmbedding``, and transformers' ``Conv1D`` (GPT-2's transposed Linear) ->
:class:`~quantext.nn.QuantTransposedLinear`, quantized per output feature. Its
residual adds stay float; the model keeps its class.

Training mode: fx records ``self.training`` as a constant (torchvision's
``stochastic_depth(x, p, mode, self.training)``, ``F.dropout(x, training=
self.training)``). The model is traced a second time with every module's
training flag flipped; each traced bool that flips with it is replaced by a
lookup of the calling module's ``training`` flag, so ``eval()`` stops dropping.
When the two traces differ otherwise (``if self.training:`` in Python), the
prepared model keeps the path it was traced in, and a warning names where.

Coverage: :func:`coverage` reports which Conv/Linear/attention/embedding
weights the prepared model quantizes and which it leaves in float, and why;
``prepare_qat`` warns once when some are left in float that were not asked for
(``skip``, ``first_last_bits="float"``, ``qconfig.weight=None``).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import operator
import sys
import warnings
from typing import Any, Callable, Iterable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .nn import (QuantConv2d, QuantConvBn2d, QuantConvBnReLU2d, QuantEmbedding, QuantLinear, QuantMultiheadAttention,
                 Quantizer, QuantShiftedWindowAttention, QuantTransposedLinear)
from .nn.affine import INFERENCE_FORMS
from .nn.transposed_linear import hf_conv1d_class
from .spec import QConfig, QuantSpec

_QAT_MODULES = (Quantizer, QuantConv2d, QuantLinear, QuantConvBn2d, QuantEmbedding, QuantMultiheadAttention,
                QuantShiftedWindowAttention, QuantTransposedLinear)
_QAT_LAYERS = (QuantConv2d, QuantLinear, QuantConvBn2d, QuantEmbedding, QuantTransposedLinear)
_QAT_LAYER_OF = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear, nn.Embedding: QuantEmbedding}
_ADD_TARGETS = (operator.add, operator.iadd, torch.add)
_RELU_FUNCTIONS = (F.relu, torch.relu)

SkipSpec = Iterable["str | type[nn.Module]"]


def prepare_qat(model: nn.Module, qconfig: QConfig, example_inputs: tuple | torch.Tensor | None = None,
                skip: SkipSpec = (), first_last_bits: int | str | None = 8, inplace: bool = False,
                freeze_bn_after: int | None = None, bn_stats: str = "exact") -> nn.Module:
    """Returns a QAT version of ``model`` (see the module docstring).

    Args:
        model: float model.
        qconfig: weight and activation specs for every quantized layer.
        example_inputs: inputs for one forward pass (shape propagation), so that
            only adds of two floating tensors get quantizers. Without them, every
            add of two traced values does.
        skip: qualified module names (a name covers its submodules) or module
            types left in float (one name or type, or an iterable of them).
        first_last_bits: the first and last quantized layers (in execution
            order) use ``first_last_bits``-bit uniform specs (an int; the first
            layer's input quantizer signed), stay in float (``"float"``), or use
            ``qconfig`` like the rest (``None``).
        inplace: modify ``model``'s modules instead of a deep copy.
        freeze_bn_after, bn_stats: passed to the BN-folded modules.

    Returns a ``torch.fx.GraphModule`` (the input model's own class and methods
    other than ``forward`` are not kept) or, for a Hugging Face model and after
    the fallback, the model itself. The quantizers start uncalibrated: run
    :func:`quantext.calibrate` (or :func:`quantext.disable_quant`) before the
    first forward.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(qconfig, QConfig):
        raise TypeError(f"qconfig must be a quantext.QConfig, got {type(qconfig).__name__}")
    if not (first_last_bits is None or first_last_bits == "float" or
            (isinstance(first_last_bits, int) and not isinstance(first_last_bits, bool))):
        raise ValueError(f"first_last_bits must be an int, 'float' or None, got {first_last_bits!r}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if example_inputs is not None and not isinstance(example_inputs, (tuple, list)):
        raise TypeError(f"example_inputs must be a tensor, a tuple of inputs or None, got "
                        f"{type(example_inputs).__name__}")
    prepared_already = [name or type(model).__name__ for name, m in model.named_modules()
                        if isinstance(m, _QAT_MODULES)]
    if prepared_already:
        raise ValueError(f"prepare_qat: the model is already prepared (it holds quantext QAT modules: "
                         f"{prepared_already[:5]}{' ...' if len(prepared_already) > 5 else ''}); call prepare_qat "
                         "on the float model (a second call, with this or another qconfig, would change nothing)")
    # One name or type on its own: tuple("layer1") would skip the modules "l", "a", ...
    if isinstance(skip, (str, type)):
        skip = (skip,)
    elif isinstance(skip, nn.Module) or not isinstance(skip, Iterable):
        raise TypeError(f"skip must be a module name, a module type or an iterable of them, got {skip!r}")
    skip = tuple(skip)
    skipped = _skip_predicate(skip)
    names = {name for name, _ in model.named_modules()}
    unknown = [s for s in skip if isinstance(s, str) and s not in names]
    if unknown:
        raise ValueError(f"prepare_qat: skip names no module of {type(model).__name__}: {unknown} "
                         f"(qualified names look like {sorted(n for n in names if n)[:4]})")
    if not inplace:
        model = copy.deepcopy(model)
    options = {"freeze_bn_after": freeze_bn_after, "bn_stats": bn_stats}
    notes: dict[str, str] = {}  # layers left in float on request, with the reason
    model = _swap_attention(model, qconfig, skipped)
    holders = list(_weight_holders(model))  # before the swaps: fx drops modules that are never called
    prepared = _trace_or_walk(model, qconfig, skipped, first_last_bits, example_inputs, options, notes)
    _keep_transformers_off_fast_paths(prepared)
    _inference_form_batchnorms(prepared)
    _share_tied_weight_quantizers(prepared)
    name_quantizers(prepared)
    report = _coverage(prepared, holders, skipped, notes)
    _coverage_store(prepared)[_COVERAGE_KEY] = report
    if not any(isinstance(m, _QAT_MODULES) for m in prepared.modules()):
        warnings.warn(f"prepare_qat: nothing in {type(model).__name__} was quantized (no Conv2d/Linear submodule "
                      "outside `skip`, and no residual add)", stacklevel=2)
    elif report.unexpected:
        shown = "; ".join(f"'{p}' ({r})" for p, r in list(report.unexpected.items())[:4])
        more = f" and {len(report.unexpected) - 4} more" if len(report.unexpected) > 4 else ""
        warnings.warn(f"prepare_qat: {len(report.unexpected)} of {report.total} Conv/Linear/attention/embedding "
                      f"weights of {type(model).__name__} stay in float: {shown}{more}; print(qx.coverage(model)) "
                      "lists them all", stacklevel=2)
    return prepared


def _trace_or_walk(model: nn.Module, qconfig: QConfig, skipped, first_last_bits, example_inputs,
                   options: dict[str, Any], notes: dict[str, str]) -> nn.Module:
    """The fx path, or the module walk: for a Hugging Face ``PreTrainedModel``
    (whose forward builds masks and caches from input values and shapes, which
    symbolic tracing cannot follow) by design, for other models when tracing fails."""
    if _hf_pretrained(model):
        return _prepare_modules(model, qconfig, skipped, first_last_bits, options, notes)
    try:
        graph = _trace(model, skipped)
    except Exception as exc:  # noqa: BLE001 (any tracing failure falls back)
        warnings.warn(f"prepare_qat: torch.fx could not trace {type(model).__name__} ({type(exc).__name__}: {exc}); "
                      "falling back to module swapping: Conv2d+BatchNorm2d(+ReLU) runs inside nn.Sequential are "
                      "fused, other Conv2d/Linear layers quantized, but no quantizers are inserted on residual adds",
                      stacklevel=3)
        return _prepare_modules(model, qconfig, skipped, first_last_bits, options, notes)
    prepared = _prepare_graph(fx.GraphModule(model, graph, type(model).__name__), qconfig, skipped,
                              first_last_bits, example_inputs, options, notes)
    _prepare_leaves(prepared, qconfig, skipped, options)
    return prepared


@dataclasses.dataclass
class Coverage:
    """Which weights of a prepared model are fake-quantized (see :func:`coverage`).

    Attributes:
        quantized: qualified names of the layers whose weight is quantized.
        in_float: qualified name -> reason, for every Conv/Linear/attention/embedding
            weight left in float.
        requested: the names in ``in_float`` that were left in float on request
            (``skip``, ``first_last_bits="float"``, ``qconfig.weight=None``).
    """

    quantized: list[str]
    in_float: dict[str, str]
    requested: frozenset[str] = frozenset()

    @property
    def total(self) -> int:
        """Number of weight-holding layers seen."""
        return len(self.quantized) + len(self.in_float)

    @property
    def unexpected(self) -> dict[str, str]:
        """The float entries nobody asked for."""
        return {p: r for p, r in self.in_float.items() if p not in self.requested}

    def __str__(self) -> str:
        lines = [f"{len(self.quantized)} of {self.total} weights quantized"]
        lines += [f"  float  {path or '<model>'}: {reason}" for path, reason in self.in_float.items()]
        return "\n".join(lines)


def coverage(model: nn.Module) -> Coverage:
    """The :class:`Coverage` that :func:`prepare_qat` recorded for ``model`` (also
    carried by ``qx.convert(model)`` and by copies): every Conv/Linear layer, attention
    projection and embedding table, quantized or left in float with the reason."""
    report = _coverage_store(model).get(_COVERAGE_KEY) if isinstance(model, nn.Module) else None
    if not isinstance(report, Coverage):
        raise ValueError(f"coverage: {type(model).__name__} was not made by qx.prepare_qat (no coverage recorded)")
    return report


_COVERAGE_KEY = "quantext_coverage"


def _coverage_store(model: nn.Module) -> dict:
    """Where the report lives: a GraphModule's ``meta`` (its deepcopy keeps only
    that of its plain attributes), else the module's ``__dict__``."""
    return model.meta if isinstance(model, fx.GraphModule) else model.__dict__


_REQUESTED = ("in `skip`", "first_last_bits='float'", "qconfig.weight is None")


def _float_reason(module: nn.Module) -> str | None:
    """Why a weight-holding module of this type stays in float (``None``: it would be quantized)."""
    if isinstance(module, nn.EmbeddingBag):
        return "no QAT module for nn.EmbeddingBag (only nn.Embedding)"
    if isinstance(module, nn.Embedding):
        if type(module) is not nn.Embedding:
            return f"no QAT module for {type(module).__name__} (only nn.Embedding itself)"
        if module.max_norm is not None or module.sparse:
            return "an nn.Embedding with max_norm or sparse=True (a quantized table is neither renormalized in " \
                   "place nor given sparse gradients)"
        return None
    if isinstance(module, nn.MultiheadAttention):  # the exact class is swapped unless skipped
        return f"no QAT module for {type(module).__name__} (only nn.MultiheadAttention itself)"
    if type(module) in _qat_layer_of():
        return None
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return f"no QAT module for {type(module).__name__} (only nn.Conv2d and nn.Linear themselves)"
    if isinstance(module, _hf_types()):
        return f"no QAT module for {type(module).__name__} (only transformers' Conv1D itself)"
    return None


def _qat_layer_of() -> dict[type, type]:
    """Float layer type -> its QAT class (Hugging Face's Conv1D too, once transformers has loaded it)."""
    conv1d = hf_conv1d_class()
    return _QAT_LAYER_OF if conv1d is None else {**_QAT_LAYER_OF, conv1d: QuantTransposedLinear}


def _hf_types() -> tuple[type, ...]:
    """transformers' Conv1D, as an isinstance() tuple (empty when transformers is not loaded)."""
    conv1d = hf_conv1d_class()
    return () if conv1d is None else (conv1d,)


def _hf_pretrained(module: nn.Module) -> bool:
    """Whether ``module`` is a Hugging Face ``PreTrainedModel`` (without importing transformers)."""
    base = getattr(sys.modules.get("transformers.modeling_utils"), "PreTrainedModel", None)
    return base is not None and isinstance(module, base)


def _weight_holders(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """Conv/Linear/attention/embedding modules, outermost first, not descending into
    quantext layers or into an unswapped nn.MultiheadAttention (one entry for it)."""
    stop: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(p + ".") for p in stop):
            continue
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding, nn.EmbeddingBag,
                               nn.MultiheadAttention) + _hf_types()):
            stop.append(path)
            yield path, module


def _coverage(model: nn.Module, holders: list[tuple[str, nn.Module]], skipped, notes: dict[str, str]) -> Coverage:
    """Coverage of the prepared ``model`` over the weight holders of the float one."""
    quantized, left, requested = [], {}, set()
    for path, original in holders:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            module = None
        if isinstance(module, _QAT_LAYERS):
            if module.weight_quantizer is not None:
                quantized.append(path)
                continue
            reason = "qconfig.weight is None"
        elif skipped(path, original):
            reason = "in `skip`"
        elif path in notes:
            reason = notes[path]
        elif module is not original:  # fx kept only the parameters that a function reads
            reason = ("never called as a module (its weight is used directly by a function, as in torchvision's "
                      "Swin V2 attention): no place for its quantizers")
        else:
            reason = _float_reason(original) or "not reached by prepare_qat"
        left[path] = reason
        if reason in _REQUESTED:
            requested.add(path)
    return Coverage(quantized, left, frozenset(requested))


def name_quantizers(model: nn.Module) -> None:
    """Tells every :class:`Quantizer` its qualified name (used in error messages)."""
    for name, module in model.named_modules():
        if isinstance(module, Quantizer):
            module.name = name


def _skip_predicate(skip: tuple) -> Callable[[str, nn.Module], bool]:
    names = [s for s in skip if isinstance(s, str)]
    types = tuple(s for s in skip if isinstance(s, type))
    bad = [s for s in skip if not isinstance(s, (str, type))]
    if bad:
        raise TypeError(f"skip entries must be module names or types, got {bad!r}")

    def skipped(path: str, module: nn.Module | None = None) -> bool:
        in_names = any(path == n or path.startswith(n + ".") for n in names)
        return in_names or (module is not None and bool(types) and isinstance(module, types))

    return skipped


def _layer_qconfig(qconfig: QConfig, bits: int, first: bool) -> QConfig:
    """``qconfig`` at ``bits``-bit uniform (the first/last-layer rule; float
    formats at FP8 E4M3, with their own scaling). The first
    layer's input is the network input, not a ReLU output, so a symmetric
    activation spec is made signed there."""

    def uniform(spec: QuantSpec | None, weight: bool) -> QuantSpec | None:
        if spec is None or spec.scheme == "uniform":
            return spec if spec is None else spec.replace(bits=bits)
        if spec.scheme == "fp":  # a float format stays one: FP8 (E4M3), scaled as the spec says
            if bits != 8:
                raise ValueError(f"prepare_qat: first_last_bits={bits} with scheme='fp' specs: use 8 (E4M3), "
                                 "'float' or None")
            return spec.replace(bits=8, exp_bits=4, fp_special="auto")
        # Every field uniform shares (calibration, percentile, sign_from_data, ...) is kept.
        return spec.replace(scheme="uniform", bits=bits, k=2, rounding="nearest", weight_norm=False,
                            narrow_range=weight and spec.signed and not spec.sign_from_data)

    activation = uniform(qconfig.activation, weight=False)
    if (first and activation is not None and activation.symmetric and not activation.signed
            and not activation.sign_from_data):
        activation = activation.replace(signed=True)
    return dataclasses.replace(qconfig, weight=uniform(qconfig.weight, weight=True), activation=activation)


def _qconfig_for(layers: list[str], qconfig: QConfig, first_last_bits) -> Callable[[str], QConfig | None]:
    """Per-layer qconfig (``None``: stays float) given the layers in execution order."""
    if not layers or first_last_bits is None:
        return lambda name: qconfig
    if first_last_bits == "float":
        return lambda name: None if name in (layers[0], layers[-1]) else qconfig
    configs = {layers[-1]: _layer_qconfig(qconfig, first_last_bits, first=False),
               layers[0]: _layer_qconfig(qconfig, first_last_bits, first=True)}
    return lambda name: configs.get(name, qconfig)


def _quant_layer(module: nn.Module, qconfig: QConfig, name: str) -> nn.Module:
    try:
        return _qat_layer_of()[type(module)].from_float(module, qconfig)
    except ValueError as err:  # a group size that does not divide the weight, ...
        raise ValueError(f"prepare_qat: layer '{name}' ({type(module).__name__}): {err}") from err


def _quantizable(module: nn.Module) -> bool:
    return type(module) in _qat_layer_of() and _float_reason(module) is None


def _foldable_bn(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats
            and bn.num_features == conv.out_channels)


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Replaces the submodule at qualified name ``path``."""
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class _Tracer(fx.Tracer):
    """Keeps QAT modules, skipped modules and Hugging Face models opaque (the
    module walk prepares the latter: see :func:`_trace_or_walk`)."""

    def __init__(self, skipped: Callable[[str, nn.Module], bool]) -> None:
        super().__init__()
        self._skipped = skipped

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (isinstance(m, _QAT_MODULES) or self._skipped(module_qualified_name, m) or _hf_pretrained(m)
                or super().is_leaf_module(m, module_qualified_name))


# --------------------------------------------------------------------- training flags
class _ModeFlag:
    """A traced bool that flipped with the modules' training flags (its value in the kept trace)."""

    __slots__ = ("value",)

    def __init__(self, value: bool) -> None:
        self.value = value


_DIFFERENT = object()  # the two traces differ in something other than a training flag


def _trace(model: nn.Module, skipped) -> fx.Graph:
    """Traces ``model`` in its current modes, then with every training flag flipped,
    and binds the bools that flip to the modules' flags (see the module docstring)."""
    graph = _Tracer(skipped).trace(model)
    modes = {m: m.training for m in model.modules()}
    attributes = set(vars(model))  # the tracer stores tensor constants on the root as _tensor_constant<i>
    try:
        for m, mode in modes.items():
            m.training = not mode
        flipped = _Tracer(skipped).trace(model)
    except Exception:  # noqa: BLE001 (a forward that only traces in one mode: the graphs differ)
        flipped = None
    finally:
        for m, mode in modes.items():
            m.training = mode
    _bind_training_flags(model, graph, flipped)
    for name in set(vars(model)) - attributes:  # the flipped trace's constants
        delattr(model, name)
    return graph


def _same_node(model: nn.Module, a: fx.Node, b: fx.Node) -> bool:
    """``a`` and ``b`` do the same (two traces name their tensor constants apart)."""
    if a.op != b.op:
        return False
    if a.target == b.target:
        return True
    if a.op != "get_attr" or not (a.target.startswith("_tensor_constant") and b.target.startswith("_tensor_constant")):
        return False
    x, y = getattr(model, a.target, None), getattr(model, b.target, None)
    return isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype and \
        x.shape == y.shape and bool(torch.equal(x, y))


def _mark_flips(a: Any, b: Any, pos_a: dict, pos_b: dict) -> Any:
    """``a`` (an argument of the kept trace) with each bool that differs in ``b`` (the
    flipped trace) replaced by a :class:`_ModeFlag`; ``_DIFFERENT`` on any other difference."""
    if isinstance(a, fx.Node) or isinstance(b, fx.Node):
        same = isinstance(a, fx.Node) and isinstance(b, fx.Node) and pos_a[a] == pos_b[b]
        return a if same else _DIFFERENT
    if isinstance(a, bool) and isinstance(b, bool):
        return a if a == b else _ModeFlag(a)
    if isinstance(a, (tuple, list)):
        if not isinstance(b, (tuple, list)) or len(a) != len(b):
            return _DIFFERENT
        items = [_mark_flips(x, y, pos_a, pos_b) for x, y in zip(a, b)]
        return _DIFFERENT if any(i is _DIFFERENT for i in items) else type(a)(items)
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return _DIFFERENT
        items = {k: _mark_flips(a[k], b[k], pos_a, pos_b) for k in a}
        return _DIFFERENT if any(i is _DIFFERENT for i in items.values()) else items
    if isinstance(a, slice):  # x[: t.shape[1]]: the bounds may be nodes
        if not isinstance(b, slice):
            return _DIFFERENT
        parts = [_mark_flips(x, y, pos_a, pos_b) for x, y in zip((a.start, a.stop, a.step), (b.start, b.stop, b.step))]
        return _DIFFERENT if any(p is _DIFFERENT for p in parts) else a
    try:
        same = type(a) is type(b) and bool(a == b or (a != a and b != b))  # NaN constants match
    except Exception:  # noqa: BLE001 (values without a usable ==)
        same = a is b
    return a if same else _DIFFERENT


def _bind_training_flags(model: nn.Module, graph: fx.Graph, flipped: fx.Graph | None) -> None:
    nodes, twins = list(graph.nodes), list(flipped.nodes) if flipped is not None else []
    pos_a, pos_b = {n: i for i, n in enumerate(nodes)}, {n: i for i, n in enumerate(twins)}
    for i, node in enumerate(nodes):
        twin = twins[i] if i < len(twins) else None
        marked = _DIFFERENT
        if twin is not None and _same_node(model, node, twin):
            marked = _mark_flips((node.args, node.kwargs), (twin.args, twin.kwargs), pos_a, pos_b)
        if marked is _DIFFERENT:
            _warn_mode_dependent(model, node)
            return
        flags: dict[bool, fx.Node] = {}

        def bind(value: Any) -> Any:
            if isinstance(value, _ModeFlag):
                if value.value not in flags:
                    scope = _scope(node)
                    with graph.inserting_before(node):
                        flag = graph.get_attr(f"{scope}.training" if scope else "training")
                        same = value.value == model.get_submodule(scope).training
                        flags[value.value] = flag if same else graph.call_function(operator.not_, (flag,))
                return flags[value.value]
            if isinstance(value, (tuple, list)):
                return type(value)(bind(v) for v in value)
            if isinstance(value, dict):
                return {k: bind(v) for k, v in value.items()}
            return value

        node.args, node.kwargs = bind(marked[0]), bind(marked[1])


def _warn_mode_dependent(model: nn.Module, node: fx.Node) -> None:
    scope = _scope(node)
    where = f"in '{scope}'" if scope else f"in {type(model).__name__}.forward"
    mode = "training" if model.training else "eval"
    warnings.warn(f"prepare_qat: the forward of {type(model).__name__} takes another path in training than in eval "
                  f"mode (Python control flow on `self.training`, first {where}, near '{node.name}'); the prepared "
                  f"model always takes the {mode}-mode path it was traced in. Prepare the model in the mode it will "
                  "run in, or skip that module.", stacklevel=4)


# --------------------------------------------------------------------- attention and leaves
def _attention_swaps() -> dict[type, Callable[[nn.Module, QConfig], nn.Module]]:
    """Attention modules replaced by their QAT forms. torchvision's Swin attention only
    when torchvision's Swin module is loaded (a model holding one has loaded it)."""
    swaps: dict[type, Callable] = {nn.MultiheadAttention: QuantMultiheadAttention.from_float}
    swin = sys.modules.get("torchvision.models.swin_transformer")
    if swin is not None and hasattr(swin, "ShiftedWindowAttention"):
        swaps[swin.ShiftedWindowAttention] = QuantShiftedWindowAttention.from_float
    return swaps


def _swap_attention(model: nn.Module, qconfig: QConfig, skipped) -> nn.Module:
    """Replaces every (exact-type) attention module of :func:`_attention_swaps` outside
    ``skip``; returns the model (a new root when the model itself is one)."""
    swaps = _attention_swaps()
    if type(model) in swaps and not skipped("", model):
        return swaps[type(model)](model, qconfig)
    for path, module in list(model.named_modules()):
        if path and type(module) in swaps and not skipped(path, module):
            set_module(model, path, swaps[type(module)](module, qconfig))
    return model


def _prepare_leaves(gm: fx.GraphModule, qconfig: QConfig, skipped, options: dict[str, Any]) -> None:
    """Swaps the Conv2d/Linear layers inside modules that fx kept whole (torch.nn
    containers such as ``nn.TransformerEncoderLayer``) by the module walk."""
    for target in sorted({n.target for n in gm.graph.nodes if n.op == "call_module"}):
        leaf = gm.get_submodule(target)
        if isinstance(leaf, _QAT_MODULES) or skipped(target, leaf) or not any(
                _quantizable(m) for _, m in leaf.named_modules() if m is not leaf):
            continue
        _prepare_modules(leaf, qconfig, lambda path, m, t=target: skipped(f"{t}.{path}", m), None, options, {})


def _keep_transformers_off_fast_paths(model: nn.Module) -> None:
    """``nn.TransformerEncoder`` re-packs its input as a nested tensor in eval mode and
    runs its layers' fused kernels on the float weights; with quantized layers inside,
    turn that off (the layers' own fast path is off already: see QuantMultiheadAttention)."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and any(
                isinstance(m, (QuantLinear, QuantMultiheadAttention)) for m in module.modules()):
            module.use_nested_tensor = False


# --------------------------------------------------------------------- fx path
def _prepare_graph(gm: fx.GraphModule, qconfig: QConfig, skipped, first_last_bits, example_inputs,
                   options: dict[str, Any], notes: dict[str, str]) -> fx.GraphModule:
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    if example_inputs is not None:
        _propagate_shapes(gm, example_inputs)

    def module_of(node: fx.Node) -> nn.Module | None:
        return modules[node.target] if node.op == "call_module" else None

    def single_user(node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    # A layer called more than once (self.c(F.relu(self.c(x)))) is quantized once (its one
    # input quantizer observes every call's input); it is never BN-fused, which needs one call.
    layer_nodes, seen = [], set()
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target not in seen and _quantizable(modules[n.target]) \
                and not skipped(n.target, modules[n.target]):
            seen.add(n.target)
            layer_nodes.append(n)
    config_for = _qconfig_for([n.target for n in layer_nodes], qconfig, first_last_bits)
    absorbed_modules: set[str] = set()
    for node in layer_nodes:
        layer_config = config_for(node.target)
        if layer_config is None:
            notes[node.target] = "first_last_bits='float'"
            continue
        conv = modules[node.target]
        if calls[node.target] > 1:
            set_module(gm, node.target, _quant_layer(conv, layer_config, node.target))
            continue
        bn_node = single_user(node)
        bn = module_of(bn_node) if bn_node is not None else None
        if bn is None or calls[bn_node.target] != 1 or not _foldable_bn(conv, bn) or skipped(bn_node.target, bn):
            set_module(gm, node.target, _quant_layer(conv, layer_config, node.target))
            continue
        relu_node = single_user(bn_node)  # a shared nn.ReLU is fine: it has no state
        fused = [conv, bn]
        if relu_node is not None and _is_relu(relu_node, module_of(relu_node)):
            fused.append(nn.ReLU())
        else:
            relu_node = None
        cls = QuantConvBnReLU2d if relu_node is not None else QuantConvBn2d
        set_module(gm, node.target, cls.from_float(nn.Sequential(*fused), layer_config, **options))
        for absorbed in (relu_node, bn_node):
            if absorbed is not None:
                absorbed.replace_all_uses_with(node)
                gm.graph.erase_node(absorbed)
                if absorbed.op == "call_module":
                    absorbed_modules.add(absorbed.target)
    if qconfig.activation is not None:
        _quantize_adds(gm, qconfig.activation, shapes_known=example_inputs is not None)
    gm.graph.lint()
    # The fused module shares the BatchNorm, so named_modules() never reports
    # the old path as unused: delete absorbed modules that no node calls anymore.
    still_called = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    for target in absorbed_modules - still_called:
        gm.delete_submodule(target)
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _share_tied_weight_quantizers(model: nn.Module) -> None:
    """Layers that share one weight parameter (an embedding tied to the output
    head) share the first one's weight quantizer when their specs agree, so the
    weight is quantized once, with one set of parameters."""
    first: dict[int, nn.Module] = {}
    for module in model.modules():
        if isinstance(module, _QAT_LAYERS) and module.weight_quantizer is not None:
            owner = first.setdefault(id(module.weight), module)
            if owner is not module and owner.weight_quantizer.spec == module.weight_quantizer.spec:
                module.weight_quantizer = owner.weight_quantizer


def _inference_form_batchnorms(model: nn.Module) -> None:
    """Standalone BatchNorms (not a QuantConvBn2d's own) compute their eval mode as
    the ChannelAffine that convert makes of them (nn/affine.py)."""
    owned = {id(m.bn) for m in model.modules() if isinstance(m, QuantConvBn2d)}
    for name, m in list(model.named_modules()):
        form = INFERENCE_FORMS.get(type(m))
        if form is not None and id(m) not in owned and m.track_running_stats:
            set_module(model, name, form.from_batchnorm(m))


def _is_relu(node: fx.Node, module: nn.Module | None) -> bool:
    if module is not None:
        return type(module) is nn.ReLU
    return node.op == "call_function" and node.target in _RELU_FUNCTIONS or \
        (node.op == "call_method" and node.target in ("relu", "relu_"))


@torch.no_grad()
def _propagate_shapes(gm: fx.GraphModule, example_inputs: tuple) -> None:
    """Records each node's tensor metadata (eval mode, so BN statistics stay untouched;
    the quantizers of already-swapped attention modules off, so nothing is observed)."""
    modes = {m: m.training for m in gm.modules()}
    flags = [(q, q.enabled, q.observing) for q in gm.modules() if isinstance(q, Quantizer)]
    gm.eval()
    for q, _, _ in flags:
        q.disable().observe(False)
    try:
        ShapeProp(gm).propagate(*example_inputs)
    except Exception as err:  # noqa: BLE001 (ShapeProp wraps the cause: report the cause itself)
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        node = getattr(err, "args", [""])[0]
        where = ""
        if isinstance(node, str) and "While executing" in node:
            where = " at " + node.split("While executing", 1)[1].splitlines()[0].strip()
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in example_inputs]
        raise ValueError(f"prepare_qat: the model cannot run on example_inputs {shapes}{where}: "
                         f"{type(cause).__name__}: {cause}") from cause
    finally:
        for m, mode in modes.items():
            m.training = mode
        for q, enabled, observing in flags:
            (q.enable() if enabled else q.disable()).observe(observing)


def _is_float_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return hasattr(meta, "dtype") and meta.dtype.is_floating_point


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADD_TARGETS) or \
        (node.op == "call_method" and node.target in ("add", "add_"))


def _scope(node: fx.Node) -> str:
    """Qualified name of the module whose forward contains ``node``."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def _quantize_adds(gm: fx.GraphModule, spec: QuantSpec, shapes_known: bool) -> None:
    """Inserts a Quantizer on both inputs of every add of two floating tensors
    (of two traced values when shapes are unknown). Adds inside skipped modules
    are not traced, so they are not seen here."""
    per_scope: dict[str, int] = {}
    devices = {t.device for t in itertools.chain(gm.parameters(), gm.buffers())}
    # On the model's device when it has one; a model spread over devices gets them on the CPU, to be moved.
    device = devices.pop() if len(devices) == 1 else torch.device("cpu")
    for node in list(gm.graph.nodes):
        if not _is_add(node) or len(node.args) < 2:
            continue
        inputs = node.args[:2]
        if not all(isinstance(a, fx.Node) and (not shapes_known or _is_float_tensor(a)) for a in inputs):
            continue
        scope = _scope(node)
        k = per_scope[scope] = per_scope.get(scope, -1) + 1
        base = (scope + "." if scope else "") + ("add" if k == 0 else f"add_{k}")
        quantized = []
        for i, arg in enumerate(inputs):
            name = f"{base}_input{i}_quantizer"
            gm.add_submodule(name, Quantizer(spec).to(device))
            with gm.graph.inserting_before(node):
                quantized.append(gm.graph.call_module(name, (arg,)))
        node.args = tuple(quantized) + tuple(node.args[2:])


# --------------------------------------------------------------------- module walk
def _prepare_modules(model: nn.Module, qconfig: QConfig, skipped, first_last_bits,
                     options: dict[str, Any], notes: dict[str, str]) -> nn.Module:
    """Fallback: replaces modules by walking the module tree (registration order)."""
    named = dict(model.named_modules())
    layers = [name for name, m in named.items() if _quantizable(m) and not skipped(name, m)]
    config_for = _qconfig_for(layers, qconfig, first_last_bits)
    replacements: dict[str, nn.Module] = {}
    for parent_name, parent in named.items():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for i, (child_name, conv) in enumerate(children[:-1]):
            path = f"{parent_name}.{child_name}" if parent_name else child_name
            bn_name, bn = children[i + 1]
            bn_path = f"{parent_name}.{bn_name}" if parent_name else bn_name
            if path not in layers or config_for(path) is None or not _foldable_bn(conv, bn) or skipped(bn_path, bn):
                continue
            fused = [conv, bn]
            relu_path = None
            if i + 2 < len(children) and type(children[i + 2][1]) is nn.ReLU:
                relu_path = f"{parent_name}.{children[i + 2][0]}" if parent_name else children[i + 2][0]
                fused.append(nn.ReLU())
            cls = QuantConvBnReLU2d if relu_path else QuantConvBn2d
            replacements[path] = cls.from_float(nn.Sequential(*fused), config_for(path), **options)
            replacements.update({p: nn.Identity() for p in (bn_path, relu_path) if p})
    for path in layers:
        if config_for(path) is None:
            notes[path] = "first_last_bits='float'"
        elif path not in replacements:
            replacements[path] = _quant_layer(named[path], config_for(path), path)
    for path, module in replacements.items():
        set_module(model, path, module)
    return model
