"""Quantizer descriptions: :class:`QuantSpec` (one tensor) and :class:`QConfig`
(weights + activations of a layer). Both validate themselves on creation, and a
spec derives once the constants its op calls take (integer range, parameter
axis)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SCHEMES = ("uniform", "pot", "apot", "fp")
FP_SPECIALS = ("auto", "ieee", "fn", "finite")
FP_FORMATS = {"e4m3": (8, 4), "e5m2": (8, 5), "e2m3": (6, 2), "e3m2": (6, 3), "e2m1": (4, 2)}
"""The OCP formats by name: (bits, exp_bits)."""
BLOCK_FORMATS = {"mxfp8": ("e4m3", 32, "e8m0"), "mxfp8_e5m2": ("e5m2", 32, "e8m0"), "mxfp6_e2m3": ("e2m3", 32, "e8m0"),
                 "mxfp6_e3m2": ("e3m2", 32, "e8m0"), "mxfp4": ("e2m1", 32, "e8m0"), "nvfp4": ("e2m1", 16, "e4m3")}
"""The block-scaled formats by name: (element format, block size, scale format)."""
SCALE_FORMATS = ("float32", "e8m0", "e4m3")
GRANULARITIES = ("tensor", "channel", "group", "token")
CALIBRATION_METHODS = ("max", "percentile", "mse", "entropy", "aciq")
ROUNDINGS = ("nearest", "log")
BACKENDS = ("tensorrt", "onnxruntime")
UNIFORM_BITS = (2, 16)
"""Widths of a uniform grid, inclusive."""
MIN_SCALE = 1e-8
"""Default floor of a computed scale / clipping value: an all-zero (or constant
zero) tensor gets this scale instead of 0, and learned values are projected
onto ``>= min_scale`` in the forward pass."""


def grid_bounds(bits: int, signed: bool, narrow_range: bool) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a ``bits``-wide uniform grid, ``bits``
    already validated: signed ``[-2^(b-1), 2^(b-1)-1]``, unsigned ``[0, 2^b-1]``;
    ``narrow_range`` drops the lowest value (``-2^(b-1)``, or 0 unsigned)."""
    levels = 1 << bits
    lo, hi = (-(levels >> 1), (levels >> 1) - 1) if signed else (0, levels - 1)
    return lo + int(narrow_range), hi


