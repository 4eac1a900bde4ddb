"""MLPBackprop: the forward and backward written out must give autograd's outputs and gradients, bit for bit."""

import pytest
import torch
from torch import nn

from rlrun.backprop import MLPBackprop
from rlrun.config import Activation, NetworkConfig
from rlrun.networks import MLP, make_adam


def autograd_grads(net: MLP, x: torch.Tensor, grad_output: torch.Tensor) -> list[torch.Tensor | None]:
    for p in net.parameters():
        p.grad = None
    net(x).backward(grad_output)
    return [None if p.grad is None else p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("activation", list(Activation))
@pytest.mark.parametrize("hidden", [[], [32], [64, 48]])
def test_outputs_and_gradients_are_autograds(activation, hidden):
    torch.manual_seed(0)
    net = MLP(7, 5, NetworkConfig(hidden=hidden, activation=activation))
    x, grad_output = torch.randn(20, 7), torch.randn(20, 5)
    expected = autograd_grads(net, x, grad_output)
    with torch.no_grad():
        expected_output = net(x)
    backprop = MLPBackprop(net)
    assert backprop.usable()
    for p in net.parameters():
        p.grad = None
    assert torch.equal(backprop.forward(x), expected_output)
    backprop.backward(grad_output)
    for (name, p), grad in zip(net.named_parameters(), expected):
        assert torch.equal(p.grad, grad), name


@pytest.mark.parametrize("activation", list(Activation))
@pytest.mark.parametrize("existing_grads", [False, True])
def test_bf16_matches_autocast_bit_for_bit(activation, existing_grads):
    """With bf16 the hidden layers run in bfloat16 and the head in fp32, as `MLP.forward` under `bf16_autocast`:
    the output, every parameter's fp32 gradient (written into existing fp32 `.grad` tensors too) and the input's
    gradient are autocast-and-autograd's, bit for bit."""
    from rlrun.networks import bf16_autocast

    torch.manual_seed(3)
    net = MLP(7, 5, NetworkConfig(hidden=[64, 48], activation=activation))
    x, grad_output = torch.randn(20, 7, requires_grad=True), torch.randn(20, 5)
    with bf16_autocast(torch.device("cpu"), True):
        expected_output = net(x)
    expected_output.backward(grad_output)
    expected = [p.grad.clone() for p in net.parameters()]
    held = [torch.full_like(p, 123.0) if existing_grads else None for p in net.parameters()]
    for p, grad in zip(net.parameters(), held):
        p.grad = grad
    backprop = MLPBackprop(net, bf16=True)
    assert backprop.usable()
    output = backprop.forward(x.detach())
    assert output.dtype == torch.float32 and torch.equal(output, expected_output)
    assert not torch.equal(output, net(x))  # not the fp32 forward: the hidden layers did run in bf16
    input_grad = backprop.backward(grad_output, input_grad=True)
    assert input_grad.dtype == torch.float32 and torch.equal(input_grad, x.grad)
    for (name, p), grad, old in zip(net.named_parameters(), expected, held):
        assert p.grad.dtype == torch.float32 and torch.equal(p.grad, grad), name
        assert old is None or p.grad is old


def test_existing_gradients_are_overwritten_in_place_not_accumulated():
    """As zero_grad() then backward(): the old values are gone, and the tensors are the same objects (an
    optimizer's flat gradient buffer keeps its views)."""
    torch.manual_seed(1)
    net = MLP(4, 3, NetworkConfig(hidden=[16, 16]))
    x, grad_output = torch.randn(8, 4), torch.randn(8, 3)
    expected = autograd_grads(net, x, grad_output)
    for p in net.parameters():
        p.grad = torch.full_like(p, 123.0)
    held = [p.grad for p in net.parameters()]
    backprop = MLPBackprop(net)
    backprop.forward(x)
    backprop.backward(grad_output)
    for p, grad, old in zip(net.parameters(), expected, held):
        assert p.grad is old
        assert torch.equal(p.grad, grad)


def test_frozen_layers_get_no_gradient_and_the_rest_autograds():
    torch.manual_seed(2)
    net = MLP(4, 3, NetworkConfig(hidden=[16, 16]))
    net.body[0].requires_grad_(False)  # transfer=freeze of the first layer
    net.body[2].bias.requires_grad_(False)
    x, grad_output = torch.randn(8, 4), torch.randn(8, 3)
    expected = autograd_grads(net, x, grad_output)
    net.body[0].weight.grad = torch.ones_like(net.body[0].weight)  # stale: backward must not leave it
    backprop = MLPBackprop(net)
    backprop.forward(x)
    backprop.backward(grad_output)
    for (name, p), grad in zip(net.named_parameters(), expected):
        if grad is None:
            assert p.grad is None, name
        else:
            assert torch.equal(p.grad, grad), name


def test_training_with_fused_adam_matches_autograd_step_for_step():
    """Ten clipped Adam steps through the written-out gradients (into FusedAdam's flat buffer after its first
    step) land on the same weights as through autograd."""
    torch.manual_seed(3)
    nets = [MLP(6, 2, NetworkConfig(hidden=[32, 32])) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    optimizers = [make_adam(net.parameters(), 1e-2, max_grad_norm=0.5) for net in nets]
    backprop = MLPBackprop(nets[0])
    for _ in range(10):
        x, target = torch.randn(16, 6), torch.randn(16, 2)
        output = backprop.forward(x)
        backprop.backward(2.0 * (output - target) / output.numel())  # d mse / d output
        optimizers[0].step()
        optimizers[1].zero_grad()
        torch.nn.functional.mse_loss(nets[1](x), target).backward()
        optimizers[1].step()
    for (name, ours), theirs in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(ours, theirs), name


def test_not_usable_where_autograd_would_do_more():
    net = MLP(4, 3, NetworkConfig(hidden=[8]))
    backprop = MLPBackprop(net)
    assert backprop.usable()
    handle = net.body[0].register_forward_hook(lambda *args: None)
    assert not backprop.usable()  # a hook autograd's path would run
    handle.remove()
    handle = net.head.weight.register_hook(lambda grad: grad)
    assert not backprop.usable()
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    assert not backprop.usable()
    handle.remove()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not backprop.usable()
    assert backprop.usable()
    assert not MLPBackprop(MLP(4, 3, NetworkConfig(hidden=[8])).double()).usable()
    net.body.append(nn.Dropout())  # not an MLP this knows
    assert not MLPBackprop(net).usable()
