"""Pure-function tests of the on-policy family against hand-computed numbers and torch.distributions."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import rlrun

from rlrun.algos.a2c import A2CConfig, a2c_loss
from rlrun.algos.ppo import PPOAgent, PPOConfig, ppo_policy_loss, value_loss
from rlrun.algos.protocol import AgentContext
from rlrun.algos.trpo import TRPOAgent, TRPOConfig, conjugate_gradient, line_search, max_step_size
from rlrun.backprop import MLPBackprop
from rlrun.config import EnvConfig, NetworkConfig
from rlrun.envs import EnvRunner, make_vec_env
from rlrun.networks import clip_grad_norm
from rlrun.onpolicy import (
    CategoricalDist,
    DiagGaussianDist,
    NumpySampler,
    ObsNormalizer,
    RewardScaler,
    RolloutStorage,
    RunningMeanStd,
    collect_rollout,
    compute_gae,
    episode_complete,
    make_actor,
    make_critic,
    normalize,
    normalize_per_minibatch,
    reward_to_go,
    rollout_sampler,
)

# Two envs, three steps. Env 0 is truncated at t=1 (bootstrap from V(true final obs) = 4.0);
# env 1 terminates at t=1 (its next value 9.0 must be ignored). Columns are envs.
REWARDS = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
VALUES = torch.tensor([[0.5, 0.2], [1.0, 0.3], [1.5, 0.4]])
NEXT_VALUES = torch.tensor([[1.0, 0.3], [4.0, 9.0], [2.0, 0.5]])
TERMINATED = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
DONES = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])


def test_gae_hand_computed_truncated_and_terminated():
    gamma, lam = 0.9, 0.8
    advantages = compute_gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, DONES, gamma, lam)
    # env 0: δ = [1 + .9·1 − .5, 2 + .9·4 − 1, 3 + .9·2 − 1.5] = [1.4, 4.6, 3.3]; the cut after t=1
    # stops the recursion: A = [1.4 + .72·4.6, 4.6, 3.3].
    # env 1: δ = [1 + .9·.3 − .2, 1 − .3, 1 + .9·.5 − .4] = [1.07, .7, 1.05] (no bootstrap at t=1).
    expected = torch.tensor([[4.712, 1.574], [4.6, 0.7], [3.3, 1.05]])
    torch.testing.assert_close(advantages, expected)


def test_gae_with_lambda_one_matches_reward_to_go():
    advantages = compute_gae(REWARDS, VALUES, NEXT_VALUES, TERMINATED, DONES, 0.9, 1.0)
    returns = reward_to_go(REWARDS, NEXT_VALUES, TERMINATED, DONES, 0.9)
    torch.testing.assert_close(advantages + VALUES, returns)


def test_reward_to_go_hand_computed():
    returns = reward_to_go(REWARDS, NEXT_VALUES, TERMINATED, DONES, 0.9)
    # env 0: R2 = 3 + .9·2 (bootstrap at the rollout end), R1 = 2 + .9·4 (truncated), R0 = 1 + .9·R1.
    # env 1: R2 = 1 + .9·.5, R1 = 1 (terminated), R0 = 1 + .9·1.
    expected = torch.tensor([[6.04, 1.9], [5.6, 1.0], [4.8, 1.45]])
    torch.testing.assert_close(returns, expected)


def test_monte_carlo_reward_to_go_and_completeness():
    returns = reward_to_go(REWARDS, torch.zeros_like(REWARDS), TERMINATED, DONES, 0.9)
    torch.testing.assert_close(returns[:, 0], torch.tensor([2.8, 2.0, 3.0]))
    complete = episode_complete(DONES)
    # t=2 of both envs belongs to an episode still running at the end of the rollout.
    torch.testing.assert_close(complete, torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))


def test_ppo_clipped_objective_on_constructed_batch():
    ratios = torch.tensor([1.5, 0.5, 1.1, 0.7])
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    old_logprob = torch.tensor([-1.0, -2.0, -0.5, -1.5])
    new_logprob = (old_logprob + ratios.log()).requires_grad_(True)
    loss, approx_kl, clip_fraction = ppo_policy_loss(new_logprob, old_logprob, advantages, clip_coef=0.2)
    # min(ρA, clip(ρ)A) = [min(1.5, 1.2), min(.5, .8), min(−1.1, −1.1), min(−.7, −.8)] = [1.2, .5, −1.1, −.8]
    torch.testing.assert_close(loss, torch.tensor(-(1.2 + 0.5 - 1.1 - 0.8) / 4))
    torch.testing.assert_close(clip_fraction, torch.tensor(0.75))
    expected_kl = ((ratios - 1) - ratios.log()).mean()
    torch.testing.assert_close(approx_kl, expected_kl)
    loss.backward()
    # The clipped terms (ρ=1.5 with A>0, ρ=0.7 with A<0) carry no gradient; the others −ρA/4.
    torch.testing.assert_close(new_logprob.grad, torch.tensor([0.0, -0.5 / 4, 1.1 / 4, 0.0]))


def test_value_loss_clipping():
    new = torch.tensor([2.0, 0.0])
    old = torch.tensor([1.0, 1.0])
    returns = torch.tensor([3.0, 0.0])
    torch.testing.assert_close(value_loss(new, old, returns, None), torch.tensor((1.0 + 0.0) / 2))
    # clipped predictions: [1.2, 0.8] → errors² [3.24, 0.64]; max with unclipped [1, 0] → [3.24, .64]
    torch.testing.assert_close(value_loss(new, old, returns, 0.2), torch.tensor((3.24 + 0.64) / 2))


def test_a2c_loss_terms():
    logprob = torch.tensor([-1.0, -2.0])
    loss, metrics = a2c_loss(logprob, torch.tensor([0.5, 0.7]), torch.tensor([1.0, 2.0]),
                             torch.tensor([2.0, -1.0]), torch.tensor([2.0, 2.0]), ent_coef=0.1, vf_coef=0.5)
    # policy −(−2 + 2)/2 = 0; value ((1−2)² + 0)/2 = .5; entropy .6 → 0 − .06 + .25
    torch.testing.assert_close(loss, torch.tensor(0.19))
    torch.testing.assert_close(metrics["losses/value_loss"], torch.tensor(0.5))


def test_gaussian_log_prob_entropy_kl_match_torch():
    torch.manual_seed(0)
    mean, log_std = torch.randn(5, 3), torch.randn(3) * 0.3
    ours = DiagGaussianDist(mean, log_std)
    ref = torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp().expand(5, 3)), 1)
    actions = torch.randn(5, 3)
    torch.testing.assert_close(ours.log_prob(actions), ref.log_prob(actions))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    other_mean, other_log_std = torch.randn(5, 3), torch.randn(3) * 0.3
    other_ref = torch.distributions.Independent(
        torch.distributions.Normal(other_mean, other_log_std.exp().expand(5, 3)), 1)
    torch.testing.assert_close(ours.kl(DiagGaussianDist(other_mean, other_log_std)),
                               torch.distributions.kl_divergence(ref, other_ref))


def test_categorical_matches_torch():
    torch.manual_seed(0)
    logits, other_logits = torch.randn(6, 4), torch.randn(6, 4)
    ours, ref = CategoricalDist(logits), torch.distributions.Categorical(logits=logits)
    actions = torch.tensor([0, 1, 2, 3, 0, 1])
    torch.testing.assert_close(ours.log_prob(actions), ref.log_prob(actions))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    torch.testing.assert_close(ours.kl(CategoricalDist(other_logits)), torch.distributions.kl_divergence(
        ref, torch.distributions.Categorical(logits=other_logits)))
    assert ours.sample().shape == (6,)


def test_categorical_samples_follow_the_probabilities():
    torch.manual_seed(0)
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 1.0]])
    n = 40_000
    dist = CategoricalDist(probs.clamp_min(1e-30).log().repeat(n, 1))
    samples = dist.sample().view(n, 3)
    assert samples.dtype == torch.int64
    frequencies = torch.stack([torch.bincount(samples[:, row], minlength=4) for row in range(3)]).float() / n
    # ± 4 standard errors of a frequency estimated from 40k draws (≤ 0.01); zero-probability actions never drawn.
    torch.testing.assert_close(frequencies, probs, atol=0.01, rtol=0)
    assert samples[:, 0].eq(1).sum() == 0 and samples[:, 2].eq(3).all()


def test_normalize_per_minibatch_matches_slice_by_slice():
    torch.manual_seed(0)
    x = torch.randn(23) * 3 + 1
    for size, expected_slices in [(4, [slice(0, 4), slice(4, 8), slice(8, 12), slice(12, 16), slice(16, 20),
                                       slice(20, 23)]), (11, [slice(0, 11), slice(11, 22), slice(22, 23)]),
                                  (23, [slice(0, 23)]), (1, [slice(i, i + 1) for i in range(23)])]:
        expected = torch.cat([normalize(x[s]) if x[s].shape[0] > 1 else x[s] for s in expected_slices])
        torch.testing.assert_close(normalize_per_minibatch(x, size), expected)


def test_normalize_has_zero_mean_unit_std_and_leaves_a_single_element_finite():
    x = torch.tensor([1.0, 2.0, 4.0, 9.0])
    out = normalize(x)
    torch.testing.assert_close(out.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.std(), torch.tensor(1.0))
    # A one-sample batch (A2C with num_envs * num_steps = 1) has no spread: unbiased std is NaN there.
    torch.testing.assert_close(normalize(torch.tensor([3.5])), torch.tensor([3.5]))


def test_clip_grad_norm_matches_torch_and_skips_frozen():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    reference = copy.deepcopy(net)
    net[0].bias.requires_grad_(False)
    reference[0].bias.requires_grad_(False)
    inputs = torch.randn(7, 3)
    for model in (net, reference):
        model(inputs).pow(2).sum().mul(50).backward()
    expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    norm = clip_grad_norm(net.parameters(), 0.5)
    torch.testing.assert_close(norm, expected_norm)
    assert expected_norm > 0.5  # the clip was active
    for ours, theirs in zip(net.parameters(), reference.parameters(), strict=True):
        assert (ours.grad is None) == (theirs.grad is None)
        if ours.grad is not None:
            torch.testing.assert_close(ours.grad, theirs.grad)


def test_conjugate_gradient_solves_spd_system():
    matrix = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    b = torch.tensor([1.0, 2.0])
    x = conjugate_gradient(lambda v: matrix @ v, b, max_steps=10)
    torch.testing.assert_close(x, torch.tensor([1.0 / 11.0, 7.0 / 11.0]))
    torch.manual_seed(0)
    q = torch.randn(8, 8, dtype=torch.float64)
    spd = q @ q.T + 8 * torch.eye(8, dtype=torch.float64)
    rhs = torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(conjugate_gradient(lambda v: spd @ v, rhs, max_steps=8),
                               torch.linalg.solve(spd, rhs))


def test_line_search_respects_kl_limit():
    fisher = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    gradient = torch.tensor([1.0, 1.0])
    direction = torch.linalg.solve(fisher, gradient)
    max_kl = 0.01
    full_step = max_step_size(direction, fisher @ direction, max_kl) * direction
    # The quadratic model says the full step is exactly at the limit; the "true" KL here is 3× the model,
    # so the search must back off to a fraction f with 3·f²·δ < δ, i.e. f < 0.577.
    evaluated = []

    def evaluate(fraction: float) -> tuple[float, float]:
        step = fraction * full_step
        kl = 3.0 * 0.5 * float(step @ fisher @ step)
        evaluated.append((fraction, kl))
        return float(gradient @ step), kl

    fraction = line_search(evaluate, 0.0, max_kl, shrink=0.8, max_iter=10)
    assert fraction is not None
    assert 3.0 * fraction**2 * max_kl < max_kl
    assert fraction == pytest.approx(0.8**3)  # 1, .8, .64 violate (3·.64² = 1.23 > 1); .512 is the first
    assert all(kl >= max_kl for _, kl in evaluated[:-1])
    # No improvement anywhere (objective falls along the step): the search gives up.
    assert line_search(lambda f: (-f, 0.0), 0.0, max_kl, 0.8, 10) is None


def _context(env_id: str) -> AgentContext:
    env = gym.make(env_id)
    return AgentContext(env.observation_space, env.action_space, NetworkConfig(hidden=[16], activation="tanh"),
                        torch.device("cpu"), 0, 10_000, 2)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_trpo_policy_step_stays_in_trust_region(env_id):
    torch.manual_seed(0)
    ctx = _context(env_id)
    agent = TRPOAgent(TRPOConfig(num_steps=64, minibatch_size=32, target_kl=0.01), ctx)
    obs = torch.randn(128, ctx.observation_space.shape[0])
    with torch.no_grad():
        old_dist = agent.actor.dist(obs)
        actions = old_dist.sample()
        old_logprobs = old_dist.log_prob(actions)
    advantages = torch.randn(128)
    metrics = agent.policy_step(obs, actions, old_logprobs, advantages)
    with torch.no_grad():
        new_dist = agent.actor.dist(obs)
        kl = old_dist.kl(new_dist).mean()
    assert metrics["charts/line_search_success"] == 1.0
    assert 0.0 < float(kl) < 0.01
    assert float(metrics["losses/surrogate_gain"]) > 0.0


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(300, 4))
    rms = RunningMeanStd((4,))
    for chunk in np.split(data, 6):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-4)


def test_reward_scaler_state_round_trip():
    scaler = RewardScaler(num_envs=2, gamma=0.99, enabled=True)
    for _ in range(5):
        scaler(np.array([1.0, -2.0]), np.array([False, True]))
    copy = RewardScaler(num_envs=2, gamma=0.99, enabled=True)
    copy.load_state(scaler.state())
    rewards, dones = np.array([0.5, 0.5]), np.array([False, False])
    np.testing.assert_array_equal(scaler(rewards, dones), copy(rewards, dones))


def test_minibatch_larger_than_rollout_is_a_clear_error():
    with pytest.raises(ValueError, match="minibatch_size=4096 is larger than one rollout"):
        PPOAgent(PPOConfig(num_steps=128, minibatch_size=4096), _context("CartPole-v1"))
    with pytest.raises(ValueError, match="num_steps must be positive"):
        PPOAgent(PPOConfig(num_steps=0), _context("CartPole-v1"))
    assert A2CConfig().num_steps == 5


def test_cli_bad_minibatch_exits_with_message(tmp_path):
    proc = rlrun(tmp_path / "run", "algo=ppo", "env=cartpole", "algo.num_envs=2", "algo.num_steps=16",
                 "algo.minibatch_size=64", check=False, timeout=120)
    assert proc.returncode != 0
    assert "minibatch_size=64 is larger than one rollout" in proc.stderr
    assert "Traceback" not in proc.stderr


def _ppo_agent(env: str, *overrides: str):
    from omegaconf import OmegaConf

    from rlrun.algos import ALGORITHMS
    from rlrun.config import compose
    from rlrun.envs import EnvRunner, make_vec_env

    cfg = OmegaConf.to_object(compose(["algo=ppo", f"env={env}", "algo.num_envs=2", "algo.num_steps=32",
                                       "algo.minibatch_size=16", "algo.update_epochs=2", "network.hidden=[16,16]",
                                       *overrides]))
    torch.manual_seed(0)
    runner = EnvRunner(make_vec_env(cfg.env, 2), seed=0)
    ctx = AgentContext(runner.single_observation_space, runner.single_action_space, cfg.network,
                       torch.device("cpu"), 0, 1000, 2)
    return runner, ALGORITHMS["ppo"].make_agent(cfg.algo, ctx)


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
@pytest.mark.parametrize("clip_vloss", [False, True])
def test_ppo_written_out_gradients_are_autograds(env, clip_vloss):
    """PPO's fp32 CPU minibatch computes the loss's gradients by hand (clipped surrogate, entropy, value loss with
    and without clipping; categorical and Gaussian with its own log σ) and the networks' by rlrun/backprop.py:
    they must be autograd's up to float rounding, with ratios on both sides of the clip range."""
    runner, agent = _ppo_agent(env, f"algo.clip_vloss={str(clip_vloss).lower()}", "algo.ent_coef=0.05")
    runner.close()
    torch.manual_seed(1)
    n = 64
    obs = torch.randn(n, runner.single_observation_space.shape[0])
    with torch.no_grad():
        dist = agent.actor.dist(obs)
        actions = dist.sample()
        # old log-probs and values spread so that ratios fall inside and outside 1 ± clip, values inside and
        # outside old ± clip
        old_logprobs = dist.log_prob(actions) + 0.4 * torch.randn(n)
        old_values = agent.critic(obs).squeeze(-1) + 0.4 * torch.randn(n)
    advantages, returns = torch.randn(n), torch.randn(n)
    minibatch = (obs, actions, old_logprobs, advantages, old_values, returns, 0.2, True)
    agent.autograd_step(*minibatch)
    expected = [p.grad.clone() for p in agent.params]
    ratio = (dist.log_prob(actions) - old_logprobs).exp()
    assert ((ratio - 1).abs() > 0.2).any() and ((ratio - 1).abs() < 0.2).any()
    ours = agent.written_out_step(*minibatch)
    written = [p.grad.clone() for p in agent.params]
    theirs = agent.autograd_step(*minibatch)
    names = [name for name, _ in [*agent.actor.named_parameters(), *agent.critic.named_parameters()]]
    for name, grad, expected_grad in zip(names, written, expected):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7, msg=name)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert agent.written_out_step(*minibatch[:-1], False) == (None,) * 5  # parts only where they are reported


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_ppo_written_out_training_follows_autograd(monkeypatch, env):
    """One PPO iteration (two epochs of four minibatches, value clipping on) with the written-out gradients lands
    within float rounding of autograd's weights, and reports the same losses."""
    from rlrun.backprop import MLPBackprop

    calls = []
    real_step = PPOAgent.written_out_step
    monkeypatch.setattr(PPOAgent, "written_out_step", lambda self, *a: calls.append(1) or real_step(self, *a))
    results = []
    for written_out in (True, False):
        if not written_out:
            monkeypatch.setattr(MLPBackprop, "usable", lambda self: False)
        calls.clear()
        runner, agent = _ppo_agent(env, "algo.clip_vloss=true")
        results.append((agent, agent.train_iteration(runner)))
        runner.close()
        assert bool(calls) == written_out
    (ours, our_metrics), (theirs, their_metrics) = results
    for key in our_metrics:
        a, b = torch.as_tensor(our_metrics[key]), torch.as_tensor(their_metrics[key])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, equal_nan=True, msg=key)
    for name, module in ours.modules().items():
        for (key, mine), other in zip(module.state_dict().items(), theirs.modules()[name].state_dict().values()):
            torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-6, msg=f"{name}.{key}")


