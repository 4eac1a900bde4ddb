"""DDPG / TD3 / SAC building blocks against hand-computed numbers, plus CLI checks of the off-policy presets."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import torch
from conftest import read_summary, rlrun

from rlrun import CONF_DIR
from rlrun.algos.sac import SquashedGaussianActor, sac_target, squashed_log_prob, temperature_loss
from rlrun.algos.td3 import smoothed_target_actions, td3_target
from rlrun.checkpoint import load_buffer, save_checkpoint
from rlrun.cli import eval_main
from rlrun.config import NetworkConfig, compose
from rlrun.networks import polyak_update
from rlrun.offpolicy import ActionScaler, Critics, OrnsteinUhlenbeckNoise

# -- Ornstein–Uhlenbeck noise ---------------------------------------------------------------------------


def test_ou_noise_reverts_to_the_mean():
    theta, dt, steps, x0 = 0.15, 0.1, 50, 5.0
    noise = OrnsteinUhlenbeckNoise(4000, 1, sigma=0.3, theta=theta, dt=dt, rng=np.random.default_rng(0))
    noise.load_state(np.full((4000, 1), x0))
    for _ in range(steps):
        samples = noise.sample()
    # E[x_k] = x0·(1 − θ·dt)^k for the Euler–Maruyama process; the spread of the mean over 4000 envs is ~0.01.
    assert samples.mean() == pytest.approx(x0 * (1 - theta * dt) ** steps, abs=0.05)
    noiseless = OrnsteinUhlenbeckNoise(1, 1, sigma=0.0, theta=theta, dt=dt, rng=np.random.default_rng(0))
    noiseless.load_state(np.array([[x0]]))
    assert noiseless.sample()[0, 0] == pytest.approx(x0 * (1 - theta * dt))


def test_ou_noise_stationary_variance():
    sigma, theta, dt = 0.2, 0.15, 0.05
    noise = OrnsteinUhlenbeckNoise(256, 2, sigma=sigma, theta=theta, dt=dt, rng=np.random.default_rng(1))
    for _ in range(2000):  # burn-in: 15 correlation times 1/(θ·dt)
        noise.sample()
    samples = np.stack([noise.sample() for _ in range(5000)])
    # σ²/(2θ) is the continuous process's variance; the Euler scheme's is σ²/(2θ − θ²dt), 0.4 % larger here.
    assert samples.var() == pytest.approx(sigma**2 / (2 * theta), rel=0.05)
    assert samples.mean() == pytest.approx(0.0, abs=0.02)
    # Consecutive samples are strongly correlated: lag-1 autocorrelation 1 − θ·dt.
    lag1 = np.mean(samples[1:] * samples[:-1]) / samples.var()
    assert lag1 == pytest.approx(1 - theta * dt, abs=0.01)


def test_ou_noise_reset_only_touches_finished_envs():
    noise = OrnsteinUhlenbeckNoise(3, 2, sigma=0.5, theta=0.15, dt=0.1, rng=np.random.default_rng(0))
    for _ in range(10):
        noise.sample()
    before = noise.state()
    noise.reset(np.array([False, True, False]))
    after = noise.state()
    assert np.all(after[1] == 0.0)
    assert np.array_equal(after[[0, 2]], before[[0, 2]])


# -- target networks ----------------------------------------------------------------------------------------


def test_polyak_update():
    target, source = torch.nn.Linear(1, 2), torch.nn.Linear(1, 2)
    with torch.no_grad():
        target.weight[:] = torch.tensor([[1.0], [2.0]])
        source.weight[:] = torch.tensor([[3.0], [6.0]])
        target.bias[:] = 0.0
        source.bias[:] = torch.tensor([10.0, -10.0])
    polyak_update(target, source, 0.1)
    assert torch.allclose(target.weight, torch.tensor([[1.2], [2.4]]))
    assert torch.allclose(target.bias, torch.tensor([1.0, -1.0]))
    polyak_update(target, source, 1.0)
    assert torch.equal(target.weight, source.weight)


# -- TD3 and SAC targets: transition 0 continues, 1 terminated, 2 truncated (terminated = 0) --------------

REWARDS = torch.tensor([1.0, 2.0, 3.0])
TERMINATED = torch.tensor([0.0, 1.0, 0.0])
NEXT_Q = torch.tensor([[5.0, 7.0, -1.0],
                       [4.0, 8.0, -2.0]])


def test_td3_target_takes_the_smaller_critic_and_bootstraps_truncated():
    targets = td3_target(REWARDS, TERMINATED, NEXT_Q, gamma=0.9)
    # min over critics = [4, 7, -2]; the terminated one gets no bootstrap, the truncated one does.
    assert torch.allclose(targets, torch.tensor([1 + 0.9 * 4, 2.0, 3 + 0.9 * -2]))


def test_sac_target_subtracts_the_entropy_bonus():
    next_log_prob = torch.tensor([-1.0, 0.5, 2.0])
    targets = sac_target(REWARDS, TERMINATED, NEXT_Q, next_log_prob, alpha=0.2, gamma=0.9)
    # soft value = min Q − α log π = [4.2, 6.9, −2.4]
    assert torch.allclose(targets, torch.tensor([1 + 0.9 * 4.2, 2.0, 3 + 0.9 * -2.4]))


def test_target_policy_smoothing_is_clipped():
    torch.manual_seed(0)
    actions = torch.tensor([[0.0, 0.95, -0.95]]).repeat(1000, 1)
    smoothed = smoothed_target_actions(actions, noise_std=0.5, noise_clip=0.1)
    assert (smoothed - actions).abs().max() <= 0.1 + 1e-6
    assert smoothed.max() <= 1.0 and smoothed.min() >= -1.0
    assert smoothed[:, 0].std() > 0.05  # the noise is there
    assert torch.equal(smoothed_target_actions(actions, 0.0, 0.5), actions)


# -- squashed Gaussian -----------------------------------------------------------------------------------


def _normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("a", [-0.99, -0.5, 0.0, 0.3, 0.9, 0.999])
def test_squashed_log_prob_matches_numeric_change_of_variables(a):
    mean, std = 0.3, 0.7
    # P(tanh U ≤ a) = Φ((atanh a − μ)/σ); its numeric derivative is the density of the squashed action.
    h = 1e-6
    cdf = [_normal_cdf((math.atanh(a + d) - mean) / std) for d in (-h, h)]
    numeric_log_density = math.log((cdf[1] - cdf[0]) / (2 * h))
    u = torch.tensor([[math.atanh(a)]], dtype=torch.float64)
    log_prob = squashed_log_prob(u, torch.tensor([[mean]], dtype=torch.float64),
                                 torch.tensor([[math.log(std)]], dtype=torch.float64))
    assert log_prob.item() == pytest.approx(numeric_log_density, abs=1e-4)


def test_squashed_log_prob_sums_dimensions_and_stays_finite():
    u = torch.tensor([[0.2, 25.0]])
    mean, log_std = torch.zeros(1, 2), torch.zeros(1, 2)
    both = squashed_log_prob(u, mean, log_std)
    separately = squashed_log_prob(u[:, :1], mean[:, :1], log_std[:, :1]) + \
        squashed_log_prob(u[:, 1:], mean[:, 1:], log_std[:, 1:])
    assert torch.isfinite(both).all()  # tanh(25) rounds to 1 in float32; log(1 − 1) would be −inf
    assert torch.allclose(both, separately)


def test_actor_samples_stay_in_the_unit_box():
    torch.manual_seed(0)
    actor = SquashedGaussianActor(3, 2, NetworkConfig(hidden=[16]))
    actions, log_prob = actor.sample(torch.randn(64, 3))
    assert actions.shape == (64, 2) and log_prob.shape == (64,)
    assert actions.abs().max() < 1.0
    assert actor(torch.randn(5, 3)).shape == (5, 2)


@pytest.mark.parametrize("log_prob, direction", [(2.0, +1), (-3.0, -1)])
def test_temperature_moves_toward_the_entropy_target(log_prob, direction):
    # Target entropy −|A| = −1. Entropy −log π = −2 is below it → α must grow; entropy 3 is above → shrink.
    log_alpha = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.SGD([log_alpha], lr=0.1)
    temperature_loss(log_alpha, torch.full((8,), log_prob), target_entropy=-1.0).backward()
    optimizer.step()
    assert torch.sign(log_alpha.detach()) == direction


# -- networks and scaling -----------------------------------------------------------------------------------


def test_critics_return_one_row_per_critic():
    critics = Critics(3, 2, NetworkConfig(hidden=[8]), n=2)
    values = critics(torch.randn(5, 3), torch.randn(5, 2))
    assert values.shape == (2, 5)
    first = critics(torch.zeros(5, 3), torch.zeros(5, 2), first=1)
    assert first.shape == (1, 5)
    assert torch.equal(first[0], critics.q[0](torch.zeros(5, 5)).squeeze(-1))


def test_action_scaler_maps_the_unit_box_to_the_bounds():
    import gymnasium as gym

    scaler = ActionScaler(gym.spaces.Box(low=np.array([-2.0, 0.0], dtype=np.float32),
                                          high=np.array([2.0, 1.0], dtype=np.float32)))
    assert np.allclose(scaler.to_env(np.array([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]])),
                       [[-2.0, 0.0], [0.0, 0.5], [2.0, 1.0]])
    with pytest.raises(ValueError, match="infinite bounds"):
        ActionScaler(gym.spaces.Box(low=-np.inf, high=np.inf, shape=(1,)))


# -- presets and the CLI ----------------------------------------------------------------------------------------


def _compose(*overrides: str):
    # The shared helper: it initialises Hydra once per process, so it mixes with other tests' compositions.
    return compose(list(overrides))


@pytest.mark.parametrize("algo_name", ["ddpg", "td3"])
def test_zoo_ddpg_and_td3_presets_are_rl_zoo_lunarlander_continuous(algo_name):
    """BENCHMARKS.md gives the two one row of rl-zoo settings; SB3's defaults fill in batch 256 and τ .005."""
    cfg = _compose(f"experiment=zoo_{algo_name}_lunarlander")
    assert cfg.env.id == "LunarLanderContinuous-v3" and cfg.total_steps == 300_000
    assert list(cfg.network.hidden) == [400, 300] and cfg.network.activation == "relu"
    algo = cfg.algo
    assert (algo.name, algo.gamma, algo.buffer_size, algo.learning_starts) == (algo_name, 0.98, 200_000, 10_000)
    assert (algo.noise, algo.noise_sigma, algo.actor_lr, algo.critic_lr) == ("gaussian", 0.1, 1e-3, 1e-3)
    assert (algo.batch_size, algo.tau, algo.train_freq, algo.gradient_steps) == (256, 0.005, 1, 1)
    assert (algo.num_envs, algo.bf16) == (1, False)


