"""Dynamic fake quantization (``QuantSpec(dynamic=True)``, ``torch.ops.quantext.
fake_quant_dynamic``): parameters from each input's range per tensor or per
token, bit-exact with ATen's fake-quant op fed the parameters a pure-PyTorch
reference computes; the clipped straight-through gradient of ATen's op; layouts,
dtypes, threads, bad input, and the QAT flow with the presets."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import quantext as qx

ops = qx.ops


def reference_qparams(x: torch.Tensor, qmin: int, qmax: int, symmetric: bool, per_token: bool,
                      min_scale: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the range of the finite values, widened to hold 0, mapped as a static 'max' range is."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    lead = math.prod(x.shape[:-1])
    rows = x.to(dtype).reshape(lead, x.shape[-1]) if per_token else x.to(dtype).reshape(1, -1)
    finite = torch.where(torch.isfinite(rows), rows, torch.zeros((), dtype=dtype))
    if rows.shape[1] == 0:
        lo = hi = torch.zeros(rows.shape[0], dtype=dtype)
    else:
        lo, hi = finite.amin(1).clamp(max=0), finite.amax(1).clamp(min=0)
    if symmetric:
        scale = (torch.maximum(-lo, hi) / qmax).clamp_min(min_scale)
        zero_point = torch.zeros_like(scale)
    else:
        scale = ((hi - lo) / (qmax - qmin)).clamp_min(min_scale)
        zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    shape = x.shape[:-1] + (1,) if per_token else ()
    return scale.reshape(shape), zero_point.to(torch.int32).reshape(shape)


def reference(x: torch.Tensor, qmin: int, qmax: int, symmetric: bool, per_token: bool,
              min_scale: float = 1e-8) -> torch.Tensor:
    """ATen's per-channel fake quant over the rows (float32; in float64 the formula itself)."""
    scale, zero_point = reference_qparams(x, qmin, qmax, symmetric, per_token, min_scale)
    rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]) if per_token else x.reshape(1, -1)
    s, z = scale.reshape(-1), zero_point.reshape(-1)
    if x.dtype == torch.float64:
        inv = (1.0 / s)[:, None]
        q = (torch.round(rows * inv) + z[:, None]).clamp(qmin, qmax)
        return ((q - z[:, None]) * s[:, None]).reshape(x.shape)
    if rows.numel() == 0:
        return x.clone()
    # ATen casts the code to an integer first, undefined for inf and NaN: their grid values set here.
    finite = torch.isfinite(rows)
    y = torch.fake_quantize_per_channel_affine(torch.where(finite, rows, 0).float(), s, z, 0, qmin, qmax)
    ends = torch.where(rows > 0, qmax - z[:, None], qmin - z[:, None]) * s[:, None]
    y = torch.where(finite, y, torch.where(rows.isnan(), rows.float(), ends))
    return y.to(x.dtype).reshape(x.shape)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    same = (a == b) | (a.isnan() & b.isnan())
    assert bool(same.all()), f"{int((~same).sum())} of {a.numel()} differ, e.g. {a[~same][:4]} vs {b[~same][:4]}"


GRIDS = [(-128, 127, True), (0, 255, False), (-127, 127, True), (-8, 7, True), (0, 15, False), (-2, 1, True),
         (-128, 127, False)]


@pytest.mark.parametrize("qmin,qmax,symmetric", GRIDS)
@pytest.mark.parametrize("per_token", [True, False])
def test_matches_aten(qmin, qmax, symmetric, per_token):
    x = torch.randn(3, 7, 40) * torch.logspace(-3, 2, 7)[None, :, None]
    x[0, 0] = 0.0  # an all-zero token
    x[1, 1] = -2.5  # a constant negative one
    y = ops.fake_quant_dynamic(x, qmin, qmax, symmetric, per_token)
    assert_same(y, reference(x, qmin, qmax, symmetric, per_token))
    scale, zero_point = ops.dynamic_qparams(x, qmin, qmax, symmetric, per_token)
    ref_s, ref_z = reference_qparams(x, qmin, qmax, symmetric, per_token)
    assert_same(scale, ref_s)
    assert_same(zero_point, ref_z)


@settings(max_examples=300, deadline=None)
@given(rows=st.integers(0, 9), cols=st.integers(0, 300), log_scale=st.floats(-30, 30),
       grid=st.sampled_from(GRIDS), per_token=st.booleans(), special=st.sampled_from(["", "inf", "nan", "-inf"]),
       seed=st.integers(0, 2**31 - 1))
