"""DQN's pure pieces against hand-computed numbers."""

import numpy as np
import pytest
import torch
from torch import nn

from rlrun.algos.dqn import linear_schedule, next_state_values, td_target
from rlrun.networks import polyak_update


def test_td_target_terminated_does_not_bootstrap_but_truncated_does():
    rewards = torch.tensor([1.0, 1.0, 1.0])
    # transition 0: ordinary; 1: terminated (no bootstrap); 2: truncated by the time limit (terminated=0,
    # next value is the value of the true final observation, so it bootstraps like an ordinary step).
    terminated = torch.tensor([0.0, 1.0, 0.0])
    next_values = torch.tensor([10.0, 10.0, 4.0])
    targets = td_target(rewards, terminated, next_values, gamma=0.9)
    assert torch.allclose(targets, torch.tensor([1.0 + 0.9 * 10.0, 1.0, 1.0 + 0.9 * 4.0]))


def test_next_state_values_dqn_takes_target_max():
    target_q = torch.tensor([[1.0, 5.0, 2.0], [0.0, -1.0, 3.0]])
    assert torch.equal(next_state_values(target_q, None), torch.tensor([5.0, 3.0]))


def test_next_state_values_double_dqn_uses_online_argmax():
    target_q = torch.tensor([[1.0, 5.0, 2.0], [0.0, -1.0, 3.0]])
    online_q = torch.tensor([[9.0, 0.0, 0.0], [0.0, 7.0, 0.0]])  # online prefers actions 0 and 1
    assert torch.equal(next_state_values(target_q, online_q), torch.tensor([1.0, -1.0]))


def test_linear_schedule():
    assert linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert linear_schedule(1.0, 0.1, 100, 100) == pytest.approx(0.1)
    assert linear_schedule(1.0, 0.1, 100, 10_000) == pytest.approx(0.1)
    assert linear_schedule(1.0, 0.1, 0, 5) == 0.1