def test_zoo_sac_preset_is_rl_zoo_lunarlander_continuous():
    cfg = _compose("experiment=zoo_sac_lunarlander")
    assert cfg.env.id == "LunarLanderContinuous-v3" and cfg.total_steps == 500_000
    assert list(cfg.network.hidden) == [400, 300]
    algo = cfg.algo
    assert (algo.name, algo.batch_size, algo.buffer_size, algo.tau, algo.gamma) == ("sac", 256, 1_000_000, 0.01,
                                                                                     0.99)
    assert (algo.actor_lr, algo.critic_lr, algo.alpha_lr, algo.lr_schedule) == (7.3e-4, 7.3e-4, 7.3e-4, "linear")
    assert (algo.learning_starts, algo.autotune, algo.train_freq, algo.gradient_steps) == (10_000, True, 1, 1)


@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac"])
def test_discrete_env_is_refused_clearly(tmp_path, algo):
    proc = rlrun(tmp_path / "run", f"algo={algo}", "env=cartpole", "total_steps=100", check=False)
    assert proc.returncode != 0
    message = proc.stderr + proc.stdout
    assert f"algo={algo} needs a continuous (Box) action space" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("algo, extra, needle", [
    ("ddpg", "device=cpu", "algo.cuda_graphs=true needs device=cuda (this run trains on cpu)"),
    ("td3", "device=cpu", "algo.cuda_graphs=true needs device=cuda (this run trains on cpu)"),
    ("sac", "transfer=finetune", "algo.cuda_graphs=true cannot be combined with transfer learning"),
])
def test_cuda_graphs_refused_where_they_cannot_run(tmp_path, algo, extra, needle):
    """The graphed update itself needs a GPU (tests/test_cuda.py); here: its clear refusals."""
    proc = rlrun(tmp_path / "run", f"algo={algo}", "env=pendulum", "total_steps=100", "algo.cuda_graphs=true",
                 extra, check=False)
    message = proc.stderr + proc.stdout
    assert proc.returncode == 2, message
    assert needle in message and "Traceback" not in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_cuda_graphs_checkpoint_evaluates_and_resumes_on_a_cpu(tmp_path, capsys):
    """A checkpoint written with algo.cuda_graphs=true (simulated: a CPU run's stored config says so) is
    evaluated by rlrun-eval on a CPU, and resumes there with algo.cuda_graphs=false (or is refused clearly)."""
    run_dir = tmp_path / "run"
    common = ["algo=td3", "env=pendulum", "algo.learning_starts=100", "checkpoint.every_steps=200", "device=cpu"]
    rlrun(run_dir, *common, "total_steps=200")
    last = run_dir / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    assert "cuda_graphs: false" in payload["config"]
    payload["config"] = payload["config"].replace("cuda_graphs: false", "cuda_graphs: true")
    save_checkpoint(last, payload, load_buffer(last, payload), step=payload["step"])

    capsys.readouterr()
    eval_main([str(run_dir), "--checkpoint", "last", "--device", "cpu", "--episodes", "1"])
    assert json.loads(capsys.readouterr().out)["step"] == 200

    refused = rlrun(tmp_path / "on_cpu", *common, "total_steps=400", f"resume={run_dir}", "algo.cuda_graphs=true",
                    check=False)
    assert refused.returncode == 2
    assert "resumes here with algo.cuda_graphs=false" in refused.stderr + refused.stdout
    rlrun(tmp_path / "on_cpu", *common, "total_steps=400", f"resume={run_dir}", "algo.cuda_graphs=false")
    assert read_summary(tmp_path / "on_cpu")["steps_done"] == 400