def test_ppo_policy_loss_grad_follows_autograd_at_ties_and_non_finite_ratios():
    """Review findings: a ratio a rounding step outside the clip range whose two terms tie takes half the gradient
    (torch.minimum's backward), and an overflowed ratio or a NaN advantage gives NaN, not a silent 0."""
    from rlrun.algos.ppo import policy_loss_grad

    old = torch.zeros(6)
    new = torch.tensor([0.0, 0.1, -0.5, 0.5, 100.0, 0.0])  # ratios 1, 1.105, 0.61, 1.65, inf, 1
    advantages = torch.tensor([1.0, -2.0, 0.7, 0.3, 1.0, float("nan")])
    logprob = new.clone().requires_grad_()
    ppo_policy_loss(logprob, old, advantages, 0.2, diagnostics=False)[0].backward()
    ours = policy_loss_grad(new, old, advantages, 0.2)
    torch.testing.assert_close(ours, logprob.grad, equal_nan=True)
    assert ours[4].isnan() and ours[5].isnan()

    # a tie outside the range: ρ = 0.79999995 (one float step below 1 - clip), where clip(ρ)·A rounds to ρ·A for
    # A = 1.52 (the old code gave the whole −ρA/n there, autograd half of it)
    new = torch.tensor([0.79999995]).log()
    advantages = torch.tensor([1.52])
    assert new.exp() * advantages == new.exp().clamp(0.8, 1.2) * advantages and new.exp() < 0.8
    logprob = new.clone().requires_grad_()
    ppo_policy_loss(logprob, torch.zeros(1), advantages, 0.2, diagnostics=False)[0].backward()
    torch.testing.assert_close(policy_loss_grad(new, torch.zeros(1), advantages, 0.2), logprob.grad)


