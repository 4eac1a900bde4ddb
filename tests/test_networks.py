"""FusedAdam (rlrun/networks.py): torch's fused Adam with less work around it must give the same numbers.

Its per-tensor path is bit-identical to torch's fused Adam. Its flat path (a group laid out in one storage) runs
the same elementwise kernel over other tensor boundaries: bit-identical for the small nets below, whose tensor
sizes are multiples of the kernel's vector width but the last, and equal to rounding otherwise (`odd_nets`)."""

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


def odd_nets(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Tensor sizes that are not multiples of a vector width: the flat path's kernel tails fall elsewhere."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 30), nn.Tanh(), nn.Linear(30, 7), nn.Tanh(), nn.Linear(7, 3))
    return net, copy.deepcopy(net)


def train_steps(net: nn.Module, optimizer: torch.optim.Optimizer, batches: list[torch.Tensor],
                frozen: str | None = None, max_grad_norm: float = 0.0, set_to_none: bool = True) -> None:
    """`max_grad_norm` clips with torch's clip_grad_norm_ unless `optimizer` is a FusedAdam (which clips itself)."""
    for k, x in enumerate(batches):
        optimizer.zero_grad(set_to_none=set_to_none)
        net(x).square().mean().mul(100.0).backward()
        if frozen is not None and k % 2:  # a parameter without a gradient on some steps: both must skip it
            net.get_parameter(frozen).grad = None
        if max_grad_norm > 0 and not isinstance(optimizer, FusedAdam):
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.grad is not None], max_grad_norm)
        optimizer.step()


def assert_same_weights(net: nn.Module, other: nn.Module, exact: bool = True) -> None:
    for (name, p), q in zip(net.named_parameters(), other.parameters(), strict=True):
        if exact:
            assert torch.equal(p, q), name
        else:
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def is_flat(optimizer: FusedAdam, net: nn.Module) -> bool:
    """Every parameter and moment of `net` a view of the optimizer's flat storage of group 0."""
    flat = optimizer._flat.get(0)
    if flat is None:
        return False
    storages = {flat.param.untyped_storage().data_ptr()}
    moments = {flat.exp_avg.untyped_storage().data_ptr()}
    return (all(p.untyped_storage().data_ptr() in storages for p in net.parameters())
            and all(optimizer.state[p]["exp_avg"].untyped_storage().data_ptr() in moments for p in net.parameters()))


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
    start = [p.detach().clone() for p in ours_net.parameters()]
    train_steps(ours_net, ours, batches)
    train_steps(torch_net, reference, batches)
    # torch's Adam up to the last bits: on an AMD EPYC (Zen 4) the flat kernel rounded a few elements differently
    # from the per-tensor one (at most 1.5e-8 after 6 steps, session 29; bit-identical on the Intel Xeon of
    # sessions 22-28). A group's learning rate ignored or misapplied would be ~1e-4 to 1e-2 per step away.
    for p, q, p0 in zip(ours_net.parameters(), torch_net.parameters(), start):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
        assert (p - p0).abs().max() > 1e-5  # every group moved, by far more than the tolerance


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


