"""QAT of a small GPT-style transformer under DDP and FSDP2 (``fully_shard``),
two CPU processes (gloo); launched by test_distributed_transformer.py through
``torchrun --nproc_per_node 2 distributed_worker.py OUT_DIR``.

The model, data and training loop are shared with the test's single-process
reference run: rank ``r`` trains on rows ``r::WORLD`` of every global batch,
and the average of the ranks' gradients is the gradient one process
accumulates over those WORLD micro-batches.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

import quantext as qx
from quantext import QConfig, QuantSpec

WORLD = 2
VOCAB, DIM, HEADS, SEQ = 47, 32, 4, 12  # an odd vocabulary: the head's and the table's scales shard unevenly
BATCH, STEPS, LR = 8, 4, 1e-3  # global batch (BATCH // WORLD rows per rank)
WEIGHT = QuantSpec(bits=4, narrow_range=True, granularity="channel", learnable=True, calibration="max")
# "lsq": every scale learned (the activations' are 0-dim parameters, which fully_shard refuses);
# "static": learned weight scales, activation scales fixed by calibration (buffers).
QCONFIGS = {
    "lsq": QConfig(weight=WEIGHT, activation=QuantSpec(bits=4, signed=False, symmetric=False, learnable=True,
                                                       calibration="max")),
    "static": QConfig(weight=WEIGHT, activation=QuantSpec(bits=8, signed=False, symmetric=False, calibration="max")),
}
WRAPPERS = ("ddp", "fsdp2")
BF16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


class Block(nn.Module):
    """Pre-norm attention (F.scaled_dot_product_attention) and MLP, both residual."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.fc1, self.fc2 = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.randn(SEQ, DIM) * 0.1)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def token_batches(seed: int, count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (BATCH, SEQ), generator=g) for _ in range(count)]


def calibration_batches() -> list[torch.Tensor]:
    return token_batches(1, 2)


def training_batches() -> list[torch.Tensor]:
    return token_batches(2, STEPS)


def shard(batches: list[torch.Tensor], rank: int) -> list[torch.Tensor]:
    """This rank's rows of every global batch."""
    return [b[rank::WORLD] for b in batches]


def prepared(qconfig: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return qx.prepare_qat(TinyGPT(), QCONFIGS[qconfig], example_inputs=(token_batches(0, 1)[0],),
                          first_last_bits=None)


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    # Adam moves every learned scale by about LR per step (SGD's LSQ steps on activation scales are tiny).
    return torch.optim.Adam(model.parameters(), lr=LR)


def train(model: nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor], micro: int = 1,
          sync_grads: Callable[[], None] = lambda: None) -> list[list[float]]:
    """Next-token prediction; each batch in ``micro`` micro-batches (rows
    ``i::micro``) whose gradients are accumulated. Returns every step's
    micro-batch losses."""
    model.train()
    losses = []
    for ids in batches:
        opt.zero_grad()
        step = []
        for i in range(micro):
            part = ids[i::micro]
            logits = model(part).float()  # the loss in float32 under bfloat16 mixed precision too
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), part[:, 1:].reshape(-1))
            (loss / micro).backward()
            step.append(loss.item())
        sync_grads()
        opt.step()
        losses.append(step)
    return losses