def test_random_cases(rows, cols, log_scale, grid, per_token, special, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * math.exp(log_scale) + torch.randn(rows, 1, generator=g)
    if special and x.numel():
        x.view(-1)[int(torch.randint(x.numel(), (), generator=g))] = float(special)
    qmin, qmax, symmetric = grid
    assert_same(ops.fake_quant_dynamic(x, qmin, qmax, symmetric, per_token),
                reference(x, qmin, qmax, symmetric, per_token))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("per_token", [True, False])
def test_dtypes(dtype, per_token):
    x = (torch.randn(5, 33, 70, dtype=torch.float64) * 3).to(dtype)
    for qmin, qmax, symmetric in GRIDS[:2]:
        assert_same(ops.fake_quant_dynamic(x, qmin, qmax, symmetric, per_token),
                    reference(x, qmin, qmax, symmetric, per_token))
    scale, _ = ops.dynamic_qparams(x, -128, 127, True, per_token)
    assert scale.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("per_token", [True, False])
def test_layouts(per_token):
    base = torch.randn(2, 6, 9, 11)
    views = {
        "channels_last": base.to(memory_format=torch.channels_last),
        "transposed": base.transpose(1, 3),
        "sliced": base[:, ::2, :, 1:],
        "expanded": base[:, :1].expand(2, 6, 9, 11),
    }
    for name, x in views.items():
        for qmin, qmax, symmetric in GRIDS[:2]:
            y = ops.fake_quant_dynamic(x, qmin, qmax, symmetric, per_token)
            assert_same(y, ops.fake_quant_dynamic(x.contiguous(), qmin, qmax, symmetric, per_token))
            xg = x.detach().clone().requires_grad_()
            # a dense input keeps its own layout per tensor, so clone() (which keeps it) is the same input
            yg = ops.fake_quant_dynamic(xg, qmin, qmax, symmetric, per_token)
            grad = torch.randn_like(yg)
            yg.backward(grad)
            xr = x.detach().contiguous().requires_grad_()
            ops.fake_quant_dynamic(xr, qmin, qmax, symmetric, per_token).backward(grad.contiguous())
            assert_same(xg.grad.contiguous(), xr.grad)


@pytest.mark.parametrize("qmin,qmax,symmetric", GRIDS[:3])
@pytest.mark.parametrize("per_token", [True, False])
def test_gradient_is_atens_clipped_ste(qmin, qmax, symmetric, per_token):
    x = torch.randn(4, 5, 64) * 2
    x[..., 0] = 1e4  # one outlier per token: stretches the grid, clips nothing (the range holds it)
    xg = x.clone().requires_grad_()
    y = qx.fake_quant(xg, qx.QuantSpec(bits=8, signed=qmin < 0, symmetric=symmetric, dynamic=True,
                                       narrow_range=qmin == -127,
                                       granularity="token" if per_token else "tensor"))
    grad = torch.randn_like(y)
    y.backward(grad)
    scale, zero_point = reference_qparams(x, qmin, qmax, symmetric, per_token)
    rows = (x.reshape(-1, 64) if per_token else x.reshape(1, -1)).clone().requires_grad_()
    ref = torch.fake_quantize_per_channel_affine(rows, scale.reshape(-1), zero_point.reshape(-1), 0, qmin, qmax)
    ref.backward(grad.reshape(rows.shape))
    assert_same(xg.grad, rows.grad.reshape(x.shape))


def test_long_rows_are_thread_count_independent():
    x = torch.randn(3, 300_001)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [ops.fake_quant_dynamic_masked(x, 0, 255, False, per_token, 1e-8) for per_token in (True, False)]
        torch.set_num_threads(max(2, before))
        many = [ops.fake_quant_dynamic_masked(x, 0, 255, False, per_token, 1e-8) for per_token in (True, False)]
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, many):
        for u, v in zip(a, b):
            assert_same(u, v)
    assert_same(one[0][0], reference(x, 0, 255, False, True))
    assert_same(one[1][0], reference(x, 0, 255, False, False))


def test_empty_inputs():
    for shape in [(0,), (3, 0), (0, 4)]:
        x = torch.empty(shape)
        assert ops.fake_quant_dynamic(x, -128, 127).shape == shape
        scale, zero_point = ops.dynamic_qparams(x, 0, 255, False, True)
        assert scale.shape == shape[:-1] + (1,)
        assert bool((scale == 1e-8).all() if scale.numel() else True)
        assert bool((zero_point == 0).all())


@pytest.mark.parametrize("args,match", [
    ((torch.randn(4), 5, 5, True, True, 1e-8), "qmin < qmax"),
    ((torch.randn(4), 0, 255, True, True, 1e-8), "symmetric=True needs a signed range"),
    ((torch.randn(4), -128, 127, True, True, 0.0), "min_scale"),
    ((torch.randn(4), -128, 127, True, True, 1e-40), "min_scale"),
    ((torch.randn(4), -128, 127, True, True, float("nan")), "min_scale"),
    ((torch.tensor(1.0), -128, 127, True, True, 1e-8), "per_token=True needs"),
    ((torch.randn(4), -2**20, 127, True, True, 1e-8), "wider than 16 bits"),
])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_arguments(args, match, device):
    args = (args[0].to(device),) + args[1:]
    with pytest.raises(ValueError, match=match):
        ops.fake_quant_dynamic(*args)
    with pytest.raises(ValueError, match=match):
        ops.dynamic_qparams(*args)