@pytest.mark.parametrize("set_to_none", [True, False])
def test_fused_adam_flat_layout_with_clipping_matches_torch(set_to_none):
    """Odd tensor sizes, clipping active on every step, both zero_grad modes (with set_to_none=False backward
    accumulates into the flat gradient's views themselves)."""
    ours_net, torch_net = odd_nets()
    ours = FusedAdam(ours_net.parameters(), lr=1e-2, max_grad_norm=0.5)
    reference = torch.optim.Adam(torch_net.parameters(), lr=1e-2, fused=True)
    batches = [torch.randn(16, 5) for _ in range(25)]
    ours_net(batches[0]).square().mean().mul(100.0).backward()
    assert torch.nn.utils.get_total_norm([p.grad for p in ours_net.parameters()]) > 5.0  # clipping at 0.5 acts
    train_steps(ours_net, ours, batches, max_grad_norm=0.5, set_to_none=set_to_none)
    train_steps(torch_net, reference, batches, max_grad_norm=0.5, set_to_none=set_to_none)
    assert is_flat(ours, ours_net)
    assert all(p.data_ptr() % 64 == 0 for p in ours_net.parameters())  # each slot aligned as a tensor of its own
    for optimizer in (ours, reference):  # a learning-rate change (the schedules) while laid out flat
        optimizer.param_groups[0]["lr"] = 3e-3
    batches = [torch.randn(16, 5) for _ in range(5)]
    train_steps(ours_net, ours, batches, max_grad_norm=0.5, set_to_none=set_to_none)
    train_steps(torch_net, reference, batches, max_grad_norm=0.5, set_to_none=set_to_none)
    assert_same_weights(ours_net, torch_net, exact=False)
    for p, q in zip(ours_net.parameters(), torch_net.parameters()):
        assert ours.state[p]["step"] == reference.state[q]["step"] == 30
        torch.testing.assert_close(ours.state[p]["exp_avg_sq"], reference.state[q]["exp_avg_sq"])
        torch.testing.assert_close(p.grad, q.grad)  # the clipped gradient, as clip_grad_norm_ leaves it
    # Where the flat layout moves no kernel tail (the two-net sizes) and no clipping is needed (the flat path then
    # multiplies nothing; its clip norm rounds differently from torch's norm of norms), the run is bit-identical.
    ours_net, torch_net = two_nets()
    ours = FusedAdam(ours_net.parameters(), lr=1e-2, max_grad_norm=1e4)
    reference = torch.optim.Adam(torch_net.parameters(), lr=1e-2, fused=True)
    batches = [torch.randn(16, 8) for _ in range(10)]
    train_steps(ours_net, ours, batches, max_grad_norm=1e4, set_to_none=set_to_none)
    train_steps(torch_net, reference, batches, max_grad_norm=1e4, set_to_none=set_to_none)
    assert is_flat(ours, ours_net)
    assert_same_weights(ours_net, torch_net)