@pytest.mark.parametrize("algo, extra", [("ddpg", "algo.noise=ou"), ("td3", "algo.target_noise=0.1"),
                                         ("sac", "algo.autotune=false")])
def test_short_run_on_pendulum(tmp_path, algo, extra):
    run_dir = tmp_path / "run"
    rlrun(run_dir, f"algo={algo}", "env=pendulum", "total_steps=400", "algo.learning_starts=200",
          "algo.batch_size=32", "network.hidden=[32,32]", "eval.every_steps=0", "eval.episodes=1", extra)
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["steps_done"] == 400
    assert summary["final_return_mean"] is not None


@pytest.mark.parametrize("algo, extra", [("ddpg", "algo.noise=ou"), ("sac", "algo.autotune=true")])
def test_resume_continues_exactly(tmp_path, algo, extra):
    """Stop at 300 steps and resume to 600: the weights equal those of one straight 600-step run."""
    common = [f"algo={algo}", "env=pendulum", "algo.learning_starts=100", "algo.batch_size=16",
              "network.hidden=[16,16]", "eval.every_steps=0", "eval.episodes=1", extra]
    rlrun(tmp_path / "straight", *common, "total_steps=600")
    rlrun(tmp_path / "split", *common, "total_steps=300")
    rlrun(tmp_path / "split", *common, "total_steps=600", f"resume={tmp_path / 'split'}")
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


