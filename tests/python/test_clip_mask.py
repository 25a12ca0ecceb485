"""The bit-packed clip mask: with fixed parameters the forward saves one bit per
element for its backward instead of the input, and the gradient stays what ATen
(uniform) and the pure-PyTorch reference (PoT/APoT) give, bit for bit, for every
length (partial words), layout and dtype."""

import pytest
import torch

import quantext as qx
import schemes_reference as ref

ops = qx.ops


def saved_tensors(fn, *args):
    """The tensors autograd saves for the backward of fn(*args)."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, saved


def uniform(x, scale, zero_point, qmin, qmax, axis=None):
    return qx.fake_quant_uniform(x, scale, zero_point, qmin, qmax, axis)


def aten_grad(x, scale, zero_point, qmin, qmax, axis, dy):
    xa = x.detach().clone().requires_grad_()
    if axis is None:
        ya = torch.fake_quantize_per_tensor_affine(xa, float(scale), int(zero_point), qmin, qmax)
    else:
        ya = torch.fake_quantize_per_channel_affine(xa, scale, zero_point, axis, qmin, qmax)
    ya.backward(dy)
    return ya.detach(), xa.grad


def check_uniform(x, scale, zero_point, qmin, qmax, axis=None, expect_mask=True):
    x = x.detach().requires_grad_()
    y, saved = saved_tensors(uniform, x, scale, zero_point, qmin, qmax, axis)
    dy = torch.randn_like(x)
    y.backward(dy)
    ya, dxa = aten_grad(x, scale, zero_point, qmin, qmax, axis, dy)
    nan = torch.isnan(x)  # quantext keeps NaN, ATen maps it to a grid value; both give it no gradient
    assert torch.equal(torch.where(nan, 0, y), torch.where(nan, 0, ya)) and torch.isnan(y[nan]).all()
    assert torch.equal(x.grad, dxa)
    masks = [t for t in saved if t.dtype == torch.int32 and t.data_ptr() != zero_point.data_ptr()]
    if expect_mask:
        assert len(saved) == 1 and len(masks) == 1, [(t.dtype, t.shape) for t in saved]
        assert masks[0].numel() == (x.numel() + 31) // 32
    else:
        assert not masks and any(t is x or t.shape == x.shape for t in saved)


@pytest.mark.parametrize("n", [1, 31, 32, 33, 95, 8191, 8193, 100003])
def test_per_tensor_every_length(device, n):
    x = torch.randn(n, device=device) * 3
    check_uniform(x, torch.tensor(0.05, device=device), torch.tensor(3, dtype=torch.int32, device=device), 0, 127)


@pytest.mark.parametrize("shape, axis", [((4, 5, 7, 9), 1), ((6, 33), 0), ((3, 2, 8, 8), 1), ((17, 40), 0)])
def test_per_channel_partial_words(device, shape, axis):
    """Runs of 63, 33, 64 and 40 elements: words shared by neighbouring runs (and threads)."""
    x = torch.randn(shape, device=device) * 2
    c = shape[axis]
    scale = torch.rand(c, device=device) * 0.05 + 0.01
    zero = torch.randint(-3, 4, (c,), dtype=torch.int32, device=device)
    check_uniform(x, scale, zero, -8, 7, axis)


def test_channel_axis_innermost(device):
    """The CPU cycles through the channels (the Interleaved layout) and keeps the mask;
    on CUDA runs shorter than a word would cost a word per run: the input is saved."""
    x = torch.randn(64, 8, device=device)
    check_uniform(x, torch.full((8,), 0.1, device=device), torch.zeros(8, dtype=torch.int32, device=device), -8, 7,
                  axis=1, expect_mask=device == "cpu")


def test_layouts_and_gradients_of_any_layout(device):
    base = torch.randn(4, 16, 9, 9, device=device) * 2
    scale = torch.tensor(0.07, device=device)
    zero = torch.tensor(0, dtype=torch.int32, device=device)
    for x in (base.to(memory_format=torch.channels_last), base[:, ::2], base.transpose(2, 3)):
        check_uniform(x, scale, zero, -128, 127)
    # A gradient in another layout than the mask follows.
    x = base.to(memory_format=torch.channels_last).requires_grad_()
    dy = torch.randn(4, 16, 9, 9, device=device)
    uniform(x, scale, zero, -128, 127).backward(dy)
    _, dxa = aten_grad(x, scale, zero, -128, 127, None, dy)
    assert torch.equal(x.grad, dxa)
    x.grad = None
    uniform(x, scale, zero, -128, 127).backward(torch.ones(()).to(device).expand(4, 16, 9, 9))
    assert torch.equal(x.grad, aten_grad(x, scale, zero, -128, 127, None, torch.ones_like(x))[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(device, dtype):
    x = (torch.randn(1000, device=device) * 4).to(dtype).requires_grad_()
    scale = torch.tensor(0.05, device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    zero = torch.tensor(0, dtype=torch.int32, device=device)
    y = uniform(x, scale, zero, -8, 7)
    dy = torch.randn_like(x)
    y.backward(dy)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    q = torch.round(x.detach().to(acc) * (1 / scale).to(acc))  # the reciprocal in the scale's precision
    inside = (q >= -8) & (q <= 7)
    assert torch.equal(x.grad, torch.where(inside, dy, torch.zeros_like(dy)))


def test_nan_and_inf_have_no_gradient(device):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.1, 100.0], device=device).repeat(9)
    check_uniform(x, torch.tensor(0.1, device=device), torch.tensor(0, dtype=torch.int32, device=device), -8, 7)


def test_learned_scale_saves_the_input(device):
    x = torch.randn(100, device=device, requires_grad=True)
    scale = torch.tensor(0.05, device=device, requires_grad=True)
    zero = torch.tensor(0, dtype=torch.int32, device=device)
    _, saved = saved_tensors(uniform, x, scale, zero, -8, 7)
    assert any(t.data_ptr() == x.data_ptr() for t in saved)
    assert not [t for t in saved if t.dtype == torch.int32 and t.data_ptr() != zero.data_ptr()]


def test_no_grad_and_frozen_input_save_nothing(device):
    x = torch.randn(100, device=device)
    scale, zero = torch.tensor(0.05, device=device), torch.tensor(0, dtype=torch.int32, device=device)
    _, saved = saved_tensors(uniform, x, scale, zero, -8, 7)
    assert not saved
    with torch.no_grad():
        _, saved = saved_tensors(uniform, x.requires_grad_(), scale, zero, -8, 7)
    assert not saved


@pytest.mark.parametrize("scheme, bits, signed", [("pot", 4, True), ("apot", 4, False), ("apot", 8, True),
                                                  ("pot", 8, False)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_levels_mask_matches_reference(device, scheme, bits, signed, per_channel):
    x = (torch.randn(6, 37, 5, device=device) * 1.5).requires_grad_()
    axis = 1 if per_channel else None
    alpha = torch.rand(37, device=device) + 0.5 if per_channel else torch.tensor(1.2, device=device)
    y, saved = saved_tensors(qx.functional.fake_quant_levels, x, alpha, scheme, bits, signed, 2, "nearest", axis)
    dy = torch.randn_like(x)
    y.backward(dy)
    if per_channel and device != "cpu":  # runs of 5 elements: the input is saved (the CPU interleaves)
        assert not [t for t in saved if t.dtype == torch.int32]
    else:
        assert [t.shape for t in saved] == [torch.Size([(x.numel() + 31) // 32])]
    dx, _ = ref.grads(dy, x.detach(), alpha, scheme, bits, signed, axis=axis)
    assert torch.equal(y, ref.fake_quant(x.detach(), alpha, scheme, bits, signed, axis=axis))
    assert torch.equal(x.grad, dx)


def test_mask_ops_agree_with_plain_ops(device):
    x = torch.randn(3, 40, 33, device=device) * 2  # runs of 33: words shared by neighbouring channels
    s, z = torch.rand(40, device=device) * 0.1 + 0.01, torch.zeros(40, dtype=torch.int32, device=device)
    y, mask = ops.fake_quant_uniform_masked(x, s, z, -8, 7, 1)
    assert torch.equal(y, ops.fake_quant_uniform(x, s, z, -8, 7, 1))
    q = torch.round(x * (1 / s).reshape(1, -1, 1))
    inside = ((q >= -8) & (q <= 7)).reshape(-1)
    bits = (mask.view(-1, 1) >> torch.arange(32, device=device)) & 1
    assert torch.equal(bits.reshape(-1)[: x.numel()].bool(), inside)
    assert not bits.reshape(-1)[x.numel():].any()
    dy = torch.randn_like(x)
    assert torch.equal(ops.clip_mask_backward(dy, mask), torch.where(inside.reshape(x.shape), dy, 0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask=torch.zeros(3, dtype=torch.int32)), "mask must hold 4 contiguous words"),
    (dict(mask=torch.zeros(4, dtype=torch.int64)), "mask must be an int32"),
    (dict(grad=torch.zeros(100, 2)[:, 0]), "grad must be dense"),
    (dict(grad=torch.zeros(100, dtype=torch.int32)), "grad must be a floating"),
])
def test_clip_mask_backward_bad_input(kwargs, match):
    args = dict(grad=torch.zeros(100), mask=torch.zeros(4, dtype=torch.int32)) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        ops.clip_mask_backward(args["grad"], args["mask"])
