"""FusedAdam (rlrun/networks.py): torch's fused Adam with less Python around it must give the same numbers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rlrun.networks import FusedAdam


def two_nets(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    return net, copy.deepcopy(net)


def train_steps(net: nn.Module, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor],
                frozen: str | None = None) -> None:
    for k, x in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        if frozen is not None and k % 2:  # a parameter without a gradient on some steps: both must skip it
            net.get_parameter(frozen).grad = None
        optimizer.step()


@pytest.mark.parametrize("kwargs", [{}, {"eps": 1e-5, "betas": (0.5, 0.9)}, {"weight_decay": 0.01}])
def test_fused_adam_is_bit_identical_to_torch_fused_adam(kwargs, monkeypatch):
    ours_net, torch_net = two_nets()
    ours = FusedAdam(ours_net.parameters(), lr=1e-3, **kwargs)
    torch_steps = []
    monkeypatch.setattr(ours, "_torch_step", lambda closure: torch_steps.append(FusedAdam._torch_step(ours, closure)))
    reference = torch.optim.Adam(torch_net.parameters(), lr=1e-3, fused=True, **kwargs)
    batches = [torch.randn(64, 8) for _ in range(20)]
    train_steps(ours_net, ours, batches, frozen="2.bias")
    train_steps(torch_net, reference, batches, frozen="2.bias")
    assert len(torch_steps) == 1  # the first step creates the state; the other 19 took the fast path
    for (name, p), q in zip(ours_net.named_parameters(), torch_net.parameters()):
        assert torch.equal(p, q), name
    for p, q in zip(ours_net.parameters(), torch_net.parameters()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(ours.state[p][key], reference.state[q][key]), key
    # The learning rate as the schedules set it (param_groups) is the one the fast path uses.
    for optimizer in (ours, reference):
        optimizer.param_groups[0]["lr"] = 3e-4
    more = [torch.randn(64, 8) for _ in range(5)]
    train_steps(ours_net, ours, more)
    train_steps(torch_net, reference, more)
    assert all(torch.equal(p, q) for p, q in zip(ours_net.parameters(), torch_net.parameters()))


def test_fused_adam_state_dict_round_trips_with_torch_adam():
    """Checkpoints hold torch's Adam state dict: one written by FusedAdam resumes a torch Adam and back, and
    the two then take identical steps."""
    ours_net, torch_net = two_nets(1)
    ours = FusedAdam(ours_net.parameters(), lr=1e-3)
    train_steps(ours_net, ours, [torch.randn(16, 8) for _ in range(3)])
    torch_net.load_state_dict(ours_net.state_dict())
    reference = torch.optim.Adam(torch_net.parameters(), lr=1e-3, fused=True)
    reference.load_state_dict(copy.deepcopy(ours.state_dict()))  # as from a checkpoint: no shared tensors
    batches = [torch.randn(16, 8) for _ in range(4)]
    train_steps(ours_net, ours, batches)
    train_steps(torch_net, reference, batches)
    assert all(torch.equal(p, q) for p, q in zip(ours_net.parameters(), torch_net.parameters()))
    resumed_net = copy.deepcopy(torch_net)
    resumed = FusedAdam(resumed_net.parameters(), lr=1e-3)
    resumed.load_state_dict(copy.deepcopy(reference.state_dict()))
    assert resumed.state_dict()["state"][0]["step"] == ours.state_dict()["state"][0]["step"] == 7
    # Loaded state takes the fast path from the first step on, and steps as torch's Adam does.
    torch_steps = []
    resumed._torch_step = lambda closure: torch_steps.append(FusedAdam._torch_step(resumed, closure))
    batches = [torch.randn(16, 8) for _ in range(3)]
    train_steps(resumed_net, resumed, batches)
    train_steps(torch_net, reference, batches)
    assert not torch_steps
    assert all(torch.equal(p, q) for p, q in zip(resumed_net.parameters(), torch_net.parameters()))


def test_fused_adam_with_parameter_groups_of_their_own_learning_rates():
    """Transfer learning's layer-wise learning rates are parameter groups (rlrun/transfer.py)."""
    ours_net, torch_net = two_nets(3)

    def groups(net):
        return [{"params": net[0].parameters(), "lr": 1e-4}, {"params": net[2].parameters()},
                {"params": net[4].parameters(), "lr": 3e-3, "eps": 1e-5}]

    ours = FusedAdam(groups(ours_net), lr=1e-3)
    reference = torch.optim.Adam(groups(torch_net), lr=1e-3, fused=True)
    batches = [torch.randn(32, 8) for _ in range(6)]
    train_steps(ours_net, ours, batches)
    train_steps(torch_net, reference, batches)
    assert all(torch.equal(p, q) for p, q in zip(ours_net.parameters(), torch_net.parameters()))


def test_fused_adam_keeps_torch_step_hooks_and_zero_grad_modes():
    net, _ = two_nets()
    optimizer = FusedAdam(net.parameters(), lr=1e-3)
    calls = []
    optimizer.register_step_pre_hook(lambda *_: calls.append("pre"))
    optimizer.register_step_post_hook(lambda *_: calls.append("post"))
    net(torch.randn(4, 8)).sum().backward()
    optimizer.step()  # torch's step (creates the state)
    net(torch.randn(4, 8)).sum().backward()
    optimizer.step()  # the fast path
    assert calls == ["pre", "post", "pre", "post"]
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in net.parameters())
    optimizer.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_fused_adam_falls_back_to_torch_for_what_the_fast_path_does_not_do():
    """amsgrad, a closure and a tensor learning rate run torch's step: results equal torch's."""
    for kwargs, tensor_lr in (({"amsgrad": True}, False), ({}, True)):
        ours_net, torch_net = two_nets(2)
        lr = torch.tensor(1e-3) if tensor_lr else 1e-3
        ours = FusedAdam(ours_net.parameters(), lr=lr, **kwargs)
        reference = torch.optim.Adam(torch_net.parameters(), lr=lr, fused=True, **kwargs)
        batches = [torch.randn(8, 8) for _ in range(4)]
        train_steps(ours_net, ours, batches)
        train_steps(torch_net, reference, batches)
        assert all(torch.equal(p, q) for p, q in zip(ours_net.parameters(), torch_net.parameters()))
    x = torch.randn(8, 8)

    def closure():
        ours.zero_grad()
        loss = ours_net(x).square().mean()
        loss.backward()
        return loss

    assert torch.isfinite(ours.step(closure))


def test_fused_adam_copies_step_like_the_original():
    """A deep-copied or pickled agent carries its optimizer along (tests copy agents): the copy keeps stepping its
    own parameters exactly as the original steps its."""
    import pickle

    net, _ = two_nets()
    optimizer = FusedAdam(net.parameters(), lr=1e-3)
    train_steps(net, optimizer, [torch.randn(8, 8) for _ in range(2)])
    batches = [torch.randn(8, 8) for _ in range(3)]
    copies = [copy.deepcopy((net, optimizer)), pickle.loads(pickle.dumps((net, optimizer)))]
    train_steps(net, optimizer, batches)
    for copied_net, copied_optimizer in copies:
        assert isinstance(copied_optimizer, FusedAdam)
        train_steps(copied_net, copied_optimizer, batches)
        assert all(torch.equal(p, q) for p, q in zip(copied_net.parameters(), net.parameters()))