@pytest.mark.parametrize("preset, config_cls", [("zoo_ddpg_lunarlander", "DDPGConfig"),
                                                ("zoo_td3_lunarlander", "TD3Config"),
                                                ("zoo_sac_lunarlander", "SACConfig")])
def test_zoo_presets_set_every_algo_field(preset, config_cls):
    import dataclasses

    import yaml

    from rlrun.algos import ddpg, sac, td3

    cls = {"DDPGConfig": ddpg.DDPGConfig, "TD3Config": td3.TD3Config, "SACConfig": sac.SACConfig}[config_cls]
    written = yaml.safe_load((CONF_DIR / "experiment" / f"{preset}.yaml").read_text())["algo"]
    assert set(written) == {f.name for f in dataclasses.fields(cls)} - {"name"}


def pendulum_agent(algo: str, hidden: str, *overrides: str):
    """An agent and its env runner on Pendulum, built below Run (whose hardware check refuses bf16 where it is
    emulated), so the update itself is tested on any CPU."""
    from omegaconf import OmegaConf

    from rlrun.algos import ALGORITHMS
    from rlrun.algos.protocol import AgentContext
    from rlrun.envs import EnvRunner, make_vec_env

    cfg = OmegaConf.to_object(compose([f"algo={algo}", "env=pendulum", "algo.learning_starts=64",
                                       "algo.batch_size=16", f"network.hidden={hidden}", *overrides]))
    torch.manual_seed(0)
    runner = EnvRunner(make_vec_env(cfg.env, 1), seed=0)
    ctx = AgentContext(runner.single_observation_space, runner.single_action_space, cfg.network,
                       torch.device("cpu"), 0, 200, 1)
    return runner, ALGORITHMS[algo].make_agent(cfg.algo, ctx)


