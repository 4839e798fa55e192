"""patch(model) / unpatch(model): every torch.nn.LayerNorm of a model runs on our kernels, parameters kept."""

from __future__ import annotations

import copy

import pytest
import torch

from vibe_kernels.layernorm import LayerNorm, patch, unpatch


class UserNorm(torch.nn.LayerNorm):
    """A user subclass with its own forward: patch must leave it alone."""

    def forward(self, x):
        return super().forward(x) * 2


def small_transformer(device):
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, dropout=0.0, batch_first=True)
    return torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False),
        torch.nn.LayerNorm(64), torch.nn.Linear(64, 8),
    ).to(device)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_patched_transformer_matches_and_trains_the_same(device, backend):
    reference = small_transformer(device)
    model = copy.deepcopy(reference)
    params_before = {name: p for name, p in model.named_parameters()}
    assert patch(model, backend=backend) == 5  # 2 layers x (norm1, norm2) + the final norm
    assert all(p is params_before[name] for name, p in model.named_parameters())
    assert sum(type(m) is LayerNorm for m in model.modules()) == 5
    assert model.state_dict().keys() == reference.state_dict().keys()

    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 6, 32, generator=gen).to(device), torch.randn(4, 6, 8, generator=gen).to(device))
               for _ in range(3)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (reference, model)]
    for inputs, target in batches:
        losses = []
        for net, opt in zip((reference, model), optimizers):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(inputs), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-5)
    for (name, p_ref), (_, p) in zip(reference.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p, p_ref, rtol=1e-4, atol=1e-5, msg=f"parameter {name} after 3 steps")


def test_unpatch_restores_torch_modules_and_skips_user_subclasses():
    model = torch.nn.Sequential(torch.nn.LayerNorm(16), UserNorm(16), torch.nn.Sequential(torch.nn.LayerNorm(16)))
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert patch(model) == 2
    assert type(model[1]) is UserNorm
    assert unpatch(model) == 2
    assert [type(m) for m in model.modules()][1:] == [torch.nn.LayerNorm, UserNorm, torch.nn.Sequential,
                                                      torch.nn.LayerNorm]
    assert [m.weight for m in model.modules() if isinstance(m, torch.nn.LayerNorm)] == weights
    assert not hasattr(model[0], "backend")
    x = torch.randn(3, 16)
    torch.testing.assert_close(model[0](x), torch.nn.functional.layer_norm(x, (16,), model[0].weight, model[0].bias))