@pytest.mark.parametrize("numpy_sampling", [True, False])
@pytest.mark.parametrize("env_id, limit, num_steps", [("CartPole-v1", 22, 60), ("Pendulum-v1", 6, 18)])
def test_a_rollout_stores_the_per_step_log_probs_values_and_bootstraps(env_id, limit, num_steps, numpy_sampling):
    """`collect_rollout` samples each step (in NumPy, or with torch) and computes the log-probs and values in one
    batched pass afterwards: they must be what per-step passes over the stored observations give, the actions those
    the envs received, and `next_values` V(s') inside an episode and V(true final obs) at a truncation (a time
    limit short enough to truncate several episodes; CartPole's falls terminate some)."""
    torch.manual_seed(0)
    env_cfg = EnvConfig(id=env_id, max_episode_steps=limit)
    runner = EnvRunner(make_vec_env(env_cfg, 3), seed=0)
    space, action_space = runner.single_observation_space, runner.single_action_space
    net = NetworkConfig(hidden=[16, 16], activation="tanh")
    actor, critic = make_actor(space, action_space, net), make_critic(space, net)
    storage = RolloutStorage.allocate(num_steps, 3, space, action_space, torch.device("cpu"))
    steps = []
    step_fn = runner.step
    runner.step = lambda action: steps.append(step_fn(action)) or steps[-1]
    backprop = MLPBackprop(actor)
    torch.manual_seed(7)
    sample = rollout_sampler(actor, num_steps, 3, backprop if numpy_sampling else None)
    torch.manual_seed(7)
    noise = actor.sampling_noise(num_steps, 3)  # the rollout's, drawn again
    assert isinstance(sample, NumpySampler) == numpy_sampling
    collect_rollout(runner, storage, actor, critic, ObsNormalizer(space.shape, False), RewardScaler(3, 0.99, False),
                    sample)
    with torch.no_grad():
        for t, step in enumerate(steps):
            obs = torch.as_tensor(step.obs)
            torch.testing.assert_close(storage.obs[t], obs)
            np.testing.assert_array_equal(step.action, actor.env_action(storage.actions[t]))
            torch.testing.assert_close(storage.logprobs[t], actor.dist(obs).log_prob(storage.actions[t]))
            sampled = actor.sample_from(actor(obs), noise[t])  # step t's action: from obs[t] and noise[t]
            if env_id == "CartPole-v1":
                assert torch.equal(storage.actions[t], sampled)
            else:
                torch.testing.assert_close(storage.actions[t], sampled)
            torch.testing.assert_close(storage.values[t], critic(obs).squeeze(-1))
            following = torch.as_tensor(steps[t + 1].obs if t + 1 < len(steps) else runner.obs)
            expected = torch.where(torch.as_tensor(step.done), critic(torch.as_tensor(step.next_obs)).squeeze(-1),
                                   critic(following).squeeze(-1))
            kept = ~torch.as_tensor(step.terminated)  # after a termination GAE's mask ignores next_values
            torch.testing.assert_close(storage.next_values[t][kept], expected[kept])
            torch.testing.assert_close(storage.rewards[t], torch.as_tensor(step.reward, dtype=torch.float32))
            torch.testing.assert_close(storage.dones[t], torch.as_tensor(step.done, dtype=torch.float32))
    truncations = sum(int((s.truncated & ~s.terminated).sum()) for s in steps)
    assert len(steps) == num_steps and truncations >= 3
    if env_id == "Pendulum-v1":  # a truncation at the last step: its value replaces V(next rollout's obs)
        assert steps[-1].truncated.all()
    if env_id == "CartPole-v1":
        assert sum(int(s.terminated.sum()) for s in steps) >= 1
    runner.close()