@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac"])
def test_bf16_update_learns_the_critic_on_any_cpu(algo):
    """The bf16 update: finite losses, fp32 weights, and weights that move."""
    runner, agent = pendulum_agent(algo, "[16,16]", "algo.bf16=true")
    critic_before = [p.detach().clone() for p in agent.critic.parameters()]
    metrics = {}
    while runner.global_step < 100:
        metrics = agent.train_iteration(runner) or metrics
    assert metrics and all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())
    assert all(p.dtype == torch.float32 for p in agent.critic.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(agent.critic.parameters(), critic_before))


@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac"])
def test_bf16_update_keeps_output_layers_fp32_forward_and_backward(algo):
    """`algo.bf16` runs the hidden layers' matrix multiplies in bfloat16 and the output layers' in fp32, in the
    backward pass too (autocast wraps the forward passes only; around backward it would turn the output
    layers' gradient matmuls into bf16 as well)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class MatmulDtypes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.head, self.hidden = set(), set()  # operand dtypes of output-layer and of hidden-layer matmuls

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                a, b = args[-2:]
                # Output layers are [*, 1] (critics; Pendulum's one action) or [*, 2] (SAC's mean and log σ);
                # no hidden-layer operand has a dimension of 1 or 2 (batch 16, widths 3, 4, 24, 40).
                head = {1, 2} & {*a.shape, *b.shape}
                (self.head if head else self.hidden).add((a.dtype, b.dtype))
            return func(*args, **(kwargs or {}))

    runner, agent = pendulum_agent(algo, "[24,40]", "algo.bf16=true")
    while runner.global_step < 64:
        agent.train_iteration(runner)
    dtypes = MatmulDtypes()
    with dtypes:
        agent.update()
        agent.update()  # TD3 updates its actor every second step
    assert dtypes.head == {(torch.float32, torch.float32)}
    assert dtypes.hidden == {(torch.bfloat16, torch.bfloat16)}


@pytest.mark.parametrize("algo", ["dqn", "ddpg", "td3", "sac"])
def test_agent_random_stream_is_not_env_zeros(algo):
    """The agent's generator (warm-up actions, noise, replay sampling) is seeded from the run's seed but is
    not env 0's stream: with the bare seed, Pendulum's warm-up actions were env 0's start states, rescaled."""
    from gymnasium.utils.seeding import np_random
    from omegaconf import OmegaConf

    from rlrun.algos import ALGORITHMS
    from rlrun.algos.protocol import AgentContext
    from rlrun.envs import EnvRunner, make_vec_env

    env = "cartpole" if algo == "dqn" else "pendulum"
    cfg = OmegaConf.to_object(compose([f"algo={algo}", f"env={env}", "network.hidden=[16]"]))
    runner = EnvRunner(make_vec_env(cfg.env, 1), seed=3)
    ctx = AgentContext(runner.single_observation_space, runner.single_action_space, cfg.network,
                       torch.device("cpu"), 3, 200, 1)
    draws = [ALGORITHMS[algo].make_agent(cfg.algo, ctx).rng.random(8) for _ in range(2)]
    env_stream, _ = np_random(3)
    assert np.array_equal(draws[0], draws[1])  # reproducible from the seed
    assert not np.allclose(draws[0], env_stream.random(8))
    assert not np.allclose(draws[0], np.random.default_rng(3).random(8))


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac"])
def test_written_out_gradients_train_exactly_as_autograd(monkeypatch, algo, bf16):
    """The CPU update takes the MLPs' gradients from rlrun/backprop.py instead of autograd: after 40 updates
    (TD3's delayed actor and target noise, SAC's sampled actions, temperature and twin-critic minimum included)
    every network's weights must be autograd's, bit for bit (SAC's to rounding, below); in fp32, and with algo.bf16
    against autocast."""
    import copy

    from rlrun.backprop import MLPBackprop

    runner, agent = pendulum_agent(algo, "[24,40]", *(["algo.bf16=true"] if bf16 else []))
    while runner.global_step < 64:  # fill the buffer with the random warm-up (no update yet)
        agent.train_iteration(runner)
    reference = copy.deepcopy(agent)
    before = {name: [t.clone() for t in m.state_dict().values()] for name, m in agent.modules().items()}
    calls = []
    real_backward = MLPBackprop.backward
    monkeypatch.setattr(MLPBackprop, "backward", lambda self, *a, **k: calls.append(1) or real_backward(self, *a, **k))
    torch.manual_seed(5)
    ours = [agent.update() for _ in range(40)]
    for name in ("actor", "critic"):  # both trained: equal weights below are not two untouched copies
        assert any(not torch.equal(a, b) for a, b in zip(before[name], agent.modules()[name].state_dict().values()))
    assert len(calls) >= 40 * 2  # the critic's and the actor's (and, for the actor loss, critic 0's input gradient)
    monkeypatch.setattr(MLPBackprop, "usable", lambda self: False)
    torch.manual_seed(5)
    calls.clear()
    theirs = [reference.update() for _ in range(40)]
    assert not calls
    # SAC's actor gradient at the MLP's output is written in closed form (`written_out_actor_step`), where autograd
    # leaves terms that cancel to rounding: equal up to that, after 40 updates of Adam
    same = torch.equal if algo != "sac" else partial(torch.allclose, rtol=1e-4, atol=1e-6)
    for a, b in zip(ours, theirs):
        for key in a:
            assert same(a[key], b[key]), (key, a[key], b[key])
    for name, module in agent.modules().items():
        for (key, mine), other in zip(module.state_dict().items(), reference.modules()[name].state_dict().values()):
            assert same(mine, other), (f"{name}.{key}", (mine - other).abs().max())