def test_fused_adam_flat_layout_resumes_exactly_from_a_checkpoint():
    """Exact resume: a run checkpointed (torch.save, loaded weights_only) mid-training continues bit for bit as the
    uninterrupted one, and the checkpoint loads into torch's own Adam too."""
    import io

    net, _ = odd_nets(4)
    optimizer = FusedAdam(net.parameters(), lr=1e-3, max_grad_norm=1.0)
    train_steps(net, optimizer, [torch.randn(8, 5) for _ in range(5)])
    assert is_flat(optimizer, net)
    buffer = io.BytesIO()
    torch.save({"net": net.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_net, plain_net = odd_nets(99)
    resumed_net.load_state_dict(saved["net"])
    resumed = FusedAdam(resumed_net.parameters(), lr=1e-3, max_grad_norm=1.0)
    resumed.load_state_dict(saved["optimizer"])
    plain_net.load_state_dict(saved["net"])
    plain = torch.optim.Adam(plain_net.parameters(), lr=1e-3)
    plain.load_state_dict(saved["optimizer"])
    batches = [torch.randn(8, 5) for _ in range(5)]
    train_steps(net, optimizer, batches)
    train_steps(resumed_net, resumed, batches)
    train_steps(plain_net, plain, batches, max_grad_norm=1.0)
    assert is_flat(resumed, resumed_net)
    assert_same_weights(resumed_net, net)
    assert_same_weights(plain_net, net, exact=False)
    assert all(plain.state[p]["step"] == 10 for p in plain_net.parameters())


def test_fused_adam_flat_layout_leaves_and_rejoins_the_per_tensor_paths():
    """A flat group through what it cannot do flat: a parameter re-pointed from outside (`p.data = ...`), a
    parameter without a gradient on one step (unequal step counts: per tensor from then on), a step hook
    (torch's step, which must count each parameter's step once)."""
    ours_net, torch_net = odd_nets(5)
    ours = FusedAdam(ours_net.parameters(), lr=1e-3, max_grad_norm=0.5)
    reference = torch.optim.Adam(torch_net.parameters(), lr=1e-3, fused=True)

    def both(batches, **kwargs):
        train_steps(ours_net, ours, batches, max_grad_norm=0.5, **kwargs)
        train_steps(torch_net, reference, batches, max_grad_norm=0.5, **kwargs)
        assert_same_weights(ours_net, torch_net, exact=False)

    both([torch.randn(8, 5) for _ in range(3)])
    assert is_flat(ours, ours_net)
    for net in (ours_net, torch_net):
        net[2].weight.data = torch.full_like(net[2].weight, 0.1)  # a new tensor, outside the flat storage
    both([torch.randn(8, 5) for _ in range(3)])
    assert is_flat(ours, ours_net)  # laid out anew, from the re-pointed values
    handles = [optimizer.register_step_post_hook(lambda *_: None) for optimizer in (ours, reference)]
    both([torch.randn(8, 5) for _ in range(2)])
    assert all(ours.state[p]["step"] == 8 for p in ours_net.parameters())
    for handle in handles:
        handle.remove()
    both([torch.randn(8, 5) for _ in range(2)])
    assert is_flat(ours, ours_net)
    both([torch.randn(8, 5) for _ in range(2)], set_to_none=False)  # backward accumulates into the views
    x = torch.randn(8, 5)
    for net, optimizer in ((ours_net, ours), (torch_net, reference)):  # one view's gradient replaced by a new tensor
        optimizer.zero_grad(set_to_none=False)
        net(x).square().mean().mul(100.0).backward()
        net[2].bias.grad = net[2].bias.grad * 3.0
        if optimizer is reference:
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        optimizer.step()
    assert_same_weights(ours_net, torch_net, exact=False)
    assert is_flat(ours, ours_net) and ours_net[2].bias.grad is ours._flat[0].grad_views[3]
    both([torch.randn(8, 5) for _ in range(4)], frozen="4.bias")  # no gradient on the 2nd and 4th of these
    assert not is_flat(ours, ours_net)
    assert ours.state[ours_net[4].bias]["step"] == 15 and ours.state[ours_net[0].weight]["step"] == 17


def test_fused_adam_edge_cases():
    """No gradient at all (a no-op, clipping on), a closure with clipping (refused), a negative max_grad_norm (no
    clipping, as 0), a state replaced from outside (the flat layout notices it)."""
    net, _ = two_nets()
    optimizer = FusedAdam(net.parameters(), lr=1e-3, max_grad_norm=1.0)
    train_steps(net, optimizer, [torch.randn(4, 8) for _ in range(2)])
    assert is_flat(optimizer, net)
    before = [p.clone() for p in net.parameters()]
    optimizer.zero_grad()
    optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    with pytest.raises(ValueError, match="closure"):
        optimizer.step(lambda: net(torch.randn(2, 8)).sum())
    ours_net, torch_net = two_nets(7)
    ours = FusedAdam(ours_net.parameters(), lr=1e-2, max_grad_norm=-1.0)
    reference = torch.optim.Adam(torch_net.parameters(), lr=1e-2, fused=True)
    batches = [torch.randn(16, 8) for _ in range(4)]
    train_steps(ours_net, ours, batches)
    train_steps(torch_net, reference, batches)
    assert_same_weights(ours_net, torch_net, exact=False)
    weight = ours_net[0].weight
    ours.state[weight] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(weight),
                          "exp_avg_sq": torch.zeros_like(weight)}
    train_steps(ours_net, ours, [torch.randn(16, 8)])
    assert ours.state[weight]["step"] == 1 and ours.state[ours_net[0].bias]["step"] == 5
    assert ours.state[weight]["exp_avg"].any()


def test_fused_adam_clips_over_all_its_parameter_groups():
    """One global norm over every group (flat ones and one per tensor) as clip_grad_norm_ over all parameters."""
    ours_net, torch_net = odd_nets(6)

    def groups(net):
        return [{"params": net[0].parameters(), "lr": 1e-3}, {"params": net[2].parameters(), "lr": 3e-3},
                {"params": net[4].parameters()}]

    ours = FusedAdam(groups(ours_net), lr=1e-2, max_grad_norm=0.5)
    reference = torch.optim.Adam(groups(torch_net), lr=1e-2, fused=True)
    for frozen in (None, "4.bias"):  # all groups flat; then the last one per tensor on alternate steps
        batches = [torch.randn(8, 5) for _ in range(6)]
        train_steps(ours_net, ours, batches, frozen=frozen, max_grad_norm=0.5)
        train_steps(torch_net, reference, batches, frozen=frozen, max_grad_norm=0.5)
        assert_same_weights(ours_net, torch_net, exact=False)
    assert set(ours._flat) == {0, 1}