def test_sampling_from_the_actor_output_follows_the_policy():
    """`sample_from` with `sampling_noise` (the rollout's per-step sampling) draws from `dist_from`'s distribution:
    categorical frequencies within 4 standard errors; the Gaussian is the mean plus σ times the drawn noise."""
    torch.manual_seed(0)
    net = NetworkConfig(hidden=[8], activation="tanh")
    actor = make_actor(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(4), net)
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 0.0, 1.0]])
    n = 40_000
    logits = probs.clamp_min(1e-30).log()
    samples = actor.sample_from(logits.expand(n, 3, 4), actor.sampling_noise(n, 3))
    frequencies = torch.stack([torch.bincount(samples[:, row], minlength=4) for row in range(3)]).float() / n
    torch.testing.assert_close(frequencies, probs, atol=0.01, rtol=0)
    assert samples[:, 0].eq(1).sum() == 0 and samples[:, 2].eq(3).all()

    gaussian = make_actor(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Box(-2, 2, (3,)), net, log_std_init=-0.5)
    mean = torch.randn(5, 3)
    noise = gaussian.sampling_noise(5)
    assert noise.shape == (5, 3)
    torch.testing.assert_close(gaussian.sample_from(mean, noise), mean + math.exp(-0.5) * noise)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("action_space", [gym.spaces.Discrete(5), gym.spaces.Box(-1, 1, (3,))])
