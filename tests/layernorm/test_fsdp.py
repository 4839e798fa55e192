"""The module under FSDP2 (``torch.distributed.fsdp.fully_shard``): two gloo processes on the CPU (loopback), each
LayerNorm and Linear sharded across both, train like one process on the whole batch (same losses, gradients and
parameters after a few optimizer steps)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spawned_workers import leave_cleanly
from vibe_kernels.layernorm import LayerNorm

try:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard  # FSDP2 (torch >= 2.6)
except ImportError:
    fully_shard = None

pytestmark = [
    pytest.mark.skipif(not dist.is_available() or sys.platform != "linux", reason="needs torch.distributed"),
    pytest.mark.skipif(fully_shard is None, reason="torch.distributed.fsdp.fully_shard (FSDP2) needs torch >= 2.6"),
]

STEPS = 3
BATCH = 8


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), LayerNorm(32, backend="torch"), torch.nn.GELU(), torch.nn.Linear(32, 4)
    )
    with torch.no_grad():  # non-trivial affine parameters (they start as ones and zeros)
        model[1].weight.add_(0.5 * torch.randn(32))
        model[1].bias.add_(0.5 * torch.randn(32))
    return model


def _batches():
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(BATCH, 16, generator=gen), torch.randn(BATCH, 4, generator=gen)) for _ in range(STEPS)]


def _train(model, batches, rows: slice):
    """SGD steps on ``rows`` of each batch: (losses, gradients of the last step as full tensors)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, grads = [], {}
    for inputs, target in batches:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs[rows]), target[rows])
        loss.backward()
        losses.append(loss.detach())
        grads = {name: _full(p.grad) for name, p in model.named_parameters()}
        optimizer.step()
    return torch.stack(losses), grads


def _full(tensor):
    """A sharded DTensor's full value (a collective: every rank calls it), or the tensor itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor.detach().clone()


def _worker(rank: int, world: int, rendezvous: str, out_path: str) -> None:
    # A file rendezvous, not a TCP port: no race with other tests picking free ports at the same time.
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        # An explicit CPU mesh: by default fully_shard would pick the accelerator (CUDA on a GPU machine).
        mesh = init_device_mesh("cpu", (world,))
        model = _model()
        for layer in model:
            if any(True for _ in layer.parameters()):
                fully_shard(layer, mesh=mesh)  # a unit per layer: our LayerNorm's (32,) weight/bias split 16/16
        fully_shard(model, mesh=mesh)
        assert type(model[1].weight).__name__ == "DTensor"
        rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        losses, grads = _train(model, _batches(), rows)
        dist.all_reduce(losses)  # equal shards: the mean of the ranks' losses is the whole batch's loss
        params = {name: _full(p) for name, p in model.named_parameters()}
        if rank == 0:
            torch.save({"losses": losses / world, "grads": grads, "params": params}, out_path)
        leave_cleanly()  # exits here: no gloo teardown after a success
    finally:
        dist.destroy_process_group()  # only after a failure


def test_fsdp2_matches_single_process(tmp_path):
    out_path = str(tmp_path / "fsdp.pt")
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), out_path), nprocs=2, join=True)
    sharded = torch.load(out_path)

    model = _model()
    losses, grads = _train(model, _batches(), slice(None))
    torch.testing.assert_close(sharded["losses"], losses, rtol=1e-5, atol=1e-6, msg="losses per step")
    for name, p in model.named_parameters():
        torch.testing.assert_close(sharded["grads"][name], grads[name], rtol=1e-5, atol=1e-6,
                                   msg=f"last step's grad of {name}")
        torch.testing.assert_close(sharded["params"][name], p.detach(), rtol=1e-5, atol=1e-6,
                                   msg=f"{name} after {STEPS} steps")
