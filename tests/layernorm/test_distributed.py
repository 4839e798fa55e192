"""The module inside DistributedDataParallel: two gloo processes on the CPU (loopback) give the same gradients as
one process over the whole batch."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spawned_workers import leave_cleanly
from vibe_kernels.layernorm import LayerNorm

pytestmark = pytest.mark.skipif(not dist.is_available() or sys.platform != "linux", reason="needs torch.distributed")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), LayerNorm(32, backend="torch"), torch.nn.Linear(32, 4))


def _batch():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(8, 16, generator=gen), torch.randn(8, 4, generator=gen)


def _worker(rank: int, world: int, port: int, out_path: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        inputs, target = _batch()
        shard = slice(rank * 4, rank * 4 + 4)
        torch.nn.functional.mse_loss(model(inputs[shard]), target[shard]).backward()
        if rank == 0:
            torch.save({name: p.grad for name, p in model.module.named_parameters()}, out_path)
        leave_cleanly()  # exits here: no gloo teardown after a success
    finally:
        dist.destroy_process_group()  # only after a failure


def test_ddp_gradients_match_single_process(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out_path = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(2, port, out_path), nprocs=2, join=True)
    ddp_grads = torch.load(out_path)

    model = _model()
    inputs, target = _batch()
    torch.nn.functional.mse_loss(model(inputs), target).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(ddp_grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=f"grad of {name}")