def test_written_out_critics_defer_to_autograd_when_the_critics_module_has_a_hook():
    """A hook on the `Critics` container (not on one of its MLPs) runs on autograd's path only: the written-out
    path must then stand aside (found by review: a forward hook there was silently skipped)."""
    from rlrun.offpolicy import CriticsBackprop

    critics = Critics(3, 1, NetworkConfig(hidden=[8]), n=2)
    written_out = CriticsBackprop(critics, 3)
    assert written_out.usable()
    handle = critics.register_forward_hook(lambda module, args, output: output * 0.5)
    assert not written_out.usable()
    handle.remove()
    handle = critics.q.register_forward_pre_hook(lambda module, args: None)
    assert not written_out.usable()
    handle.remove()
    assert written_out.usable()


@pytest.mark.parametrize("bf16", [False, True])
def test_sac_written_out_actor_step_gives_autograds_gradients(bf16):
    """SAC's actor step writes the gradient at the MLP's output in closed form (dL/dμ, dL/d log σ through the
    sample, the squashing and the log-probability, zero where log σ is clamped): autograd's actor gradients and
    loss for the same normal draw and α, up to float rounding; the critics' `.grad` untouched. The log-σ head's
    bias is set so that part of the batch falls above LOG_STD_MAX (clamped) and part below it."""
    from rlrun.algos.sac import LOG_STD_MAX
    from rlrun.networks import bf16_autocast

    runner, agent = pendulum_agent("sac", "[24,40]", *(["algo.bf16=true"] if bf16 else []))
    while runner.global_step < 64:
        agent.train_iteration(runner)
    with torch.no_grad():
        agent.actor.head.bias[1] = LOG_STD_MAX  # Pendulum: one action, head = [mean, log σ]
        weights = agent.actor.head.weight
        weights[1] = torch.randn(weights.shape[1], generator=torch.Generator().manual_seed(1))
    batch = agent.buffer.sample(64, agent.rng)
    eps, alpha = torch.randn_like(batch.actions), torch.tensor(0.37)
    for p in agent.critic.parameters():
        p.grad = torch.full_like(p, 7.0)
    loss, log_prob = agent.written_out_actor_step(batch.obs, eps, alpha)
    ours = [p.grad.clone() for p in agent.actor.parameters()]
    assert all(bool((p.grad == 7.0).all()) for p in agent.critic.parameters())

    with bf16_autocast(agent.device, bf16):
        mean, log_std = agent.actor.distribution(batch.obs)
        raw = agent.actor.head(agent.actor.body(batch.obs).float())[:, 1]
        u = mean + log_std.exp() * eps
        reference_log_prob = squashed_log_prob(u, mean, log_std)
        q_pi = agent.critic(batch.obs, torch.tanh(u)).min(dim=0).values
    clamped = raw.detach() > LOG_STD_MAX
    assert 0 < int(clamped.sum()) < len(clamped)
    reference_loss = (alpha * reference_log_prob - q_pi).mean()
    theirs = torch.autograd.grad(reference_loss, list(agent.actor.parameters()))
    torch.testing.assert_close(loss, reference_loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_prob, reference_log_prob.detach(), rtol=1e-5, atol=1e-6)
    for mine, other in zip(ours, theirs):
        assert float(other.abs().max()) > 0
        torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-6)
