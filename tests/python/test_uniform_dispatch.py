"""The uniform op as the dispatcher sees it: opcheck (schema, fake tensors,
autograd registration), torch.compile with fullgraph, and gradcheck."""

import pytest
import torch

import quantext as qx

ops = torch.ops.quantext


def sample_args():
    x = torch.randn(4, 6, 3, requires_grad=True)
    return [
        (x, torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32), -128, 127, None, 0, 1.0),
        (x, torch.rand(6) * 0.1 + 0.01, torch.zeros(6, dtype=torch.int32), 0, 15, 1, 0, 1.0),
        (x, torch.rand(4, 3, 3) * 0.1 + 0.01, torch.zeros(4, 3, 3, dtype=torch.int32), -8, 7, 1, 2, 1.0),
        (x, torch.tensor([0.1], requires_grad=True), torch.tensor([3.0], requires_grad=True), 0, 15, None, 0, 0.5),
        (x.detach().to(memory_format=torch.contiguous_format).transpose(0, 2).requires_grad_(),
         torch.rand(4) * 0.1 + 0.01, torch.zeros(4, dtype=torch.int32), 0, 15, 2, 0, 1.0),
    ]


@pytest.mark.parametrize("args", sample_args())
def test_opcheck(args):
    torch.library.opcheck(ops.fake_quant_uniform.default, args)


def test_opcheck_backward_op():
    x = torch.randn(5, 8)
    g = torch.randn(5, 8)
    torch.library.opcheck(ops.fake_quant_uniform_backward.default,
                          (g, x, torch.rand(8) + 0.1, torch.zeros(8), 0, 7, 1, 0, 1.0, True))


def test_compile_fullgraph_matches_eager():
    scale = torch.tensor([0.05], requires_grad=True)
    zero = torch.tensor([0], dtype=torch.int32)

    def f(x, s):
        return (qx.fake_quant_uniform(x, s, zero, -8, 7, grad_factor=0.1) * 2).sum()

    x = torch.randn(64, 32, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out_c = compiled(x, scale)
    gx_c, gs_c = torch.autograd.grad(out_c, (x, scale))
    out_e = f(x, scale)
    gx_e, gs_e = torch.autograd.grad(out_e, (x, scale))
    assert torch.equal(out_c, out_e) and torch.equal(gx_c, gx_e) and torch.equal(gs_c, gs_e)


def lsq_reference(x, scale, zero, qmin, qmax, axis, group, grad_factor):
    """LSQ+ in plain autograd: the values are computed exactly as the forward
    defines them, and `t + (u - u.detach())` routes the straight-through and
    gradient-scaled derivatives without changing any value."""
    def with_grad_of(value, source):
        return value + (source - source.detach())

    s = with_grad_of(scale.detach(), scale * grad_factor)
    z = with_grad_of(zero.detach().round(), zero * grad_factor)
    if axis is not None:
        if group:
            s, z = s.repeat_interleave(group, dim=axis), z.repeat_interleave(group, dim=axis)
        else:
            shape = [1] * x.dim()
            shape[axis] = -1
            s, z = s.view(shape), z.view(shape)
    v = x / s
    code = v.detach().round() + z.detach()
    inside = (code >= qmin) & (code <= qmax)
    q = torch.where(inside, with_grad_of(with_grad_of(code, v), z), code.clamp(qmin, qmax))
    return (q - z) * s


@pytest.mark.parametrize("axis,group", [(None, 0), (1, 0), (1, 3), (0, 0)])
def test_lsq_gradients_match_autograd_reference_float64(axis, group):
    x = torch.randn(3, 6, dtype=torch.float64) * 2
    shape = (1,) if axis is None else ((3, 2) if group else (x.shape[axis],))
    scale = (torch.rand(shape, dtype=torch.float64) * 0.2 + 0.1).requires_grad_()
    zero = torch.randint(-2, 3, shape).double().requires_grad_()
    x.requires_grad_()
    ours = qx.fake_quant_uniform(x, scale, zero, -8, 7, axis=axis, group_size=group, grad_factor=0.3)
    ref = lsq_reference(x, scale, zero, -8, 7, axis, group, 0.3)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ours)
    got = torch.autograd.grad(ours, (x, scale, zero), g)
    want = torch.autograd.grad(ref, (x, scale, zero), g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_scale_where_estimator_is_exact():
    # Outside the grid the output is (qmin|qmax - z) * s: the LSQ gradient is
    # the true derivative there, so finite differences must agree.
    x = torch.cat([torch.rand(20) + 5.0, -torch.rand(20) - 5.0]).double()
    zero = torch.tensor([1.0], dtype=torch.float64)
    scale = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: qx.fake_quant_uniform(x, s, zero, -8, 7), (scale,))
