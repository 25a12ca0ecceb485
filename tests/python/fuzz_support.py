"""Shared pieces of the differential fuzz tests: hypothesis settings, random
shapes and memory layouts, special values, bitwise comparison and the
reduction of per-element gradient terms to parameter shape."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Sizes that straddle the 8/16-lane vector widths, plus the degenerate ones.
EDGE_SIZES = (0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 63, 65)
LAYOUTS = ("contiguous", "transposed", "sliced", "channels_last", "expanded")
# QUANTEXT_FUZZ_SCALE=10 runs ten times the examples (a longer local soak).
_SCALE = float(os.environ.get("QUANTEXT_FUZZ_SCALE", "1"))


def fuzz_settings(max_examples: int) -> settings:
    """Reproducible (derandomized, no example database) hypothesis settings."""
    return settings(max_examples=max(1, int(max_examples * _SCALE)), derandomize=True, deadline=None,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@st.composite
def shapes(draw, max_numel: int, max_dim: int = 4) -> tuple[int, ...]:
    """A shape of rank 0..max_dim with at most ``max_numel`` elements (edge sizes favoured)."""
    ndim = draw(st.integers(0, max_dim))
    out, budget = [], max_numel
    for _ in range(ndim):
        size = draw(st.one_of(st.sampled_from(EDGE_SIZES), st.integers(1, 40)))
        size = min(size, budget)
        out.append(size)
        budget = max(1, budget // max(size, 1))
    return tuple(out)


@st.composite
def layouts(draw, shape: tuple[int, ...]) -> tuple[str, int]:
    """A memory layout name valid for ``shape`` and the dimension it acts on."""
    allowed = ["contiguous"]
    if len(shape) >= 1:
        allowed += ["sliced", "expanded"]
    if len(shape) >= 2:
        allowed.append("transposed")
    if len(shape) == 4:
        allowed.append("channels_last")
    name = draw(st.sampled_from(allowed))
    dim = draw(st.integers(0, len(shape) - 1)) if shape else 0
    return name, dim


def in_layout(values: torch.Tensor, layout: tuple[str, int]) -> torch.Tensor:
    """``values`` (contiguous) in another memory layout. Every layout keeps the
    values except ``expanded``, a stride-0 broadcast of one slice along ``dim``."""
    name, dim = layout
    if name == "transposed":
        perm = list(range(values.dim()))[::-1]
        return values.permute(perm).contiguous().permute(perm)
    if name == "sliced":
        # Every other element of a buffer twice as long along `dim`, offset by one.
        big_shape = list(values.shape)
        big_shape[dim] = 2 * big_shape[dim] + 1
        big = torch.full(big_shape, float("nan"), dtype=values.dtype, device=values.device)
        view = big.narrow(dim, 1, 2 * values.shape[dim]).unflatten(dim, (values.shape[dim], 2)).select(dim + 1, 0)
        view.copy_(values)
        return view
    if name == "expanded":
        # A broadcast (stride 0) view when `dim` could be size 1; values along it are repeated.
        base = values.narrow(dim, 0, min(1, values.shape[dim])).clone()
        return base.expand(values.shape) if values.shape[dim] > 0 and base.shape[dim] == 1 else values
    if name == "channels_last":
        return values.contiguous(memory_format=torch.channels_last)
    return values


def is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: some permutation of the dimensions is contiguous."""
    expected = 1
    for stride, size in sorted((st_, n) for st_, n in zip(t.stride(), t.shape) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def sprinkle_specials(x: torch.Tensor, gen: torch.Generator, fraction: float) -> torch.Tensor:
    """Replaces about ``fraction`` of the (float64, contiguous) values by NaN, +-inf or +-0."""
    if fraction <= 0 or x.numel() == 0:
        return x
    specials = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0], dtype=x.dtype)
    pick = torch.rand(x.shape, generator=gen, dtype=torch.float64) < fraction
    which = torch.randint(0, len(specials), x.shape, generator=gen)
    return torch.where(pick, specials[which], x)


_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}


