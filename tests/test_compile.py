"""`algo.compile=true` (rlrun/compiled.py): PPO's compiled minibatch loss (autograd's, on a GPU) and compiled
written-out minibatch step (a CPU's), and DDPG's, TD3's and SAC's compiled written-out update steps, are the
eager ones up to float rounding, in value and gradient; an annealed clip coefficient does not recompile PPO's; a
compiled run resumes bit-identically; and a machine that cannot compile gets one clear error."""

from __future__ import annotations

from functools import partial

import gymnasium as gym
import pytest
import torch
from conftest import read_summary, rlrun
from test_resume import assert_same_run, final_model, kill_after_first_checkpoint, overrides_for

from rlrun.algos.ppo import PPOAgent, PPOConfig
from rlrun.algos.protocol import AgentContext
from rlrun.config import NetworkConfig


def _minibatch(agent: PPOAgent, n_obs: int, size: int = 64):
    generator = torch.Generator().manual_seed(1)
    obs = torch.randn(size, n_obs, generator=generator)
    with torch.no_grad():
        dist = agent.actor.dist(obs)
        actions = dist.sample()
        # Old log-probs and values away from the current ones, so that some ratios and values are clipped.
        old_logprobs = dist.log_prob(actions) + 0.3 * torch.randn(size, generator=generator)
        old_values = agent.critic(obs).squeeze(-1) + torch.randn(size, generator=generator)
    advantages = torch.randn(size, generator=generator)
    returns = torch.randn(size, generator=generator)
    return obs, actions, old_logprobs, advantages, old_values, returns