def test_polyak_update_soft_and_hard():
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    with torch.no_grad():
        for p in source.parameters():
            p.fill_(1.0)
        for p in target.parameters():
            p.fill_(0.0)
    polyak_update(target, source, 0.25)
    for p in target.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.25))
    polyak_update(target, source, 0.5)  # 0.5 * 1 + 0.5 * 0.25
    for p in target.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.625))
    polyak_update(target, source, 1.0)
    for p, q in zip(target.parameters(), source.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("bf16", [False, True])
def test_dqn_update_moves_q_towards_target(bf16):
    import gymnasium as gym

    from rlrun.algos.dqn import DQNAgent, DQNConfig
    from rlrun.algos.protocol import AgentContext
    from rlrun.config import NetworkConfig

    torch.manual_seed(0)
    obs_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    ctx = AgentContext(obs_space, gym.spaces.Discrete(2), NetworkConfig(hidden=[16]), torch.device("cpu"),
                       0, 1000, 1)
    agent = DQNAgent(DQNConfig(batch_size=8, learning_rate=1e-2, bf16=bf16), ctx)
    obs = np.array([[0.5, -0.5]], dtype=np.float32)
    for _ in range(8):  # one terminal transition: the target is the reward, 1.0
        agent.buffer.add(obs, np.array([1]), np.array([1.0]), obs, np.array([1.0]))
    losses = [float(agent.update()["losses/td_loss"]) for _ in range(200)]
    assert losses[-1] < 0.01 * losses[0]
    assert agent.q.head.weight.dtype == torch.float32  # bf16 only inside the update's matmuls
    q = agent.q(torch.as_tensor(obs))[0, 1].item()
    assert q == pytest.approx(1.0, abs=0.05)


def test_mlp_output_layer_stays_fp32_under_bf16_autocast():
    from rlrun.config import NetworkConfig
    from rlrun.networks import MLP, bf16_autocast

    torch.manual_seed(0)
    net = MLP(3, 2, NetworkConfig(hidden=[8]))
    x = torch.randn(5, 3)
    with bf16_autocast(torch.device("cpu"), True):
        out = net(x)
        features = net.body(x)
    assert features.dtype == torch.bfloat16 and out.dtype == torch.float32
    torch.testing.assert_close(out, net.head(features.float()))
    torch.testing.assert_close(out, net(x), atol=0.05, rtol=0.05)  # bf16 hidden layers: close to fp32


def test_bf16_autocast_sees_weights_stepped_inside_the_block_and_keeps_gradients():
    from rlrun.config import NetworkConfig
    from rlrun.networks import MLP, bf16_autocast

    torch.manual_seed(0)
    net = MLP(3, 2, NetworkConfig(hidden=[8]))
    x = torch.randn(5, 3)
    with bf16_autocast(torch.device("cpu"), True):
        with torch.no_grad():
            before = net(x)  # a first forward under no_grad must not leave a gradient-less cast behind
            net.body[0].weight.add_(1.0)  # an optimizer step inside the same block
        after = net(x)
        after.sum().backward()
    assert not torch.allclose(before, after)
    assert net.body[0].weight.grad is not None and net.body[0].weight.grad.abs().sum() > 0


def test_bf16_is_refused_where_the_hardware_emulates_it(monkeypatch):
    from rlrun import networks

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not networks.has_native_bf16(cpu)
    with pytest.raises(ValueError, match="algo.bf16=true needs hardware bfloat16"):
        networks.check_bf16(cpu)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert networks.has_native_bf16(cpu)
    networks.check_bf16(cpu)  # no error
    # an aarch64 CPU by the BF16 extension in its /proc/cpuinfo Features (Graviton3, Neoverse V1/V2)
    monkeypatch.setattr(networks.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(networks, "cpuinfo_field", lambda name: "fp asimd sve bf16" if name == "Features" else None)
    assert networks.has_native_bf16(cpu)
    monkeypatch.setattr(networks, "cpuinfo_field", lambda name: "fp asimd" if name == "Features" else None)
    assert not networks.has_native_bf16(cpu)
    # a GPU counts only with hardware bf16 (Ampere+): torch's default also counts emulation (V100, T4)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert not networks.has_native_bf16(torch.device("cuda"))


def test_bf16_from_the_command_line_runs_or_is_refused_as_this_cpu_allows(tmp_path):
    from conftest import read_summary, rlrun

    from rlrun.networks import has_native_bf16

    run_dir = tmp_path / "run"
    proc = rlrun(run_dir, "algo=td3", "env=pendulum", "total_steps=300", "algo.learning_starts=200",
                 "algo.batch_size=32", "network.hidden=[32,32]", "eval.every_steps=0", "eval.episodes=1",
                 "algo.bf16=true", check=False)
    if has_native_bf16(torch.device("cpu")):
        assert proc.returncode == 0, proc.stderr
        assert read_summary(run_dir)["status"] == "completed"
    else:
        assert proc.returncode != 0
        assert "algo.bf16=true needs hardware bfloat16" in proc.stderr and "Traceback" not in proc.stderr
        assert not (run_dir / "checkpoints").exists()  # refused before anything was written


@pytest.mark.parametrize("double", [False, True])
def test_a_training_phase_equals_its_gradient_steps_taken_one_by_one(double):
    """update() draws the phase's batches at once and runs the target network once over all of them; the
    result must be the step-by-step algorithm's (same batches: one draw of 4×B indices = four draws of B)."""
    import copy

    import gymnasium as gym
    import torch.nn.functional as F

    from rlrun.algos.dqn import DQNAgent, DQNConfig, TDLoss, next_state_values, td_target
    from rlrun.algos.protocol import AgentContext
    from rlrun.config import NetworkConfig
    torch.manual_seed(0)
    ctx = AgentContext(gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(3),
                       NetworkConfig(hidden=[32, 32]), torch.device("cpu"), 0, 1000, 1)
    # MSE, a large learning rate and no clip: the weights depend on every target's value (Huber's linear part and
    # Adam's first steps would make them depend on signs only)
    agent = DQNAgent(DQNConfig(batch_size=16, train_freq=4, gradient_steps=-1, double=double, loss=TDLoss.mse,
                               learning_rate=0.05, max_grad_norm=0.0), ctx)
    rng = np.random.default_rng(1)
    for _ in range(100):
        agent.buffer.add(rng.normal(size=(1, 3)), rng.integers(0, 3, 1), rng.normal(size=1), rng.normal(size=(1, 3)),
                         (rng.random(1) < 0.2).astype(np.float32))
    agent.q_target.load_state_dict({k: v + 0.1 for k, v in agent.q.state_dict().items()})  # target ≠ online
    reference = copy.deepcopy(agent)

    metrics = agent.update()
    for _ in range(4):  # the algorithm as written in the papers: sample, target, one gradient step
        batch = reference.buffer.sample(16, reference.rng)
        with torch.no_grad():
            online_next = reference.q(batch.next_obs) if double else None
            targets = td_target(batch.rewards, batch.terminated,
                                next_state_values(reference.q_target(batch.next_obs), online_next), 0.99)
        q_taken = reference.q(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
        reference.optimizer.zero_grad()
        loss = F.mse_loss(q_taken, targets)
        loss.backward()
        reference.optimizer.step()
    assert agent.n_updates == 4
    torch.testing.assert_close(metrics["losses/td_loss"], loss.detach())
    for (name, ours), theirs in zip(agent.q.state_dict().items(), reference.q.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)


def test_actions_are_uniformly_random_until_learning_starts():
    """Before learning_starts DQN neither trains nor consults its network (Nature DQN's replay start, SB3's
    `_sample_action`): even with ε = 0 the warm-up's actions are uniform; afterwards they are greedy."""

    from rlrun.algos.dqn import DQNAgent, DQNConfig
    from rlrun.algos.protocol import AgentContext
    from rlrun.config import EnvConfig, NetworkConfig
    from rlrun.envs import EnvRunner, make_vec_env

    envs = make_vec_env(EnvConfig(id="CartPole-v1"), 2)
    runner = EnvRunner(envs, seed=0)
    ctx = AgentContext(envs.single_observation_space, envs.single_action_space, NetworkConfig(hidden=[8]),
                       torch.device("cpu"), 0, 1000, 2)
    agent = DQNAgent(DQNConfig(learning_starts=200, exploration_initial_eps=0.0, exploration_final_eps=0.0,
                               train_freq=1, batch_size=8), ctx)
    greedy_calls = []
    act = agent.act
    agent.act = lambda obs: greedy_calls.append(runner.global_step) or act(obs)
    while runner.global_step < 200:
        assert agent.train_iteration(runner).keys() == {"charts/epsilon"}  # no gradient step yet
    warmup_actions = agent.buffer.arrays()["actions"][:200]
    assert not greedy_calls and agent.n_updates == 0
    assert 0.35 < warmup_actions.mean() < 0.65  # both actions, about equally often
    agent.train_iteration(runner)
    assert greedy_calls == [200] and agent.n_updates > 0
    envs.close()


@pytest.mark.parametrize("double,loss,bf16", [(False, "huber", False), (True, "huber", False),
                                              (False, "mse", False), (True, "mse", False),
                                              (False, "huber", True), (True, "mse", True)])
def test_written_out_gradients_train_exactly_as_autograd(monkeypatch, double, loss, bf16):
    """The CPU update takes its gradients from rlrun/backprop.py instead of autograd: the weights after several
    phases (Huber's linear part, clipping and Adam's flat buffer included) must be autograd's, bit for bit; in
    fp32, and with algo.bf16 against autocast."""
    import copy

    import gymnasium as gym

    from rlrun.algos.dqn import DQNAgent, DQNConfig, TDLoss, td_loss, td_loss_grad
    from rlrun.algos.protocol import AgentContext
    from rlrun.backprop import MLPBackprop
    from rlrun.config import NetworkConfig

    q_taken = torch.tensor([-3.0, -0.5, 0.0, 0.25, 2.0], requires_grad=True)
    targets = torch.tensor([0.0, 0.1, -1.0, 0.25, -0.5])
    td_loss(q_taken, targets, TDLoss(loss)).backward()
    assert torch.equal(td_loss_grad(q_taken.detach(), targets, TDLoss(loss)), q_taken.grad)

    torch.manual_seed(0)
    ctx = AgentContext(gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(3),
                       NetworkConfig(hidden=[32, 32]), torch.device("cpu"), 0, 1000, 1)
    agent = DQNAgent(DQNConfig(batch_size=16, double=double, loss=TDLoss(loss), learning_rate=0.05,
                               max_grad_norm=1.0, bf16=bf16), ctx)
    rng = np.random.default_rng(1)
    for _ in range(100):
        agent.buffer.add(rng.normal(size=(1, 3)), rng.integers(0, 3, 1), 5 * rng.normal(size=1),
                         rng.normal(size=(1, 3)), (rng.random(1) < 0.2).astype(np.float32))
    reference = copy.deepcopy(agent)
    backward_calls = []
    real_backward = MLPBackprop.backward
    monkeypatch.setattr(MLPBackprop, "backward", lambda self, g: backward_calls.append(1) or real_backward(self, g))
    before = [p.clone() for p in agent.q.parameters()]
    ours = [agent.update() for _ in range(5)]
    assert len(backward_calls) == 20  # 5 phases of 4 gradient steps, none through autograd
    assert all(not torch.equal(a, b) for a, b in zip(before, agent.q.parameters()))  # every layer trained
    monkeypatch.setattr(MLPBackprop, "usable", lambda self: False)
    theirs = [reference.update() for _ in range(5)]
    assert len(backward_calls) == 20
    for a, b in zip(ours, theirs):
        assert torch.equal(a["losses/td_loss"], b["losses/td_loss"])
    for (name, mine), other in zip(agent.q.state_dict().items(), reference.q.state_dict().values()):
        assert torch.equal(mine, other), name
