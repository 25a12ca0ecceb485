"""Level tables and APoT decode tables against exact rational references."""

from fractions import Fraction as F

import pytest
import torch
from torch.library import opcheck

import quantext as qx
import schemes_reference as ref

KNOWN_APOT = {
    2: [F(0), F(1, 4), F(1, 2), F(1)],
    3: [F(0), F(1, 10), F(2, 10), F(3, 10), F(4, 10), F(6, 10), F(8, 10), F(1)],
    4: [F(0), F(1, 48), F(1, 24), F(1, 16), F(1, 12), F(1, 8), F(1, 6), F(3, 16), F(1, 4), F(1, 3), F(3, 8),
        F(1, 2), F(2, 3), F(11, 16), F(3, 4), F(1)],
}


def as_tensor(fractions):
    return torch.tensor([float(f) for f in fractions], dtype=torch.float64)


def signed_table(magnitudes: torch.Tensor) -> torch.Tensor:
    return torch.cat([-magnitudes[1:].flip(0), magnitudes])


@pytest.mark.parametrize("b", sorted(KNOWN_APOT))
def test_apot_known_sets_exact(b):
    expected = as_tensor(KNOWN_APOT[b])
    assert torch.equal(qx.levels("apot", b, signed=False), expected)
    assert torch.equal(qx.levels("apot", b + 1, signed=True), signed_table(expected))


@pytest.mark.parametrize("b", [1, 3, 5])
def test_apot_reference_code_sets(b):
    # DESIGN 2.3: B=3 {0,2^-1,2^-2,2^-4}+{0,2^-3}; B=5 three terms; B=1 {0, 1}.
    got = qx.levels("apot", b, signed=False)
    assert torch.equal(got, ref.magnitude_tensor("apot", b))
    assert len(got) == 2 ** b


@pytest.mark.parametrize("b", range(1, 9))
@pytest.mark.parametrize("k", range(1, 6))
def test_apot_sets(b, k):
    # k | B: P_i = {0} U {2^-(i + j*n)}; otherwise the documented extension
    # (closed form in the reference). Every distinct sum, normalized.
    assert torch.equal(qx.levels("apot", b, signed=False, k=k), ref.magnitude_tensor("apot", b, k))


@pytest.mark.parametrize("bits", range(1, 9))
def test_pot_sets(bits):
    b = bits
    expected = as_tensor([F(0)] + [F(1, 2 ** j) for j in reversed(range(2 ** b - 1))])
    assert torch.equal(qx.levels("pot", bits, signed=False), expected)
    if bits >= 2:
        assert torch.equal(qx.levels("pot", bits, signed=True), signed_table(as_tensor(
            [F(0)] + [F(1, 2 ** j) for j in reversed(range(2 ** (b - 1) - 1))])))


@pytest.mark.parametrize("scheme", ["pot", "apot"])
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_table_shape(scheme, bits, signed, k):
    if signed and bits == 1:
        return
    t = qx.levels(scheme, bits, signed=signed, k=k)
    b = ref.magnitude_bits(bits, signed)
    assert t.dtype == torch.float64
    assert len(t) == (2 ** (b + 1) - 1 if signed else 2 ** b)
    assert bool((t[1:] > t[:-1]).all()), "ascending and distinct"
    assert t[-1].item() == 1.0
    if signed:
        assert torch.equal(t, -t.flip(0))
    else:
        assert t[0].item() == 0.0


def test_pot_equals_one_term_apot():
    # PoT is APoT with a single term: k >= B gives the same grid.
    for b in range(1, 9):
        assert torch.equal(qx.levels("apot", b, signed=False, k=8), qx.levels("pot", b, signed=False))


def test_uneven_split_rule():
    # The documented generalization of the reference sets, e.g. B=7, k=2:
    # full terms {0,3,7}, {1,4,8}, {2,5,9} and the partial term {6}.
    table = qx.apot_decode_table(7, signed=False, k=2)
    assert table.shape == (128, 4)
    used = [sorted(set(col.tolist()) - {-1}) for col in table.T]
    assert used == [[0, 3, 7], [1, 4, 8], [2, 5, 9], [6]]


@pytest.mark.parametrize("bits,signed,k", [(b, s, k) for b in range(1, 9) for s in (False, True) for k in (1, 2, 3, 5)
                                           if not (s and b == 1)])
def test_decode_table_reproduces_levels(bits, signed, k):
    table = qx.apot_decode_table(bits, signed=signed, k=k)
    b = ref.magnitude_bits(bits, signed)
    assert table.dtype == torch.int64 and table.shape == (2 ** b, -(-b // k))

    def value(row):
        return sum((F(1, 2 ** e) for e in row if e >= 0), F(0))

    top = value(table[-1].tolist())
    exact = [value(row) / top for row in table.tolist()]
    assert torch.equal(as_tensor(exact), qx.levels("apot", bits, signed=signed, k=k)[-2 ** b:])
    # Every exponent is used by exactly one term; no term uses two at once.
    per_term = [set(col.tolist()) - {-1} for col in table.T]
    assert sum(len(s) for s in per_term) == len(set().union(*per_term))


def test_decode_table_reference_terms():
    table = qx.apot_decode_table(3, signed=False)
    # Exponents relative to the largest term (reference code's 2^-1 is e=0).
    used = [sorted(set(col.tolist()) - {-1}) for col in table.T]
    assert used == [[e - 1 for e in t] for t in ref.REFERENCE_TERMS[3]]


@pytest.mark.parametrize("call,match", [
    (lambda: qx.levels("uniform", 4), "scheme must be 'pot' or 'apot', got 'uniform'"),
    (lambda: qx.levels("pot", 9), r"bits must be in \[2, 8\] for a signed grid, got 9"),
    (lambda: qx.levels("pot", 1, signed=True), r"bits must be in \[2, 8\] for a signed grid, got 1"),
    (lambda: qx.levels("apot", 0, signed=False), r"bits must be in \[1, 8\] for an unsigned grid, got 0"),
    (lambda: qx.levels("apot", 4, k=0), r"k must be in \[1, 8\], got 0"),
    (lambda: qx.levels("apot", 8, signed=False, k=6), "k=6 .* 2\\^-65"),
    (lambda: qx.apot_decode_table(4, k=9), r"k must be in \[1, 8\], got 9"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_opcheck():
    opcheck(torch.ops.quantext.levels.default, ("apot", 5, True, 2))
    opcheck(torch.ops.quantext.apot_decode_table.default, (6, False, 3))