def test_numpy_sampling_draws_what_torch_sampling_draws(activation, action_space):
    """`NumpySampler` (the rollout's sampling on a CPU) runs the actor's layers and the sampling in NumPy: from the
    same noise, the actions of torch's `sample_from` on the module's output (the forward pass rounds differently:
    categorical draws are equal, Gaussian ones to float rounding). Other activations, or a hook, go to torch."""
    torch.manual_seed(0)
    net = NetworkConfig(hidden=[32, 16], activation=activation)
    actor = make_actor(gym.spaces.Box(-5, 5, (6,)), action_space, net, log_std_init=-0.3)
    with torch.no_grad():
        actor.head.weight.mul_(300.0)  # spread the policy's probabilities: draws differ where it is wrong
    obs = torch.randn(200, 8, 6)
    sampler = rollout_sampler(actor, 200, 8, MLPBackprop(actor))
    assert isinstance(sampler, NumpySampler)
    ours = np.stack([sampler(obs[t].numpy(), t) for t in range(200)])
    with torch.no_grad():
        theirs = actor.sample_from(actor(obs), torch.from_numpy(sampler.noise)).numpy()
    if isinstance(action_space, gym.spaces.Discrete):
        assert ours.dtype == np.int64 and np.array_equal(ours, theirs)
        assert len(np.unique(ours)) == 5
    else:
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    # ELU: torch samples, through the written-out forward
    elu = make_actor(gym.spaces.Box(-5, 5, (6,)), action_space, NetworkConfig(hidden=[8], activation="elu"))
    torch.manual_seed(3)
    torch_sampler = rollout_sampler(elu, 2, 8, MLPBackprop(elu))
    assert not isinstance(torch_sampler, NumpySampler)
    torch.manual_seed(3)
    noise = elu.sampling_noise(2, 8)
    with torch.no_grad():
        for t in range(2):
            np.testing.assert_array_equal(torch_sampler(obs[t].numpy(), t), elu.sample_from(elu(obs[t]), noise[t]))
    actor.body[0].register_forward_hook(lambda module, args, output: None)
    assert not isinstance(rollout_sampler(actor, 2, 8, MLPBackprop(actor)), NumpySampler)