def assert_matches_eager(results: list, diagnostics: bool = True) -> None:
    """`results` = [(eager outputs, eager gradients), (compiled outputs, compiled gradients)]: equal up to float
    rounding; an output left out (None: the loss parts without diagnostics) on both sides."""
    (eager, eager_grads), (fast, fast_grads) = results
    for a, b in zip(eager, fast):
        if a is None:
            assert b is None and not diagnostics
        else:
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for a, b in zip(eager_grads, fast_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_compiled_loss_and_gradients_match_eager(env_id):
    from torch._dynamo.utils import counters

    env = gym.make(env_id)
    ctx = AgentContext(env.observation_space, env.action_space, NetworkConfig(hidden=[32, 32], activation="tanh"),
                       torch.device("cpu"), 0, 10_000, 1)
    torch.manual_seed(0)
    agent = PPOAgent(PPOConfig(num_steps=64, ent_coef=0.01, clip_vloss=True, compile=True), ctx)
    assert agent.loss_fn != agent.minibatch_loss
    batch = _minibatch(agent, env.observation_space.shape[0])
    torch._dynamo.reset()
    counters.clear()
    for clip_coef in (0.2, 0.15, 0.1):  # an annealed coefficient, passed as a tensor as train_iteration does
        for diagnostics in (False, True):
            results = []
            for loss_fn, clip in ((agent.minibatch_loss, clip_coef), (agent.loss_fn, torch.tensor(clip_coef))):
                agent.optimizer.zero_grad(set_to_none=True)
                outputs = loss_fn(*batch, clip, diagnostics)
                outputs[0].backward()
                results.append((outputs, [p.grad.clone() for p in agent.params]))
            eager, eager_grads = results[0]
            assert float(eager[0].detach()) != 0.0 and any(float(g.abs().sum()) > 0 for g in eager_grads)
            assert_matches_eager(results, diagnostics)
    # One compiled version with the diagnostics and one without, whatever the clip coefficient.
    assert counters["stats"]["unique_graphs"] == 2
    # A second agent in the same process (a sweep's next job) reuses the compiled code with its own weights.
    torch.manual_seed(1)
    other = PPOAgent(PPOConfig(num_steps=64, ent_coef=0.01, clip_vloss=True, compile=True), ctx)
    eager_loss = other.minibatch_loss(*batch, 0.2, True)[0]
    assert not torch.allclose(eager_loss, agent.minibatch_loss(*batch, 0.2, True)[0])
    torch.testing.assert_close(other.loss_fn(*batch, torch.tensor(0.2), True)[0], eager_loss, rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 2


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_compiled_written_out_step_matches_eager(env_id):
    """On a CPU the minibatch step that runs is the written-out one (rlrun/backprop.py): algo.compile compiles
    that, and its gradients and loss parts are the eager step's up to float rounding, with one compiled version
    with the diagnostics and one without, whatever the (annealed) clip coefficient."""
    from torch._dynamo.utils import counters

    env = gym.make(env_id)
    ctx = AgentContext(env.observation_space, env.action_space, NetworkConfig(hidden=[32, 32], activation="tanh"),
                       torch.device("cpu"), 0, 10_000, 1)
    torch.manual_seed(0)
    agent = PPOAgent(PPOConfig(num_steps=64, ent_coef=0.01, clip_vloss=True, compile=True), ctx)
    assert agent.actor_backprop.usable() and agent.written_out_fn != agent.written_out_step
    batch = _minibatch(agent, env.observation_space.shape[0])
    torch._dynamo.reset()
    counters.clear()
    for clip_coef in (0.2, 0.15, 0.1):
        for diagnostics in (False, True):
            results = []
            for step, clip in ((agent.written_out_step, clip_coef), (agent.written_out_fn, torch.tensor(clip_coef))):
                for p in agent.params:
                    p.grad = torch.full_like(p, 7.0)  # overwritten, not added to
                parts = step(*batch, clip, diagnostics)
                results.append((parts, [p.grad.clone() for p in agent.params]))
            eager_grads = results[0][1]
            assert any(float(g.abs().sum()) > 0 for g in eager_grads) and all((g != 7.0).any() for g in eager_grads)
            assert_matches_eager(results, diagnostics)
    assert counters["stats"]["unique_graphs"] == 2


def test_compiled_ppo_step_compiles_once_from_no_gradients():
    """A fresh agent has no `.grad`, and the optimizer's first step gives it one (views of its flat gradient):
    the compiled step must not compile a second version for that (`compiled`'s `grads_of`)."""
    from torch._dynamo.utils import counters

    env = gym.make("CartPole-v1")
    ctx = AgentContext(env.observation_space, env.action_space, NetworkConfig(hidden=[32, 32], activation="tanh"),
                       torch.device("cpu"), 0, 10_000, 1)
    agent = PPOAgent(PPOConfig(num_steps=64, compile=True), ctx)
    batch = _minibatch(agent, env.observation_space.shape[0])
    assert all(p.grad is None for p in agent.params)
    torch._dynamo.reset()
    counters.clear()
    before = [p.detach().clone() for p in agent.params]
    for _ in range(3):
        agent.written_out_fn(*batch, torch.tensor(0.2), False)
        agent.optimizer.step()
    assert counters["stats"]["unique_graphs"] == 1
    assert all(not torch.equal(a, b) for a, b in zip(before, agent.params))


def test_ppo_compiles_its_written_out_step_with_the_cpp_wrapper(monkeypatch):
    """PPO's CPU step asks Inductor for its C++ wrapper (+12% env steps/s, session 31); the autograd loss (a GPU's
    path) keeps the default Python wrapper. Checked on the options handed to torch.compile, without compiling."""
    asked = {}

    def record(fn, **kwargs):
        asked[fn.__name__] = kwargs
        return fn

    monkeypatch.setattr(torch, "compile", record)
    env = gym.make("CartPole-v1")
    ctx = AgentContext(env.observation_space, env.action_space, NetworkConfig(hidden=[32, 32], activation="tanh"),
                       torch.device("cpu"), 0, 10_000, 1)
    PPOAgent(PPOConfig(num_steps=64, compile=True), ctx)
    assert asked["written_out_step"] == {"dynamic": False, "options": {"cpp_wrapper": True}}
    assert asked["minibatch_loss"] == {"dynamic": False, "options": None}


@pytest.mark.parametrize("algo", ["ppo", "td3"])
def test_compiled_run_resumes_bit_identically(tmp_path, algo):
    """A run with algo.compile=true from the command line: the compiled code ran (the same seed without compiling
    parts from it by float rounding), and a run killed after its first checkpoint resumes to the uninterrupted
    run's weights bit for bit (TD3's target noise is drawn outside the compiled code, from the checkpointed
    generator)."""
    overrides = [*overrides_for(algo), "algo.compile=true"]
    reference, resumed, eager = tmp_path / "reference", tmp_path / "resumed", tmp_path / "eager"
    rlrun(reference, *overrides)
    rlrun(eager, *overrides_for(algo))
    assert any(not torch.equal(a, b) for a, b in zip(final_model(reference).values(), final_model(eager).values()))
    kill_after_first_checkpoint(resumed, overrides)
    rlrun(resumed, *overrides)
    assert read_summary(resumed)["status"] == "completed"
    assert_same_run(reference, resumed)
    # An execution option, not a hyperparameter: a resume may switch it off (reported), e.g. on a machine
    # without a compiler; the run goes on eagerly.
    more = [o for o in overrides if not o.startswith(("algo.compile=", "total_steps="))]
    done = read_summary(resumed)["steps_done"]
    proc = rlrun(resumed, *more, "algo.compile=false", f"total_steps={done + 1024}")
    assert "changed settings: algo.compile: True → False" in proc.stdout
    assert read_summary(resumed)["steps_done"] >= done + 1024


def test_no_compiler_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "run"
    proc = rlrun(run_dir, "algo=ppo", "env=cartpole", "algo.compile=true", "algo.num_envs=2", "algo.num_steps=64",
                 "algo.minibatch_size=64",
                 "total_steps=512", check=False, timeout=300,
                 extra_env={"CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "algo.compile=true: torch.compile could not compile" in proc.stderr
    assert "Run with algo.compile=false" in proc.stderr
    assert "Traceback" not in proc.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and "CompileError" in summary["error"]


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac"])
def test_compiled_offpolicy_steps_match_eager(algo, bf16):
    """DDPG, TD3 and SAC with algo.compile=true (fp32, and bf16): the update runs their written-out steps compiled,
    once each from the first update on (the gradients exist before the first call: no second version once the
    optimizer has made them), and the compiled steps give the eager steps' gradients and losses up to float
    rounding."""
    from test_offpolicy import pendulum_agent
    from torch._dynamo.utils import counters

    from rlrun.algos.td3 import smoothing_noise
    from rlrun.offpolicy import deterministic_actor_step

    runner, agent = pendulum_agent(algo, "[24,40]", "algo.compile=true", *(["algo.bf16=true"] if bf16 else []))
    while runner.global_step < 64:  # the random warm-up fills the buffer
        agent.train_iteration(runner)
    steps = ["critic_step", "actor_step"]
    torch._dynamo.reset()
    counters.clear()
    assert all(p.grad is None for p in [*agent.critic.parameters(), *agent.actor.parameters()])
    before = [p.detach().clone() for p in agent.critic.parameters()]
    for _ in range(4):  # TD3's actor step runs every second update
        metrics = agent.update()
    assert counters["stats"]["unique_graphs"] == len(steps)
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.critic.parameters()))

    batch = agent.buffer.sample(16, agent.rng)
    fields = (batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated)
    if algo == "ddpg":
        critic_args = fields
    elif algo == "td3":
        critic_args = (*fields, smoothing_noise(batch.actions, 0.2, 0.5))
    else:
        critic_args = (*fields, torch.randn_like(batch.actions), agent.log_alpha.detach().exp())
    actor_args = (batch.obs, torch.randn_like(batch.actions), agent.log_alpha.detach().exp()) if algo == "sac" \
        else (batch.obs,)
    for name, args, module in [("critic_step", critic_args, agent.critic), ("actor_step", actor_args, agent.actor)]:
        results = []
        if name == "critic_step":
            eager = agent.written_out_critic_step
        elif algo == "sac":
            eager = agent.written_out_actor_step
        else:
            eager = partial(deterministic_actor_step, agent.actor_backprop, agent.critic_backprop)
        for step in (eager, getattr(agent, name)):
            for p in module.parameters():
                p.grad.fill_(7.0)  # overwritten, not added to
            out = step(*args)
            out = out if isinstance(out, tuple) else (out,)  # DDPG's and TD3's actor steps: the loss alone
            results.append((out, [p.grad.clone() for p in module.parameters()]))
        eager_grads = results[0][1]
        assert all((g != 7.0).any() for g in eager_grads) and any(float(g.abs().sum()) > 0 for g in eager_grads)
        assert_matches_eager(results)
    assert counters["stats"]["unique_graphs"] == len(steps)  # the same compiled code, called directly


def test_offpolicy_compile_is_refused_off_the_cpu():
    from rlrun.offpolicy import compiled_if

    def step():
        return None

    assert compiled_if(False, torch.device("cuda"), step, []) is step
    with pytest.raises(ValueError, match="algo.compile=true compiles the CPU update .*algo.cuda_graphs=true"):
        compiled_if(True, torch.device("cuda"), step, [])


def test_offpolicy_compile_warns_where_a_hook_sends_the_update_through_autograd():
    from test_offpolicy import pendulum_agent

    runner, agent = pendulum_agent("td3", "[16,16]", "algo.compile=true")
    while runner.global_step < 64:
        agent.train_iteration(runner)
    agent.critic.q[0].register_forward_hook(lambda module, inputs, output: None)
    with pytest.warns(UserWarning, match="algo.compile=true: a hook on a network .* runs uncompiled"):
        agent.update()