def fp_max(exp_bits: int, man_bits: int, special: str) -> float:
    """Largest finite value of an ExMy format (``special`` resolved: see :class:`QuantSpec`)."""
    bias = (1 << (exp_bits - 1)) - 1
    top = (1 << exp_bits) - 1 - bias - (special == "ieee")
    return (2.0 - 2.0 ** -man_bits * (2 if special == "fn" else 1)) * 2.0 ** top


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _typed(name: str, value, kind: type) -> None:
    """A bool where an int is expected (or a float, an int-like string ...) is a TypeError."""
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an int' if kind is int else 'a bool'}, got {value!r}")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    Attributes:
        scheme: ``"uniform"`` (affine grid), ``"pot"`` (powers of two),
            ``"apot"`` (additive powers of two) or ``"fp"`` (a minifloat: sign,
            ``exp_bits`` exponent and ``bits - 1 - exp_bits`` mantissa bits,
            round to nearest even, subnormals, saturating; times ``scale``;
            :func:`fp_spec` names the OCP formats).
        bits: total bits per value including the sign bit (uniform 2..16,
            PoT/APoT 2..8; 1 for unsigned PoT/APoT).
        signed: values below zero are representable. Weights are signed,
            activations after ReLU unsigned.
        symmetric: uniform only: zero point fixed at 0 (always true for PoT/APoT).
        narrow_range: uniform signed only: drop ``-2^(b-1)`` so the grid is
            symmetric (what TensorRT uses for weights).
        granularity: ``"tensor"``, ``"channel"`` (one scale per index of
            ``axis``), ``"group"`` (``group_size`` consecutive elements along
            ``axis`` share one scale) or, for dynamic specs, ``"token"`` (one
            scale per row over the last dimension: per token of a
            ``[batch, sequence, features]`` activation).
        dynamic: uniform activations only: the scale (and zero point) are
            computed from each input as it is quantized, from its range (per
            tensor or per token), by one fused op (``torch.ops.quantext.
            fake_quant_dynamic``): nothing to calibrate, no state. The rule is
            that of a static ``"max"`` range: symmetric ``max|x| / qmax``,
            asymmetric ``(max(x, 0) - min(x, 0)) / (qmax - qmin)`` with zero
            point ``qmin - round(min(x, 0) / scale)``; non-finite values do not
            widen the range. Gradients: the clipped straight-through estimator
            (the scale is not differentiated through). A symmetric dynamic spec
            is signed; non-negative data take ``symmetric=False`` (zero point
            ``qmin``: the same grid).
        learnable: the scale (LSQ) / zero point (LSQ+, asymmetric) / clipping
            value ``alpha`` (PoT/APoT) is an ``nn.Parameter``.
        calibration: range method used by :func:`quantext.calibrate`.
        percentile: for ``calibration="percentile"``.
        k: APoT base bits per additive term.
        rounding: PoT only: ``"nearest"`` level in the linear domain or
            ``"log"`` (round ``log2|x|``, the seed's behaviour).
        weight_norm: APoT paper's ``(w - mean) / std`` before quantizing.
        exp_bits: ``"fp"`` only: exponent bits (bias ``2^(exp_bits-1) - 1``).
        scale_format: ``"float32"``, or for block-scaled ``"fp"`` specs (dynamic,
            per group) the format of each block's scale, computed from the
            block's absolute max: ``"e8m0"`` (OCP Microscaling: a power of two)
            or ``"e4m3"`` (NVFP4: an E4M3 scale times one float32 scale of the
            whole tensor); :mod:`quantext.block_scales` gives the rules.
        fp_special: ``"fp"`` only: the codes that are not numbers. ``"ieee"``:
            the top exponent holds inf and NaN (E5M2); ``"fn"``: no inf, only
            the all-ones code is NaN (E4M3FN); ``"finite"``: every code is a
            number (the OCP MX FP6/FP4 formats); ``"auto"``: E4M3 ``"fn"``, E5M2
            ``"ieee"``, every other format ``"finite"``.
        sign_from_data: calibration decides ``signed`` from the observed data:
            signed when it saw a negative value, unsigned (one more bit of
            magnitude) when it saw none; ``signed`` is the value until then. For
            grids without a zero point (symmetric uniform, PoT, APoT), whose
            unsigned form clips every negative value to 0; an asymmetric grid
            covers negative values with its zero point already. The spec a
            quantizer holds (and saves in its state) after calibration is the
            decided one. Without it, an unsigned spec whose calibration data hold
            negative values warns (quantizer name, fraction clipped).
    """

    scheme: str = "uniform"
    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    narrow_range: bool = False
    granularity: str = "tensor"
    axis: int = 0
    group_size: int | None = None
    learnable: bool = False
    calibration: str = "max"
    percentile: float = 99.99
    k: int = 2
    rounding: str = "nearest"
    weight_norm: bool = False
    sign_from_data: bool = False
    dynamic: bool = False
    exp_bits: int = 4
    fp_special: str = "auto"
    scale_format: str = "float32"

    def __post_init__(self) -> None:
        _choice("scheme", self.scheme, SCHEMES)
        _choice("granularity", self.granularity, GRANULARITIES)
        _choice("calibration", self.calibration, CALIBRATION_METHODS)
        _choice("rounding", self.rounding, ROUNDINGS)
        for name in ("bits", "axis", "k", "exp_bits") + (("group_size",) if self.group_size is not None else ()):
            _typed(name, getattr(self, name), int)
        for name in ("signed", "symmetric", "narrow_range", "learnable", "weight_norm", "sign_from_data",
                     "dynamic"):
            _typed(name, getattr(self, name), bool)
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)):
            raise TypeError(f"percentile must be a number, got {self.percentile!r}")
        _choice("scale_format", self.scale_format, SCALE_FORMATS)
        if self.scheme == "fp":
            self._check_fp()
        elif self.scale_format != "float32":
            raise ValueError(f"scale_format={self.scale_format!r} is for block-scaled scheme='fp' specs, got "
                             f"scheme={self.scheme!r}")
        lo, hi = UNIFORM_BITS if self.scheme == "uniform" else (1 if not self.signed else 2, 8)
        if not lo <= self.bits <= hi:
            raise ValueError(f"bits={self.bits} is out of range [{lo}, {hi}] for scheme={self.scheme!r}"
                             f"{' (signed)' if self.signed else ''}")
        if self.scheme not in ("uniform", "fp") and not self.symmetric:
            raise ValueError(f"symmetric=False is only defined for scheme='uniform', got scheme={self.scheme!r}")
        if self.narrow_range and not (self.scheme == "uniform" and self.signed):
            raise ValueError("narrow_range=True needs scheme='uniform' and signed=True")
        if self.granularity == "group":
            if self.group_size is None or self.group_size < 1:
                raise ValueError(f"granularity='group' needs group_size >= 1, got {self.group_size!r}")
        elif self.group_size is not None:
            raise ValueError(f"group_size={self.group_size} is only used with granularity='group', "
                             f"got granularity={self.granularity!r}")
        if self.granularity == "group" and self.scheme not in ("uniform", "fp"):
            raise ValueError(f"granularity='group' is only supported for scheme='uniform' or 'fp', got {self.scheme!r}")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.rounding == "log" and self.scheme != "pot":
            raise ValueError(f"rounding='log' is only defined for scheme='pot', got {self.scheme!r}")
        if self.weight_norm and self.scheme == "uniform":
            raise ValueError("weight_norm=True is the APoT paper's option: use scheme='pot' or 'apot'")
        if self.sign_from_data:
            if not self.symmetric:
                raise ValueError("sign_from_data=True is for grids without a zero point (symmetric=True): an "
                                 "asymmetric grid represents negative values through its zero point")
            if self.narrow_range:
                raise ValueError("sign_from_data=True needs narrow_range=False (an unsigned grid has no narrow range)")
            if self.bits < 2:
                raise ValueError(f"sign_from_data=True needs bits >= 2 (the signed grid), got bits={self.bits}")
        if self.dynamic and self.scheme != "fp":
            self._check_dynamic()
        elif self.granularity == "token" and not self.dynamic:
            raise ValueError("granularity='token' is for dynamic specs (dynamic=True): a static scale per token "
                             "would only fit the tokens it was calibrated on")
        # Constants of every op call, derived once (not fields: equality and replace() ignore them).
        bounds = grid_bounds(self.bits, self.signed, self.narrow_range) if self.scheme == "uniform" else None
        object.__setattr__(self, "_bounds", bounds)
        object.__setattr__(self, "_axis", None if self.granularity in ("tensor", "token") else self.axis)

    def _check_fp(self) -> None:
        _choice("fp_special", self.fp_special, FP_SPECIALS)
        man_bits = self.bits - 1 - self.exp_bits
        if self.exp_bits < 1 or man_bits < 0:
            raise ValueError(f"scheme='fp' needs 1 <= exp_bits <= bits - 1, got bits={self.bits}, "
                             f"exp_bits={self.exp_bits}")
        special = self.resolved_fp_special
        if special == "ieee" and self.exp_bits < 2 or special == "fn" and man_bits < 1:
            need = "exp_bits >= 2" if special == "ieee" else "a mantissa bit"
            raise ValueError(f"fp_special={special!r} needs {need} (it reserves codes of the top exponent), got "
                             f"E{self.exp_bits}M{man_bits}")
        for name, ok in (("signed", self.signed), ("symmetric", self.symmetric),
                         ("narrow_range", not self.narrow_range), ("weight_norm", not self.weight_norm),
                         ("sign_from_data", not self.sign_from_data)):
            if not ok:
                raise ValueError(f"scheme='fp' is a signed format with no zero point: {name}={getattr(self, name)} "
                                 "does not apply")
        if self.calibration != "max":
            raise ValueError(f"scheme='fp' calibrates with calibration='max' (scale = max|x| / the format's largest "
                             f"value), got {self.calibration!r}")
        if self.dynamic != (self.scale_format != "float32"):
            raise ValueError("a dynamic scheme='fp' spec is block-scaled (scale_format='e8m0' or 'e4m3', scales from "
                             f"each block's max) and a block-scaled one dynamic, got dynamic={self.dynamic}, "
                             f"scale_format={self.scale_format!r}")
        if self.dynamic and (self.granularity != "group" or self.learnable):
            raise ValueError(f"block-scaled fp specs take granularity='group' and computed scales (learnable=False), "
                             f"got granularity={self.granularity!r}, learnable={self.learnable}")
        if self.dynamic and (self.group_size or 0) & ((self.group_size or 0) - 1) or self.dynamic and \
                not 1 <= self.group_size <= 32:
            raise ValueError(f"block-scaled fp specs take blocks of a power of two up to 32 elements, got "
                             f"group_size={self.group_size}")

    @property
    def resolved_fp_special(self) -> str:
        """``fp_special`` with ``"auto"`` resolved (``"fp"`` specs)."""
        if self.fp_special != "auto":
            return self.fp_special
        return {(8, 4): "fn", (8, 5): "ieee"}.get((self.bits, self.exp_bits), "finite")

    @property
    def fp_max(self) -> float:
        """The largest finite value of an ``"fp"`` spec's format."""
        return fp_max(self.exp_bits, self.bits - 1 - self.exp_bits, self.resolved_fp_special)

    def _check_dynamic(self) -> None:
        if self.scheme != "uniform":
            raise ValueError(f"dynamic=True is defined for scheme='uniform', got scheme={self.scheme!r}")
        if self.granularity not in ("tensor", "token"):
            raise ValueError(f"dynamic=True takes granularity='tensor' or 'token', got {self.granularity!r}")
        for name in ("learnable", "sign_from_data", "weight_norm"):
            if getattr(self, name):
                raise ValueError(f"dynamic=True computes its parameters from each input: {name}=True does not apply")
        if self.symmetric and not self.signed:
            raise ValueError("dynamic=True with symmetric=True needs signed=True; for non-negative data use "
                             "symmetric=False (its zero point is then qmin: the same grid)")
        if self.calibration != "max":
            raise ValueError(f"dynamic=True takes each input's own range (calibration='max'), got "
                             f"calibration={self.calibration!r}")

    def replace(self, **changes) -> "QuantSpec":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def per_channel_axis(self) -> int | None:
        """The axis of per-channel/per-group parameters, or ``None`` per tensor
        (and for dynamic specs, whose parameters are not state)."""
        return self._axis

    @property
    def bounds(self) -> tuple[int, int]:
        """Integer range ``(qmin, qmax)`` of a uniform spec (see
        :func:`quantext.uniform_bounds`); ValueError for PoT/APoT."""
        if self._bounds is None:
            raise ValueError(f"bounds are defined for scheme='uniform', got scheme={self.scheme!r}")
        return self._bounds


def default_weight_spec(bits: int = 8, scheme: str = "uniform") -> QuantSpec:
    """Per-output-channel signed symmetric weights (narrow range for uniform)."""
    return QuantSpec(scheme=scheme, bits=bits, signed=True, symmetric=True, narrow_range=scheme == "uniform",
                     granularity="channel", axis=0)


def fp_spec(name: str, **fields) -> QuantSpec:
    """The ``"fp"`` spec of a format by name. Scaled by a float32 scale per
    tensor (or as ``fields`` say): ``"e4m3"`` (FP8, max 448), ``"e5m2"`` (FP8,
    max 57344), ``"e2m3"`` / ``"e3m2"`` (FP6, max 7.5 / 28), ``"e2m1"`` (FP4, max
    6). Block-scaled along ``axis`` (default -1, the last dimension: a Linear's
    input features), scales from each block's max: ``"mxfp8"`` (E4M3), ``"mxfp8_e5m2"``,
    ``"mxfp6_e2m3"``, ``"mxfp6_e3m2"``, ``"mxfp4"`` (E2M1; blocks of 32, E8M0
    scales: OCP Microscaling) and ``"nvfp4"`` (E2M1, blocks of 16, E4M3 scales
    and a float32 tensor scale). ``fields`` set the rest (granularity, axis,
    group_size, learnable ...)."""
    if name in BLOCK_FORMATS:
        element, block, scale_format = BLOCK_FORMATS[name]
        fields = {"granularity": "group", "axis": -1, "group_size": block, "dynamic": True,
                  "scale_format": scale_format, **fields}
        name = element
    if name not in FP_FORMATS:
        raise ValueError(f"fp_spec: name must be one of {tuple(FP_FORMATS) + tuple(BLOCK_FORMATS)}, got {name!r}")
    bits, exp_bits = FP_FORMATS[name]
    return QuantSpec(scheme="fp", bits=bits, exp_bits=exp_bits, calibration="max", **fields)


def dynamic_activation_spec(bits: int = 8, per_token: bool = True, symmetric: bool = True) -> QuantSpec:
    """Dynamic activations: ``bits``-bit uniform, scale (and zero point) from each
    input's range per token (per row over the last dimension) or per tensor;
    signed symmetric, or unsigned asymmetric with ``symmetric=False``."""
    return QuantSpec(bits=bits, signed=symmetric, symmetric=symmetric, granularity="token" if per_token else "tensor",
                     calibration="max", dynamic=True)


def default_activation_spec(bits: int = 8, scheme: str = "uniform", signed: bool = True,
                            calibration: str = "mse") -> QuantSpec:
    """Per-tensor activations, symmetric (TensorRT's form) unless ``signed=False``."""
    return QuantSpec(scheme=scheme, bits=bits, signed=signed, symmetric=True, granularity="tensor",
                     calibration=calibration)


@dataclass(frozen=True)
class QConfig:
    """Quantizer specs for a layer's weight and its input activation.

    ``None`` leaves that tensor in float.

    ``int32_bias``: round the layer's bias onto the grid integer kernels store
    it on: int32 with step ``input scale * weight scale`` (per output
    channel), zero point 0. ONNX Runtime does that to every Conv/Gemm bias
    between Q/DQ pairs (its ``WeightBiasQuantization`` rewrite, and
    ``QLinearConv``), which at 2-4 bits changes predictions; with the bias
    already on the grid the rewrite is exact. Applies where both quantizers are
    uniform, enabled and per tensor (input) / per tensor or channel (weight);
    :class:`~quantext.nn.QuantConvBn2d` rounds its folded bias once BN is frozen.
    """

    weight: QuantSpec | None = field(default_factory=default_weight_spec)
    activation: QuantSpec | None = field(default_factory=default_activation_spec)
    int32_bias: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.int32_bias, bool):
            raise TypeError(f"QConfig.int32_bias must be a bool, got {self.int32_bias!r}")
        for name in ("weight", "activation"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, QuantSpec):
                raise TypeError(f"QConfig.{name} must be a QuantSpec or None, got {type(value).__name__}")
        if self.weight is not None and self.weight.dynamic and self.weight.scheme != "fp":
            raise ValueError("QConfig.weight cannot be dynamic (dynamic=True is for activations, and for "
                             "block-scaled fp formats): a weight's scale is state, calibrated or learned")
        block_scaled = self.activation is not None and self.activation.scheme == "fp" and self.activation.dynamic
        if self.activation is not None and self.activation.granularity not in ("tensor", "token") \
                and not block_scaled:
            raise ValueError("QConfig.activation must be per tensor (granularity='tensor'), or per token when "
                             "dynamic: per-channel activations cannot be exported to TensorRT or ONNX Runtime "
                             "integer kernels")

    @classmethod
    def uniform(cls, bits: int = 8, act_bits: int | None = None, backend: str = "tensorrt",
                int32_bias: bool = False) -> "QConfig":
        """W``bits`` A``act_bits`` uniform: per-channel symmetric weights, per-tensor
        activations in the form the deployment ``backend`` runs as integers
        (docs/export.md):

        - ``"tensorrt"``: signed symmetric activations (int8, zero point 0:
          TensorRT takes nothing else);
        - ``"onnxruntime"``: unsigned asymmetric activations (uint8 with a zero
          point): ONNX Runtime's CPU provider fuses a Conv/Gemm/Add into
          ``QLinearConv``/``QGemm``/``QLinearAdd`` only when its input and output
          quantizers share one type, and absorbs a ReLU before a quantizer only
          when the zero point is the type's minimum.

        ``int32_bias``: see :class:`QConfig`.
        """
        _choice("backend", backend, BACKENDS)
        activation = default_activation_spec(act_bits or bits)
        if backend == "onnxruntime":
            activation = activation.replace(signed=False, symmetric=False)
        return cls(default_weight_spec(bits), activation, int32_bias)

    @classmethod
    def weight_only(cls, bits: int = 4, group_size: int = 128, learnable: bool = False,
                    calibration: str = "max") -> "QConfig":
        """Weight-only QAT of transformer layers: ``bits``-bit (2-8) signed
        symmetric weights with one scale per group of ``group_size`` along the
        input dimension (axis 1: a Linear's ``[out, in]`` weight, an embedding
        table's ``[tokens, dim]``, a Conv's input channels), ranges from each
        group's max or (``calibration="mse"``) the clip of least squared error
        per group, LSQ scales with ``learnable`` (initialized from those
        ranges); activations in float. A
        ``group_size`` that does not divide a layer's input dimension makes
        ``prepare_qat`` raise an error naming the layer and its shape."""
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ValueError(f"QConfig.weight_only: bits must be an int in [2, 8], got {bits!r}")
        _choice("calibration", calibration, ("max", "mse"))
        return cls(weight=QuantSpec(bits=bits, granularity="group", axis=1, group_size=group_size,
                                    learnable=learnable, calibration=calibration), activation=None)

    @classmethod
    def int8_dynamic(cls, weight_bits: int = 8, per_token: bool = True, symmetric: bool = True) -> "QConfig":
        """W``weight_bits`` (per output channel) with dynamic int8 activations,
        per token by default (:func:`dynamic_activation_spec`)."""
        return cls(default_weight_spec(weight_bits), dynamic_activation_spec(8, per_token, symmetric))

    @classmethod
    def int8_dynamic_int4_weight(cls, group_size: int = 32, learnable: bool = False, per_token: bool = True,
                                 symmetric: bool = True, calibration: str = "max") -> "QConfig":
        """int4 weights per group of ``group_size`` along the input dimension
        (:meth:`weight_only`) with dynamic int8 activations per token (torchao's
        ``Int8DynamicActivationInt4WeightConfig``; ``symmetric=False`` for uint8
        with a zero point); ``calibration`` of the weights as in :meth:`weight_only`."""
        return cls(weight=cls.weight_only(4, group_size, learnable, calibration).weight,
                   activation=dynamic_activation_spec(8, per_token, symmetric))

    @classmethod
    def int4_weight_only(cls, group_size: int = 128, learnable: bool = False, calibration: str = "max") -> "QConfig":
        """:meth:`weight_only` at 4 bits (torchao's ``int4_weight_only``)."""
        return cls.weight_only(4, group_size, learnable, calibration)