@pytest.mark.parametrize("env_id, limit", [("CartPole-v1", 15), ("Pendulum-v1", 7)])
def test_the_vector_env_steps_as_gymnasiums_sync_vector_env(env_id, limit):
    """`SameStepSyncVectorEnv` (rlrun's vector env in this process) trims gymnasium's step loop: the same
    observations, rewards, terminations, truncations and final observations as gymnasium's SyncVectorEnv in its
    same-step autoreset mode, over episodes that terminate (CartPole) and are truncated (both)."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    from rlrun.envs import SameStepSyncVectorEnv, make_env

    env_cfg = EnvConfig(id=env_id, max_episode_steps=limit)
    ours = make_vec_env(env_cfg, 4)
    theirs = SyncVectorEnv([lambda: make_env(env_cfg) for _ in range(4)], autoreset_mode=AutoresetMode.SAME_STEP)
    assert isinstance(ours, SameStepSyncVectorEnv)
    for a, b in zip(ours.reset(seed=[3, 4, 5, 6]), theirs.reset(seed=[3, 4, 5, 6])):
        np.testing.assert_equal(a, b)
    ours.action_space.seed(0)
    ended = {"terminated": 0, "truncated": 0}
    for _ in range(60):
        actions = ours.action_space.sample()
        mine, other = ours.step(actions), theirs.step(actions)
        for a, b in zip(mine[:4], other[:4]):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        assert mine[4].keys() == other[4].keys()
        if "final_obs" in other[4]:
            np.testing.assert_array_equal(mine[4]["_final_obs"], other[4]["_final_obs"])
            for i in np.flatnonzero(other[4]["_final_obs"]):
                np.testing.assert_array_equal(mine[4]["final_obs"][i], other[4]["final_obs"][i])
        assert mine[0] is not ours._observations  # a copy: the caller's batch survives the next step
        ended["terminated"] += int(mine[2].sum())
        ended["truncated"] += int(mine[3].sum())
    assert ended["truncated"] > 0 and (ended["terminated"] > 0 or env_id == "Pendulum-v1")
    ours.close()
    theirs.close()