def scalar_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The 0-dim parameters (per-tensor LSQ scales, LSQ+ zero points), in a fixed order."""
    return [p for p in model.parameters() if p.ndim == 0]


def average_grads(params: list[nn.Parameter]) -> None:
    """What DDP does for every parameter, for those fully_shard ignores (it leaves their gradients local)."""
    if not params:
        return
    flat = torch.cat([p.grad.reshape(1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for p, g in zip(params, flat):
        p.grad.copy_(g)


def shard_model(model: nn.Module, mp_policy: MixedPrecisionPolicy | None = None) -> list[nn.Parameter]:
    """fully_shard, one group per transformer block plus the root; returns the
    parameters left replicated (their gradients need :func:`average_grads`).

    prepare_qat's fx graph calls the layers inside a block directly (the
    block's own forward never runs, so hooks on it never fire): a group is the
    list of the block's layers, which fully_shard all-gathers before the first
    of them runs.

    With a low-precision ``mp_policy`` every quantizer that holds sharded
    parameters gets a group of its own that keeps them float32 (the
    fake-quantization ops take low-precision inputs with float32 scales only)
    and passes its input through uncast."""
    ignored = scalar_parameters(model)
    policy = mp_policy or MixedPrecisionPolicy()
    if mp_policy is not None:
        for _, q in qx.quantizers(model):
            if any(p.ndim for p in q.parameters(recurse=False)):
                fully_shard(q, mp_policy=MixedPrecisionPolicy(cast_forward_inputs=False), ignored_params=set(ignored))
    for i in range(len(model.get_submodule("blocks")._modules)):
        layers = [m for m in model.get_submodule(f"blocks.{i}").children() if any(p.ndim for p in m.parameters())]
        fully_shard(layers, mp_policy=policy, ignored_params=set(ignored))
    fully_shard(model, mp_policy=policy, ignored_params=set(ignored))
    return ignored


def layout(model: nn.Module) -> dict[str, tuple]:
    """How each parameter and buffer is held on this rank: (kind, placements, local shape)."""
    out = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if isinstance(t, DTensor):
            out[name] = ("DTensor", tuple(repr(p) for p in t.placements), tuple(t.to_local().shape))
        else:
            out[name] = (type(t).__name__, (), tuple(t.shape))
    return out


def _first_error(action: Callable[[], object]) -> str:
    try:
        action()
    except Exception as err:  # noqa: BLE001  (recorded for the test and docs/distributed.md)
        return f"{type(err).__name__}: {err}"
    return ""


def limitations(rank: int) -> dict[str, str]:
    """The error each unsupported FSDP2 setup raises (empty when it works)."""
    ids = shard(calibration_batches(), rank)

    def unignored_scalars() -> None:
        fully_shard(prepared("lsq"))

    def shard_the_block() -> None:
        model = qx.calibrate(prepared("static"), ids, progress=False)
        fully_shard(model.get_submodule("blocks.0"))
        fully_shard(model)
        model(ids[0])

    def bf16_scales() -> None:
        model = qx.calibrate(prepared("static"), ids, progress=False)
        fully_shard(model, mp_policy=BF16)
        model(ids[0])

    def calibrate_learned_scales_after() -> None:
        model = prepared("static")
        fully_shard(model)
        qx.calibrate(model, ids, progress=False)

    return {"scalar_parameters": _first_error(unignored_scalars), "block_forward": _first_error(shard_the_block),
            "bf16_scales": _first_error(bf16_scales),
            "calibrate_learned_after_sharding": _first_error(calibrate_learned_scales_after)}


def calibrated_before_and_after_sharding(rank: int) -> tuple[dict, dict]:
    """Quantizer state of a model without learned parameters calibrated before
    and after fully_shard (which leaves buffers alone)."""
    ids = shard(calibration_batches(), rank)
    states = []
    for after in (False, True):
        torch.manual_seed(0)
        model = qx.prepare_qat(TinyGPT(), QConfig.uniform(8), example_inputs=(ids[0],), first_last_bits=None)
        if after:
            shard_model(model)
        qx.calibrate(model, ids, progress=False)
        states.append({k: v.clone() for k, v in model.state_dict().items() if "quantizer." in k and
                       isinstance(v, torch.Tensor)})
    return states[0], states[1]


def resume(qconfig: str, rank: int, checkpoint: str) -> tuple[nn.Module, torch.optim.Optimizer, list[nn.Parameter]]:
    """A new sharded run from a DCP checkpoint. dcp.load fills the tensors it is
    given, and observer statistics take their shape from data: calibrating on
    any batch first shapes them (the checkpoint then overwrites every value)."""
    model = prepared(qconfig, seed=1)
    qx.calibrate(model, shard(token_batches(4, 1), rank), progress=False)
    ignored = shard_model(model)
    opt = optimizer(model)
    model_state, optim_state = get_state_dict(model, opt)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=checkpoint)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return model, opt, ignored


def full_state(model: nn.Module) -> dict:
    """The gathered state dict, copied (its replicated tensors are the live ones)."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def run(wrapper: str, qconfig: str, rank: int, out_dir: str) -> dict:
    model = prepared(qconfig)
    qx.calibrate(model, shard(calibration_batches(), rank), progress=False)
    calibrated = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    if wrapper == "ddp":
        wrapped, ignored = DistributedDataParallel(model), []
    else:  # "fsdp2", "bf16"
        wrapped, ignored = model, shard_model(model, BF16 if wrapper == "bf16" else None)
    opt = optimizer(wrapped)
    held = layout(model)
    losses = train(wrapped, opt, shard(training_batches(), rank), sync_grads=lambda: average_grads(ignored))
    model_state, optim_state = get_state_dict(wrapped, opt)
    checkpoint = os.path.join(out_dir, f"{wrapper}-{qconfig}")
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=checkpoint)
    out = {"layout": held, "losses": losses, "calibrated": calibrated, "state": full_state(wrapped),
           "replicated": [n for n, p in model.named_parameters() if any(p is q for q in ignored)]}
    if wrapper == "fsdp2":  # one more step, here and in a run resumed from the checkpoint
        again = shard(token_batches(5, 1), rank)
        resumed, resumed_opt, resumed_ignored = resume(qconfig, rank, checkpoint)
        train(wrapped, opt, again, sync_grads=lambda: average_grads(ignored))
        train(resumed, resumed_opt, again, sync_grads=lambda: average_grads(resumed_ignored))
        out["continued"], out["resumed"] = full_state(wrapped), full_state(resumed)
    return out


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        results = {f"{w}-{q}": run(w, q, rank, out_dir) for w in WRAPPERS for q in QCONFIGS}
        results["bf16-lsq"] = run("bf16", "lsq", rank, out_dir)
        results["limitations"] = limitations(rank)
        results["calibrated_before_and_after_sharding"] = calibrated_before_and_after_sharding(rank)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