@pytest.mark.parametrize("x", [torch.ones(3, dtype=torch.int32), torch.ones(3, dtype=torch.complex64),
                               torch.ones(3, dtype=torch.float8_e4m3fn)])
def test_bad_dtypes(x):
    with pytest.raises((TypeError, ValueError), match="input must be|real tensor"):
        ops.fake_quant_dynamic(x, -128, 127)


@pytest.mark.parametrize("fields,match", [
    (dict(scheme="pot"), "scheme='uniform'"),
    (dict(granularity="channel"), "granularity='tensor' or 'token'"),
    (dict(learnable=True), "learnable=True does not apply"),
    (dict(signed=False), "needs signed=True"),
    (dict(calibration="mse"), "calibration='max'"),
])
def test_bad_specs(fields, match):
    with pytest.raises(ValueError, match=match):
        qx.QuantSpec(**{"dynamic": True, "granularity": "token", **fields})


def test_token_granularity_needs_dynamic_and_weights_cannot_be_dynamic():
    with pytest.raises(ValueError, match="granularity='token' is for dynamic specs"):
        qx.QuantSpec(granularity="token")
    dyn = qx.QuantSpec(dynamic=True, granularity="token")
    with pytest.raises(ValueError, match="QConfig.weight cannot be dynamic"):
        qx.QConfig(weight=dyn)
    with pytest.raises(ValueError, match="weight quantizer cannot be dynamic"):
        qx.nn.Quantizer(dyn, role="weight")
    with pytest.raises(ValueError, match="not a parameter of a dynamic spec"):
        qx.fake_quant(torch.randn(3), dyn, scale=0.1)
    with pytest.raises(ValueError, match="takes a static spec"):
        qx.quantize(torch.randn(3), dyn)


def test_quantizer_module_has_no_state_and_needs_no_calibration():
    q = qx.nn.Quantizer(qx.QuantSpec(bits=8, signed=False, symmetric=False, dynamic=True, granularity="token"))
    assert q.calibrated and q.enabled and q.observer is None
    assert set(q.state_dict()) == {"fake_quant_enabled", "observer_enabled", "initialized", "_extra_state"}
    x = torch.randn(2, 5, 16)
    assert_same(q(x), reference(x, 0, 255, False, True))
    with pytest.raises(RuntimeError, match="is dynamic"):
        q.compute_qparams()
    with pytest.raises(ValueError, match="is dynamic"):
        q.set_qparams(scale=torch.tensor(1.0))
    static = qx.nn.Quantizer(qx.QuantSpec(bits=8, signed=False, symmetric=False))
    static.set_qparams(scale=torch.tensor(0.1), zero_point=torch.tensor(3))
    with pytest.raises(RuntimeError, match="differ in"):
        q.load_state_dict(static.state_dict())


class _TinyLM(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens)
        h = h + self.fc2(torch.nn.functional.gelu(self.fc1(h)))
        return self.head(h)


@pytest.mark.parametrize("qconfig", [qx.QConfig.int8_dynamic(), qx.QConfig.int8_dynamic_int4_weight(group_size=32),
                                     qx.QConfig.int8_dynamic(per_token=False, symmetric=False)])
def test_qat_flow_with_presets(qconfig):
    torch.manual_seed(0)
    model = _TinyLM()
    tokens = torch.randint(0, 50, (4, 12))
    prepared = qx.prepare_qat(model, qconfig, example_inputs=(tokens,))
    act = prepared.fc1.input_quantizer
    assert act.spec.dynamic and act.calibrated
    qx.calibrate(prepared, [(tokens,)])  # calibrates the weights; dynamic quantizers have nothing to calibrate
    opt = torch.optim.SGD(prepared.parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        logits = prepared(tokens)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 50), tokens.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # The dynamic quantizer is what fc1 applies to its input
    with torch.no_grad():
        h = prepared.emb(tokens)
        w = prepared.fc1.weight_quantizer(prepared.fc1.weight)
        spec = act.spec
        expected = nn.functional.linear(reference(h, *spec.bounds, spec.symmetric, spec.granularity == "token"),
                                        w, prepared.fc1.bias)
        assert_same(prepared.fc1(h), expected)


def test_compile_has_no_graph_break():
    spec = qx.QuantSpec(dynamic=True, granularity="token")
    x = torch.randn(4, 8, 32, requires_grad=True)
    f = torch.compile(lambda t: qx.fake_quant(t, spec) * 2, fullgraph=True, backend="aot_eager")
    y = f(x)
    y.sum().backward()
    assert_same(y.detach(), reference(x.detach(), -128, 127, True, True) * 2)
