"""Calibration and QAT under DistributedDataParallel: two CPU processes (gloo)
train a prepared model on different data and stay in lockstep."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import quantext as qx
from qat_models import batches, prepared_cnn, train

WORLD = 2
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _calibration_data(rank: int):
    return batches(10 + rank, 2, scale=1.0 + 2 * rank)  # rank 1 sees larger values


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        model = prepared_cnn(seed=0, freeze_bn_after=2)
        qx.calibrate(model, _calibration_data(rank), progress=False)
        calibrated = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("scale", "zero_point"))}
        ddp = DistributedDataParallel(model)
        # BN statistics as each rank sees them when a step starts (after DDP's buffer broadcast).
        starts = []
        model.register_forward_pre_hook(lambda m, _: starts.append(m.get_submodule("conv1").bn.running_var.clone()))
        train(ddp, torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9), batches(20 + rank, STEPS))
        torch.save({"state": model.state_dict(), "starts": starts, "calibrated": calibrated}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_stay_identical(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    state0, state1 = ranks[0]["state"], ranks[1]["state"]
    assert state0.keys() == state1.keys()
    for key in state0:  # weights, learned scales, BN statistics (frozen after step 2), flags
        if isinstance(state0[key], torch.Tensor):
            assert torch.equal(state0[key], state1[key]), key
        else:  # a quantizer's saved spec
            assert state0[key] == state1[key], key
    for a, b in zip(ranks[0]["starts"], ranks[1]["starts"]):
        assert torch.equal(a, b)
    # Calibration reduced the ranges over both ranks' data (asymmetric 4-bit input of the stem).
    for key in ranks[0]["calibrated"]:
        assert torch.equal(ranks[0]["calibrated"][key], ranks[1]["calibrated"][key]), key
    everything = torch.cat([x for r in range(WORLD) for x, _ in _calibration_data(r)])
    assert everything.min() < 0
    scale = (everything.max() - everything.min()) / 15
    torch.testing.assert_close(ranks[0]["calibrated"]["stem.0.input_quantizer.scale"], scale, rtol=1e-6, atol=0)
    assert int(state0["conv1.qat_steps"]) == 2 and int(state0["conv1.bn_frozen"]) == 1