def assert_bitwise_equal(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Same dtype, shape and bits (any NaN equals any NaN; -0.0 differs from 0.0; integers exactly),
    ``got`` on any device."""
    got = got.to(want.device)
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    g, w = got.contiguous(), want.contiguous()
    if g.is_floating_point():
        nan_g, nan_w = g.isnan(), w.isnan()
        bits_g = torch.where(nan_g, 0, g.view(_INT_VIEW[g.dtype]))
        bits_w = torch.where(nan_w, 0, w.view(_INT_VIEW[w.dtype]))
        bad = (nan_g != nan_w) | (bits_g != bits_w)
    else:
        bad = g != w
    if bool(bad.any()):
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {g.numel()} values differ; first at flat index {i}: "
                             f"got {g.flatten()[i].item()!r}, expected {w.flatten()[i].item()!r}")


def assert_close_sum(got: torch.Tensor, want: torch.Tensor, tol: torch.Tensor, what: str) -> None:
    """``|got - want| <= tol`` elementwise (all float64-comparable, same shape), ``got`` on any device."""
    got = got.to(want.device)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    err = (got.double() - want.double()).abs()
    bad = ~(err <= tol)  # NaN anywhere is a failure
    if bool(bad.any()):
        i = int(bad.flatten().nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {got.numel()} sums off; first at {i}: got "
                             f"{got.flatten()[i].item()!r}, expected {want.flatten()[i].item()!r}, "
                             f"tolerance {tol.flatten()[i].item()!r}")


@dataclass(frozen=True)
class Granularity:
    """Where the parameters sit: ``axis`` None per tensor; ``group`` 0 per channel."""

    axis: int | None
    group: int
    tensor_shape: tuple[int, ...] = ()  # per-tensor parameter shape: [] or [1]

    def param_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.axis is None:
            return self.tensor_shape
        ax = self.axis % len(shape)
        if self.group == 0:
            return (shape[ax],)
        out = list(shape)
        out[ax] //= self.group
        return tuple(out)

    def expand(self, p: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Parameters broadcast to the input's shape (one value per element)."""
        if self.axis is None:
            return p.reshape(()).expand(shape)
        ax = self.axis % len(shape)
        if self.group == 0:
            view = [1] * len(shape)
            view[ax] = -1
            return p.reshape(view).expand(shape)
        return p.repeat_interleave(self.group, dim=ax)

    def reduce(self, terms: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Per-element terms summed per parameter (the shape of ``param_shape``)."""
        if self.axis is None:
            return terms.sum().reshape(self.tensor_shape)
        ax = self.axis % len(shape)
        if self.group == 0:
            others = [d for d in range(len(shape)) if d != ax]
            return terms.sum(others) if others else terms  # sum(dim=[]) would reduce everything
        return terms.unflatten(ax, (shape[ax] // self.group, self.group)).sum(ax + 1)


@st.composite
def granularities(draw, shape: tuple[int, ...], allow_group: bool = True) -> Granularity:
    kinds = ["tensor"] + (["channel"] + (["group"] if allow_group else []) if shape else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "tensor":
        return Granularity(None, 0, draw(st.sampled_from([(), (1,)])))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    if kind == "channel":
        return Granularity(axis, 0)
    size = shape[axis]
    divisors = [d for d in range(1, size + 1) if size % d == 0] if size else [1, 2, 3]
    return Granularity(axis, draw(st.sampled_from(divisors)))


@st.composite
def large_shapes(draw, max_numel: int, rows: tuple[int, ...]) -> tuple[int, ...]:
    """1-d, or ``rows x columns``, with 20 000 .. ``max_numel`` elements: spans many chunks and threads."""
    n = draw(st.integers(20_000, max_numel))
    r = draw(st.sampled_from(rows))
    return (r, n // r) if draw(st.booleans()) else (n,)


# The CPU kernels sum lanes in the compute type for up to 4096 / 16 elements
# before flushing into float64: the rounding error of a parameter-gradient sum
# is bounded by this many ulps of the sum of absolute terms.
ACCUMULATION_ULPS = 256 + 32


@dataclass(frozen=True)
class FuzzCase:
    """What every fuzz case draws besides its scheme: the tensor, the share of
    inputs on ties and special values, the gradient factor and the data seed."""
    shape: tuple[int, ...]
    layout: tuple[str, int]
    dtype: torch.dtype
    gran: Granularity
    tie_fraction: float
    special_fraction: float
    grad_factor: float
    seed: int
