"""The fake-quantizer module: one tensor's quantization state and its observer.

State (all in parameters/buffers, so ``state_dict``, DDP and checkpoints carry it):

- uniform: ``scale`` (float32) and ``zero_point`` (int32; a float parameter for
  learnable asymmetric LSQ+), ``alpha`` is ``None``;
- PoT/APoT: ``alpha`` (the clipping value), ``scale``/``zero_point`` are ``None``;
- shapes: ``[]`` per tensor, ``[C]`` per channel, the tensor's shape with
  ``size(axis) / group_size`` on ``axis`` per group. Built without ``shape``,
  a per-channel/per-group quantizer starts with empty (``[0]``) state and takes
  its shape from the first tensor it observes or from a loaded state dict;
- flags ``fake_quant_enabled``, ``observer_enabled``, ``initialized`` (uint8 buffers).

Learnable state (``spec.learnable``) is an ``nn.Parameter``; LSQ's gradient
scale ``1/sqrt(n * qmax)`` (``n`` elements per scale) is applied by the op.

Loading a state dict that lacks some of a quantizer's entries, or whose
entries disagree in shape, is an error even with ``strict=False``: a
half-loaded quantizer would quantize with placeholder values.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..functional import fake_quant_uniform, lsq_grad_factor, uniform_bounds
from ..observers import MinMaxObserver, Observer, make_observer
from ..spec import QuantSpec
from ._mirrored import MirroredStateMixin

MIN_SCALE = 1e-8
"""Default floor of a computed scale / clipping value: an all-zero (or constant
zero) tensor gets this scale instead of 0, and learned values are projected
onto ``>= min_scale`` in the forward pass."""

_STATE_NAMES = ("scale", "zero_point", "alpha")


def param_shape(spec: QuantSpec, shape: Sequence[int]) -> tuple[int, ...]:
    """Shape of the quantization parameters of a tensor of ``shape`` under ``spec``."""
    if spec.granularity == "tensor":
        return ()
    rank = len(shape)
    if not -rank <= spec.axis < rank:
        raise ValueError(f"axis={spec.axis} is out of range for a tensor of shape {tuple(shape)}")
    axis = spec.axis % rank
    if spec.granularity == "channel":
        return (int(shape[axis]),)
    if shape[axis] % spec.group_size:
        raise ValueError(f"group_size={spec.group_size} does not divide size {shape[axis]} of axis {axis} "
                         f"(tensor shape {tuple(shape)})")
    out = [int(s) for s in shape]
    out[axis] //= spec.group_size
    return tuple(out)


def qparams_from_range(spec: QuantSpec, lo: torch.Tensor, hi: torch.Tensor,
                       min_scale: float = MIN_SCALE) -> dict[str, torch.Tensor]:
    """Quantization parameters that map the clipping range ``[lo, hi]`` onto ``spec``'s grid.

    - PoT/APoT: ``alpha = max(|lo|, |hi|)``.
    - uniform symmetric: ``scale = max(|lo|, |hi|) / qmax``, ``zero_point = 0``.
    - uniform asymmetric: the range is widened to contain 0 (so zero is exact),
      ``scale = (hi - lo) / (qmax - qmin)``, ``zero_point = qmin - round(lo / scale)``.

    Scales and ``alpha`` are raised to ``min_scale`` (never 0 or NaN for a
    finite range).
    """
    lo, hi = lo.float(), hi.float()
    amax = torch.maximum(lo.abs(), hi.abs())
    if spec.scheme != "uniform":
        return {"alpha": amax.clamp_min(min_scale)}
    qmin, qmax = uniform_bounds(spec.bits, spec.signed, spec.narrow_range)
    if spec.symmetric:
        scale = (amax / qmax).clamp_min(min_scale)
        return {"scale": scale, "zero_point": torch.zeros_like(scale, dtype=torch.int32)}
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(min_scale)
    # lo <= 0 puts the zero point in range up to rounding; the clamp only absorbs that.
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return {"scale": scale, "zero_point": zero_point}


def _project(t: torch.Tensor, lo: float, hi: float | None = None) -> torch.Tensor:
    """``clamp(t, lo, hi)`` in value, identity in gradient (straight-through).

    A learned value that an optimizer step pushed out of the valid domain is
    used at the nearest valid value, but keeps receiving gradient, so it can
    move back (a plain clamp would zero its gradient and could leave it stuck).
    The value is exactly the clamp: ``c.detach() + (t - t.detach())`` adds 0.
    """
    return t.clamp(lo, hi).detach() + (t - t.detach())


class _GroupMinMaxObserver(MinMaxObserver):
    """Min/max of each group of ``group_size`` consecutive elements along ``axis``,
    flattened in the order of the per-group parameter tensor."""

    def __init__(self, axis: int, group_size: int) -> None:
        super().__init__(axis=axis)
        self.group_size = group_size

    def _per_channel_view(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        axis = self.axis % x.dim()
        grouped = x.unflatten(axis, (-1, self.group_size)).movedim(axis + 1, -1)
        return grouped.reshape(-1, self.group_size)


class Quantizer(MirroredStateMixin, nn.Module):
    """Fake-quantizes one tensor (a weight or an activation) according to a :class:`QuantSpec`.

    ``forward(x)``: when observing, records ``x`` in the observer (and, if fake
    quantization is also on, recomputes the parameters from it, like
    ``torch.ao``'s ``FakeQuantize``); when fake quantization is enabled, returns
    the fake-quantized ``x``, else ``x`` itself.

    Args:
        spec: how the tensor is quantized.
        shape: shape of the tensor it will see, if known (fixes the parameter
            shape now; otherwise per-channel/per-group state is shaped lazily).
        role: ``"weight"`` or ``"activation"``; :func:`quantext.calibrate`'s
            ``method`` override applies to activations only.
        min_scale: floor of computed and learned scales / ``alpha``.
    """

    def __init__(self, spec: QuantSpec, shape: Sequence[int] | None = None, *, role: str = "activation",
                 min_scale: float = MIN_SCALE) -> None:
        super().__init__()
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        if role not in ("weight", "activation"):
            raise ValueError(f"role must be 'weight' or 'activation', got {role!r}")
        if not (math.isfinite(min_scale) and min_scale > 0):
            raise ValueError(f"min_scale must be positive and finite, got {min_scale}")
        if spec.granularity == "group" and spec.calibration != "max":
            raise ValueError("per-group quantizers take their ranges from the tensor itself: use "
                             f"calibration='max', got {spec.calibration!r}")
        self.spec = spec
        self.role = role
        self.min_scale = float(min_scale)
        self.name = ""  # qualified name in the model, set by prepare_qat/calibrate/convert for messages
        pshape = param_shape(spec, shape) if shape is not None else (() if spec.granularity == "tensor" else (0,))
        uniform = spec.scheme == "uniform"
        learned_zero_point = spec.learnable and not spec.symmetric
        self._register_state("scale", torch.ones(pshape) if uniform else None, spec.learnable)
        self._register_state("zero_point", (torch.zeros(pshape) if learned_zero_point else
                                            torch.zeros(pshape, dtype=torch.int32)) if uniform else None,
                             learned_zero_point)
        self._register_state("alpha", None if uniform else torch.ones(pshape), spec.learnable)
        self.observer = self._new_observer()
        self._register_mirrored("fake_quant_enabled", 1)
        self._register_mirrored("observer_enabled", 0)
        self._register_mirrored("initialized", 0)

    # ----------------------------------------------------------------- state
    def _register_state(self, name: str, value: torch.Tensor | None, learnable: bool) -> None:
        if value is not None and learnable:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    def _new_observer(self) -> Observer:
        if self.spec.granularity == "group":
            return _GroupMinMaxObserver(self.spec.axis, self.spec.group_size)
        return make_observer(self.spec)

    def _state(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n) for n in _STATE_NAMES if getattr(self, n) is not None}

    @property
    def _primary(self) -> torch.Tensor:
        """``scale`` (uniform) or ``alpha`` (PoT/APoT): its shape is the parameter shape."""
        return self.scale if self.alpha is None else self.alpha

    @property
    def _lazy(self) -> bool:
        return self.spec.granularity != "tensor" and self._primary.numel() == 0

    def _where(self) -> str:
        return f"Quantizer '{self.name}'" if self.name else "Quantizer"

    def _resize_lazy(self, shape: Sequence[int], device: torch.device) -> None:
        """Gives lazily shaped state its shape (placeholder values; Parameters keep their identity)."""
        for name, t in self._state().items():
            fresh = torch.zeros(shape, dtype=t.dtype, device=device) if name == "zero_point" else \
                torch.ones(shape, dtype=t.dtype, device=device)
            if isinstance(t, nn.Parameter):
                t.data = fresh
            else:
                setattr(self, name, fresh)

    def _check_shape(self, x: torch.Tensor) -> None:
        expected = param_shape(self.spec, x.shape)
        if self._lazy:
            self._resize_lazy(expected, x.device)
            return
        have = tuple(self._primary.shape)
        if have != expected:
            raise ValueError(f"{self._where()}: a tensor of shape {tuple(x.shape)} needs parameters of shape "
                             f"{expected}, but this quantizer holds shape {have}")

    # ----------------------------------------------------------------- flags
    @property
    def enabled(self) -> bool:
        """Fake quantization is applied in ``forward``."""
        return bool(self._get_mirrored("fake_quant_enabled"))

    @property
    def observing(self) -> bool:
        """``forward`` records its input in the observer."""
        return bool(self._get_mirrored("observer_enabled"))

    @property
    def calibrated(self) -> bool:
        """The parameters hold real values (from calibration, ``set_qparams`` or a checkpoint)."""
        return bool(self._get_mirrored("initialized"))

    def enable(self) -> "Quantizer":
        """Turns fake quantization on."""
        self._set_mirrored("fake_quant_enabled", 1)
        return self

    def disable(self) -> "Quantizer":
        """Turns fake quantization off (``forward`` returns its input)."""
        self._set_mirrored("fake_quant_enabled", 0)
        return self

    def observe(self, on: bool = True) -> "Quantizer":
        """Turns observation on or off."""
        self._set_mirrored("observer_enabled", int(bool(on)))
        return self

    def reset_observer(self, calibration: str | None = None) -> "Quantizer":
        """Replaces the observer by a fresh one, for ``calibration`` if given
        (which then also becomes ``spec.calibration``)."""
        if calibration is not None and calibration != self.spec.calibration:
            self.spec = self.spec.replace(calibration=calibration)
        self.observer = self._new_observer().to(self._primary.device)
        return self

    # ----------------------------------------------------------------- qparams
    @property
    def bounds(self) -> tuple[int, int]:
        """Integer range ``(qmin, qmax)`` of a uniform quantizer."""
        if self.spec.scheme != "uniform":
            raise ValueError(f"{self._where()}: bounds are defined for scheme='uniform', got {self.spec.scheme!r}")
        return uniform_bounds(self.spec.bits, self.spec.signed, self.spec.narrow_range)

    @torch.no_grad()
    def compute_qparams(self) -> "Quantizer":
        """Sets the parameters from the observer's range (``spec.calibration``), see
        :func:`qparams_from_range`."""
        if not self.observer.observed:
            raise RuntimeError(f"{self._where()}: compute_qparams needs observed data; run the model with "
                               "observe(True) first (qx.calibrate does)")
        lo, hi = self.observer.compute_range(self.spec)
        shape = self._primary.shape
        return self.set_qparams(**qparams_from_range(self.spec, lo.reshape(shape), hi.reshape(shape), self.min_scale))

    @torch.no_grad()
    def set_qparams(self, scale: torch.Tensor | None = None, zero_point: torch.Tensor | None = None,
                    alpha: torch.Tensor | None = None) -> "Quantizer":
        """Sets the parameters explicitly and marks the quantizer calibrated.

        Uniform: ``scale`` (positive, finite) and optionally ``zero_point``
        (default 0; must be 0 for a symmetric spec; integers unless it is a
        learned LSQ+ zero point). PoT/APoT: ``alpha``.
        """
        uniform = self.spec.scheme == "uniform"
        given = {"scale": scale, "zero_point": zero_point, "alpha": alpha}
        needed = ("scale",) if uniform else ("alpha",)
        for name, value in given.items():
            if value is not None and getattr(self, name) is None:
                raise ValueError(f"{self._where()}: {name} is not a parameter of scheme={self.spec.scheme!r}")
        for name in needed:
            if given[name] is None:
                raise ValueError(f"{self._where()}: set_qparams needs {name} for scheme={self.spec.scheme!r}")
            value = torch.as_tensor(given[name], dtype=torch.float32)
            if not bool(torch.isfinite(value).all() and (value > 0).all()):
                raise ValueError(f"{self._where()}: {name} must be positive and finite, got {value}")
            given[name] = value
        if uniform:
            scale = given["scale"]
            zp = torch.zeros(scale.shape, dtype=torch.int32) if zero_point is None else torch.as_tensor(zero_point)
            qmin, qmax = self.bounds
            if zp.shape != scale.shape:
                raise ValueError(f"{self._where()}: zero_point shape {tuple(zp.shape)} does not match scale shape "
                                 f"{tuple(scale.shape)}")
            if not self.zero_point.is_floating_point() and bool((zp != torch.round(zp)).any()):
                # An int32 zero point would silently truncate it (only LSQ+ keeps a float one).
                raise ValueError(f"{self._where()}: zero_point must hold integers, got {zp}")
            if bool(((zp < qmin) | (zp > qmax)).any()):
                raise ValueError(f"{self._where()}: zero_point must lie in [{qmin}, {qmax}], got {zp}")
            if self.spec.symmetric and bool((zp != 0).any()):
                raise ValueError(f"{self._where()}: a symmetric spec needs zero_point 0, got {zp}")
            given["zero_point"] = zp
        for name, value in given.items():
            if value is not None:
                self._assign(name, value)
        self._set_mirrored("initialized", 1)
        return self

    def _assign(self, name: str, value: torch.Tensor) -> None:
        current = getattr(self, name)
        value = value.to(device=current.device, dtype=current.dtype)
        if current.shape == value.shape:
            current.copy_(value)
            return
        if current.numel() != 0 or self.spec.granularity == "tensor":
            raise ValueError(f"{self._where()}: {name} has shape {tuple(current.shape)}, got shape "
                             f"{tuple(value.shape)}")
        if isinstance(current, nn.Parameter):
            current.data = value.clone()
        else:
            setattr(self, name, value.clone())

    def _effective(self) -> dict[str, torch.Tensor]:
        """The parameters as used: learned values projected into the valid domain."""
        state = self._state()
        if not self.spec.learnable:
            return state
        out = {"alpha": _project(state["alpha"], self.min_scale)} if "alpha" in state else \
            {"scale": _project(state["scale"], self.min_scale), "zero_point": state["zero_point"]}
        if "zero_point" in out and out["zero_point"].is_floating_point():
            out["zero_point"] = _project(out["zero_point"], *self.bounds)
        return out

    @torch.no_grad()
    def qparams(self) -> dict[str, torch.Tensor]:
        """The parameters in deployment form (detached): uniform ``{"scale": float32,
        "zero_point": int32}``, PoT/APoT ``{"alpha": float32}``; learned values are
        projected and the zero point rounded as the forward pass uses them."""
        out = {k: v.detach() for k, v in self._effective().items()}
        if "zero_point" in out:
            out["zero_point"] = torch.round(out["zero_point"]).to(torch.int32)
        return out

    @torch.no_grad()
    def freeze(self) -> "Quantizer":
        """Deployment form: observer off, learned parameters become buffers holding
        their projected values, ``spec.learnable`` becomes False."""
        self.observe(False)
        if self.spec.learnable:
            for name, value in self.qparams().items():
                delattr(self, name)
                self.register_buffer(name, value.clone())
            self.spec = self.spec.replace(learnable=False)
        return self

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._check_shape(x)
            self.observer(self._observed_tensor(x))
            if self.enabled:
                self.compute_qparams()
        if not self.enabled:
            return x
        if not self.calibrated:
            raise RuntimeError(f"{self._where()} is used with fake quantization enabled but was never calibrated: "
                               "run qx.calibrate(model, batches) (or call set_qparams), or disable it with "
                               "qx.disable_quant(model) / .disable()")
        params = self._effective()
        if self.spec.scheme == "uniform":
            return self._fake_quant_uniform(x, params["scale"], params["zero_point"])
        return self._fake_quant_levels(x, params["alpha"])

    def _fake_quant_uniform(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        qmin, qmax = self.bounds
        spec = self.spec
        grad_factor = lsq_grad_factor(x.numel() // max(scale.numel(), 1), qmax) if spec.learnable else 1.0
        return fake_quant_uniform(x, scale, zero_point, qmin, qmax, spec.per_channel_axis,
                                  spec.group_size or 0, grad_factor)

    # PoT/APoT dispatch: the level-table ops live in quantext.schemes and
    # quantext.functional (issue 3); imported here so that uniform quantizers
    # work without them.
    def _fake_quant_levels(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        from ..schemes import fake_quant  # noqa: PLC0415

        return fake_quant(x, self.spec, alpha=alpha)

    def _observed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """What the observer sees: with ``weight_norm`` (PoT/APoT) the normalized
        tensor is what gets quantized, so ``alpha`` is taken from its range."""
        if not self.spec.weight_norm:
            return x
        from ..functional import weight_normalize  # noqa: PLC0415

        return weight_normalize(x, axis=self.spec.per_channel_axis)

    def extra_repr(self) -> str:
        s = self.spec
        flags = ("on" if self.enabled else "off", " observing" if self.observing else "",
                 "" if self.calibrated else " uncalibrated")
        return f"{s.scheme} {s.bits}-bit {s.granularity}, role={self.role}, fake_quant={''.join(flags)}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        where = f"Quantizer '{prefix[:-1] or self.name}'"
        own = list(self._state()) + list(self._mirrored)
        absent = [n for n in own if prefix + n not in state_dict]
        if absent:
            # Raised even with strict=False: a half-loaded quantizer would quantize with placeholder values.
            error_msgs.append(f"{where}: the state dict has no {absent} (saved from a model with a different "
                              "quantizer configuration?)")
        shapes = {tuple(state_dict[prefix + n].shape) for n in self._state() if prefix + n in state_dict}
        if len(shapes) > 1:
            error_msgs.append(f"{where}: the state dict's quantization parameters disagree in shape: {sorted(shapes)}")
        elif shapes and self._lazy:
            shape = shapes.pop()
            self._resize_lazy(shape, self._primary.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not self.name and prefix:
            self.name = prefix[:-1]
