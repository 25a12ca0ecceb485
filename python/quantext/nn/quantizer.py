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

The spec (scheme, bits, signed, symmetric, narrow_range, granularity, axis,
group_size, k) is saved with the state (``<prefix>_extra_state``); loading a
state saved under another spec is an error naming both specs unless
``strict=False`` (then the values are loaded into this quantizer, whose spec
stays). State dicts saved before the spec was stored load as before.
:meth:`Quantizer.load_state_dict` is atomic: on any error the quantizer is
left exactly as it was.

Casting a model (``model.half()``, ``.to(torch.bfloat16)``, ``.double()``)
does not cast a quantizer's state: ``scale``/``alpha`` stay float32 (the
ops take half/bfloat16/float64 inputs with float32 parameters) and the
observer keeps its statistics' dtypes; devices move as usual.

Observing is thread-safe: threads feeding one quantizer serialize on its lock.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..calibration import Observer, make_observer
from ..calibration.observers import keeping_dtypes
from .._thread_lock import ThreadLock, module_lock
from .._transaction import atomic
from ..functional import weight_normalize
from ..schemes import _fake_quant as fake_quant
from ..spec import MIN_SCALE, QuantSpec
from ._mirrored import MirroredStateMixin



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


def range_step(spec: QuantSpec, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The step (uniform ``scale``) or clipping value (PoT/APoT ``alpha``) that maps
    the clipping range ``[lo, hi]`` onto ``spec``'s grid, before any floor (see
    :func:`qparams_from_range`); float32."""
    lo, hi = lo.float(), hi.float()
    if spec.scheme == "fp":
        return torch.maximum(lo.abs(), hi.abs()) / spec.fp_max
    if spec.scheme != "uniform":
        return torch.maximum(lo.abs(), hi.abs())
    qmin, qmax = spec.bounds
    if spec.symmetric:
        return torch.maximum(lo.abs(), hi.abs()) / qmax
    return (hi.clamp(min=0.0) - lo.clamp(max=0.0)) / (qmax - qmin)


def qparams_from_range(spec: QuantSpec, lo: torch.Tensor, hi: torch.Tensor,
                       min_scale: float = MIN_SCALE) -> dict[str, torch.Tensor]:
    """Quantization parameters that map the clipping range ``[lo, hi]`` onto ``spec``'s grid.

    - PoT/APoT: ``alpha = max(|lo|, |hi|)``.
    - uniform symmetric: ``scale = max(|lo|, |hi|) / qmax``, ``zero_point = 0``.
    - uniform asymmetric: the range is widened to contain 0 (so zero is exact),
      ``scale = (hi - lo) / (qmax - qmin)``, ``zero_point = qmin - round(lo / scale)``.

    Scales and ``alpha`` are raised to ``min_scale`` (never 0 or NaN for a
    finite range); :func:`range_step` is the value before that.
    """
    step = range_step(spec, lo, hi).clamp_min(min_scale)
    if spec.scheme == "fp":
        return {"scale": step}
    if spec.scheme != "uniform":
        return {"alpha": step}
    if spec.symmetric:
        return {"scale": step, "zero_point": torch.zeros_like(step, dtype=torch.int32)}
    qmin, qmax = spec.bounds
    # lo <= 0 puts the zero point in range up to rounding; the clamp only absorbs that.
    zero_point = (qmin - torch.round(lo.float().clamp(max=0.0) / step)).clamp(qmin, qmax).to(torch.int32)
    return {"scale": step, "zero_point": zero_point}


@dataclass(frozen=True)
class RangeFindings:
    """What a quantizer's last :meth:`Quantizer.compute_qparams` found in its data.

    Attributes:
        floored: the smallest scale (uniform) or ``alpha`` (PoT/APoT) the data
            asked for, when it was below the quantizer's ``min_scale`` and was
            raised to it (the grid is then coarser than the data's range);
            ``None`` when no value hit the floor. All-zero channels do not
            count: zero is exact at any scale.
        negative_fraction: fraction of the observed values that were negative
            (``None``: unknown, statistics loaded from a state dict).
        clipped_fraction: fraction of the observed values that the grid clips
            to 0 because it is unsigned without a zero point (0.0 otherwise;
            ``None``: unknown).
        signed: the ``signed`` the quantizer uses; for a ``sign_from_data``
            spec, the one calibration decided.
    """

    floored: float | None
    negative_fraction: float | None
    clipped_fraction: float | None
    signed: bool


class _StraightClamp(torch.autograd.Function):
    @staticmethod
    def forward(t: torch.Tensor, lo: float, hi: float | None) -> torch.Tensor:
        return t.clamp(lo, hi)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def _project(t: torch.Tensor, lo: float, hi: float | None = None) -> torch.Tensor:
    """``clamp(t, lo, hi)`` in value, identity in gradient (straight-through).

    A learned value that an optimizer step pushed out of the valid domain is
    used at the nearest valid value, but keeps receiving gradient, so it can
    move back (a plain clamp would zero its gradient and could leave it stuck).
    A non-finite value stays what it is (``inf`` is reported as ``inf`` by the
    op's check, not turned into NaN as ``c.detach() + (t - t.detach())`` would).
    """
    return _StraightClamp.apply(t, lo, hi)


SPEC_FIELDS = ("scheme", "bits", "signed", "symmetric", "narrow_range", "granularity", "axis", "group_size", "k",
               "sign_from_data", "dynamic", "exp_bits", "fp_special", "scale_format")
"""The spec fields a quantizer's saved state depends on (compared when loading)."""


def _spec_state(spec: QuantSpec) -> dict[str, Any]:
    return {f: getattr(spec, f) for f in SPEC_FIELDS}


def _describe(fields: dict[str, Any]) -> str:
    return "QuantSpec(" + ", ".join(f"{k}={fields.get(k)!r}" for k in SPEC_FIELDS) + ")"


def _load_is_strict() -> bool:
    """The ``strict`` argument of the ``nn.Module.load_state_dict`` call now running.

    ``nn.Module.load_state_dict`` passes ``strict=True`` to every
    ``_load_from_state_dict`` and filters missing/unexpected keys itself
    afterwards, so a module cannot see the user's ``strict=False``; it is read
    from that call's frame (True when there is none)."""
    code = nn.Module.load_state_dict.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return bool(frame.f_locals.get("strict", True))
        frame = frame.f_back
    return True


def _qparam_tensor(where: str, name: str, value: Any, dtype: torch.dtype | None) -> torch.Tensor:
    """``value`` (a tensor or real numbers) as a tensor, or a TypeError naming ``name``."""
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{where}: {name} must be a real tensor or number, got dtype {value.dtype}")
        return value.detach().to(dtype) if dtype is not None else value.detach()
    try:
        if isinstance(value, (bool, str, bytes)) or (isinstance(value, (list, tuple)) and any(
                isinstance(v, (bool, str, bytes)) for v in value)):
            raise TypeError
        return torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{where}: {name} must be a tensor or real numbers, got {value!r}") from None


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
        if spec.dynamic and role == "weight" and spec.scheme != "fp":
            raise ValueError("a weight quantizer cannot be dynamic (dynamic=True is for activations, and for "
                             "block-scaled fp formats): a weight's scale is state, calibrated or learned")
        if spec.granularity == "group" and spec.calibration not in ("max", "mse"):
            raise ValueError("per-group quantizers take their ranges from the tensor itself: use "
                             f"calibration='max' or 'mse', got {spec.calibration!r}")
        self.spec = spec
        self.role = role
        self.min_scale = float(min_scale)
        self.name = ""  # qualified name in the model, set by prepare_qat/calibrate/convert for messages
        pshape = param_shape(spec, shape) if shape is not None and not spec.dynamic else \
            (() if spec.granularity == "tensor" else (0,))
        uniform = spec.scheme == "uniform" and not spec.dynamic
        fp = spec.scheme == "fp" and not spec.dynamic
        learned_zero_point = spec.learnable and not spec.symmetric
        self._register_state("scale", torch.ones(pshape) if uniform or fp else None, spec.learnable)
        self._register_state("zero_point", (torch.zeros(pshape) if learned_zero_point else
                                            torch.zeros(pshape, dtype=torch.int32)) if uniform else None,
                             learned_zero_point)
        self._register_state("alpha", torch.ones(pshape) if spec.scheme in ("pot", "apot") else None, spec.learnable)
        self._state_names = ("scale", "zero_point") if uniform else ("scale",) if fp else () if spec.dynamic \
            else ("alpha",)
        # A dynamic quantizer has no state to calibrate: no observer, ready from the start.
        self.observer: Observer | None = None if spec.dynamic else make_observer(spec)
        self._register_mirrored("fake_quant_enabled", 1)
        self._register_mirrored("observer_enabled", 0)
        self._register_mirrored("initialized", int(spec.dynamic))
        self._lock = ThreadLock()
        self.findings: RangeFindings | None = None  # of the last compute_qparams
        self._warned: set[str] = set()  # finding kinds warned about (once per quantizer)

    # ----------------------------------------------------------------- casting
    def _apply(self, fn, recurse: bool = True):
        """``nn.Module._apply`` that moves but never re-types the quantization state.

        ``model.half()`` / ``.to(torch.bfloat16)`` cast every floating tensor;
        the ops need a float32 (or, with float64 inputs, float64) scale/alpha
        and a cast through half would also round it. So ``scale``,
        ``zero_point`` and ``alpha`` (and their gradients) keep their dtype and
        take only the new device."""
        state = [t for t in self._state().values() if t is not None]
        return super()._apply(keeping_dtypes(fn, state + [t.grad for t in state]), recurse)

    # ----------------------------------------------------------------- spec in the state dict
    def get_extra_state(self) -> dict[str, Any]:
        """The spec the state was computed for (plain values: ``weights_only`` loads read it)."""
        return {"quantext_spec": _spec_state(self.spec)}

    def set_extra_state(self, state: Any) -> None:
        """Checked in ``_load_from_state_dict`` (which knows ``strict``); nothing to set."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, atomic: on any error (missing or
        misshaped entries, another spec unless ``strict=False``) the quantizer
        keeps exactly its previous state."""
        return atomic(self.modules(), lambda: super(Quantizer, self).load_state_dict(state_dict, strict, assign))

    # ----------------------------------------------------------------- state
    def _register_state(self, name: str, value: torch.Tensor | None, learnable: bool) -> None:
        if value is not None and learnable:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    def _state(self) -> dict[str, torch.Tensor]:
        # Straight from the module's tables: every forward reads them, and nn.Module.__getattr__ is slow.
        params, buffers = self._parameters, self._buffers
        return {n: params[n] if n in params else buffers[n] for n in self._state_names}

    @property
    def _primary(self) -> torch.Tensor:
        """``scale`` (uniform) or ``alpha`` (PoT/APoT): its shape is the parameter shape."""
        return self.scale if self.alpha is None else self.alpha

    @property
    def _lazy(self) -> bool:
        return self.spec.granularity not in ("tensor", "token") and self._primary.numel() == 0

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

    def _set_flag(self, name: str, on: bool) -> "Quantizer":
        self._set_mirrored(name, int(bool(on)))
        return self

    def enable(self) -> "Quantizer":
        """Turns fake quantization on."""
        return self._set_flag("fake_quant_enabled", True)

    def disable(self) -> "Quantizer":
        """Turns fake quantization off (``forward`` returns its input)."""
        return self._set_flag("fake_quant_enabled", False)

    def observe(self, on: bool = True) -> "Quantizer":
        """Turns observation on or off."""
        return self._set_flag("observer_enabled", on)

    def reset_observer(self, calibration: str | None = None) -> "Quantizer":
        """Replaces the observer by a fresh one, for ``calibration`` if given
        (which then also becomes ``spec.calibration``). A dynamic quantizer has
        no observer: nothing to reset."""
        if self.spec.dynamic:
            if calibration not in (None, "max"):
                raise ValueError(f"{self._where()}: a dynamic quantizer takes each input's own range, not "
                                 f"calibration={calibration!r}")
            return self
        if calibration is not None and calibration != self.spec.calibration:
            self.spec = self.spec.replace(calibration=calibration)
        self.observer = make_observer(self.spec).to(self._primary.device)
        return self

    # ----------------------------------------------------------------- qparams
    @property
    def bounds(self) -> tuple[int, int]:
        """Integer range ``(qmin, qmax)`` of a uniform quantizer."""
        if self.spec.scheme != "uniform":
            raise ValueError(f"{self._where()}: bounds are defined for scheme='uniform', got {self.spec.scheme!r}")
        return self.spec.bounds

    @torch.no_grad()
    def compute_qparams(self, *, warn: bool = True) -> "Quantizer":
        """Sets the parameters from the observer's range (``spec.calibration``), see
        :func:`qparams_from_range`.

        A ``sign_from_data`` spec first becomes signed if the data held a
        negative value, unsigned if not. What was found is kept in
        :attr:`findings` (:class:`RangeFindings`). With ``warn``, warns once
        per quantizer (:func:`quantext.calibrate` reports all quantizers in one
        warning instead) when an unsigned grid without a zero point clips
        negative data, and when a scale or ``alpha`` hit the ``min_scale`` floor.
        """
        if self.spec.dynamic:
            raise RuntimeError(f"{self._where()} is dynamic: it computes its parameters from each input")
        if not self.observer.observed:
            raise RuntimeError(f"{self._where()}: compute_qparams needs observed data; run the model with "
                               "observe(True) first (qx.calibrate does)")
        negative = self.observer.negative_fraction()
        saw_negative = bool((self.observer.min_val < 0).any())
        if self.spec.sign_from_data and self.spec.signed != saw_negative:
            self.spec = self.spec.replace(signed=saw_negative)
        lo, hi = self.observer.compute_range(self.spec)
        shape = self._primary.shape
        lo, hi = lo.reshape(shape), hi.reshape(shape)
        step = range_step(self.spec, lo, hi)
        # An all-zero channel (an embedding's padding row, a pruned filter) is exact at any scale.
        below = (step < self.min_scale) & ((lo != 0) | (hi != 0))
        floored = bool(below.any())
        clips = not self.spec.signed and self.spec.symmetric
        self.findings = RangeFindings(
            floored=float(step[below].min()) if floored else None, negative_fraction=negative,
            clipped_fraction=(negative if clips else 0.0) if saw_negative else 0.0, signed=self.spec.signed)
        self.set_qparams(**qparams_from_range(self.spec, lo, hi, self.min_scale))
        if warn:
            for kind, message in self.finding_messages().items():
                if kind not in self._warned:
                    self._warned.add(kind)
                    warnings.warn(message, stacklevel=2)
        return self

    def finding_messages(self) -> dict[str, str]:
        """:attr:`findings` as warning texts: ``"clip"`` (negative values clipped by
        an unsigned grid without a zero point) and ``"floor"`` (a scale or
        ``alpha`` raised to ``min_scale``), each only when it happened."""
        f, out = self.findings, {}
        if f is None:
            return out
        if f.clipped_fraction is None or f.clipped_fraction > 0:
            amount = "some" if f.clipped_fraction is None else f"{f.clipped_fraction:.1%}"
            out["clip"] = (f"{self._where()} clips negative values: {amount} of the values it was calibrated on are "
                           f"negative (down to {float(self.observer.min_val.min()):.3g}) and its unsigned spec has "
                           "no zero point, so they become 0; use signed=True, sign_from_data=True or symmetric=False")
        if f.floored is not None:
            what = "alpha" if self.spec.scheme in ("pot", "apot") else "scale"
            out["floor"] = (f"{self._where()} hit the scale floor: its data asked for a {what} of {f.floored:.3g}, "
                            f"below min_scale={self.min_scale:g}, which it uses instead (a grid coarser than the "
                            "data; tiny activations often mean BatchNorm statistics that do not fit the data)")
        return out

    @torch.no_grad()
    def set_qparams(self, scale: torch.Tensor | None = None, zero_point: torch.Tensor | None = None,
                    alpha: torch.Tensor | None = None) -> "Quantizer":
        """Sets the parameters explicitly and marks the quantizer calibrated.

        Uniform: ``scale`` (positive, finite) and optionally ``zero_point``
        (default 0; must be 0 for a symmetric spec; integers unless it is a
        learned LSQ+ zero point). PoT/APoT: ``alpha``. Not for dynamic specs.
        """
        if self.spec.dynamic:
            raise ValueError(f"{self._where()} is dynamic: its parameters come from each input, none can be set")
        uniform = self.spec.scheme == "uniform"
        given = {"scale": scale, "zero_point": zero_point, "alpha": alpha}
        needed = ("alpha",) if self.spec.scheme in ("pot", "apot") else ("scale",)
        for name, value in given.items():
            if value is not None and getattr(self, name) is None:
                raise ValueError(f"{self._where()}: {name} is not a parameter of scheme={self.spec.scheme!r}")
        for name in needed:
            if given[name] is None:
                raise ValueError(f"{self._where()}: set_qparams needs {name} for scheme={self.spec.scheme!r}")
            value = _qparam_tensor(self._where(), name, given[name], torch.float32)
            if not bool(torch.isfinite(value).all() and (value > 0).all()):
                raise ValueError(f"{self._where()}: {name} must be positive and finite, got {value}")
            given[name] = value
        if uniform:
            scale = given["scale"]
            zp = torch.zeros(scale.shape, dtype=torch.int32) if zero_point is None else \
                _qparam_tensor(self._where(), "zero_point", zero_point, None)
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
        out = {k: _project(v, self.min_scale) if k in ("alpha", "scale") else v for k, v in state.items()}
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
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self._where()}: expected a tensor, got {type(x).__name__}")
        if self.observing and not self.spec.dynamic:
            self._observe(x)
        if not self.enabled:
            return x
        if not self.calibrated:
            raise RuntimeError(f"{self._where()} is used with fake quantization enabled but was never calibrated: "
                               "run qx.calibrate(model, batches) (or call set_qparams), or disable it with "
                               "qx.disable_quant(model) / .disable()")
        return fake_quant(x, self.spec, **self._effective(), min_scale=self.min_scale)

    def _observe(self, x: torch.Tensor) -> None:
        if x.is_complex():
            raise TypeError(f"{self._where()}: complex tensors cannot be quantized (got {x.dtype})")
        with module_lock(self):
            try:
                self._check_shape(x)
                self.observer(self._observed_tensor(x))
                if self.enabled:
                    self.compute_qparams()
            except ValueError as err:
                if str(err).startswith(self._where()):
                    raise
                raise ValueError(f"{self._where()}: {err}") from err

    def _observed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """What the observer sees: with ``weight_norm`` (PoT/APoT) the normalized
        tensor is what gets quantized, so ``alpha`` is taken from its range."""
        if not self.spec.weight_norm:
            return x
        return weight_normalize(x, axis=self.spec.per_channel_axis)

    def extra_repr(self) -> str:
        s = self.spec
        flags = ("on" if self.enabled else "off", " observing" if self.observing else "",
                 "" if self.calibrated else " uncalibrated")
        return f"{s.scheme} {s.bits}-bit {s.granularity}, role={self.role}, fake_quant={''.join(flags)}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        where = f"Quantizer '{prefix[:-1] or self.name}'"
        extra_key = prefix + "_extra_state"
        saved_extra = state_dict.get(extra_key)
        adopt_signed = None
        if isinstance(saved_extra, dict) and isinstance(saved_extra.get("quantext_spec"), dict):
            saved_spec, mine = saved_extra["quantext_spec"], _spec_state(self.spec)
            differs = [f for f in SPEC_FIELDS if f in saved_spec and saved_spec[f] != mine[f]]
            if self.spec.sign_from_data and differs == ["signed"]:
                # Calibration decided the sign of the saved state: take it (once the load succeeds).
                adopt_signed, differs = bool(saved_spec["signed"]), []
            if differs and _load_is_strict():
                error_msgs.append(f"{where}: the state dict was saved for {_describe(saved_spec)} but this quantizer "
                                  f"has {_describe(mine)} (they differ in {differs}); pass strict=False to load "
                                  "the values anyway")
                return
        elif saved_extra is not None and _load_is_strict():
            error_msgs.append(f"{where}: unreadable {extra_key!r} entry (expected the saved spec), got "
                              f"{type(saved_extra).__name__}")
            return
        errors_before = len(error_msgs)
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
        if extra_key in missing_keys:  # saved before quantizers stored their spec
            missing_keys.remove(extra_key)
        if adopt_signed is not None and len(error_msgs) == errors_before:
            self.spec = self.spec.replace(signed=adopt_signed)
        if not self.name and prefix:
            self.name = prefix[:-1]
