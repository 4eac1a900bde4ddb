"""Every config group composes; schemas catch typos and wrong types; incompatible pairs fail clearly."""

import itertools
import re
import warnings

import gymnasium as gym
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from rlrun import CONF_DIR
from rlrun.algos import ALGORITHMS, check_action_space
from rlrun.config import Config, compose, unknown_keys
from rlrun.envs import make_env


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


ENVS = [env for env in options("env") if env != "gym"]  # gym names no env: env.id is the user's
ALGOS = options("algo")


def test_every_algo_yaml_is_registered():
    assert set(ALGOS) == set(ALGORITHMS)


@pytest.mark.parametrize("env", ENVS)
def test_env_presets_build_and_carry_the_registry_threshold(env):
    cfg = OmegaConf.to_object(compose([f"env={env}"]))
    built = make_env(cfg.env)
    registry = gym.spec(cfg.env.id).reward_threshold
    expected = registry if registry is not None else -200.0  # pendulum: rlrun's own -200
    assert cfg.env.reward_threshold == pytest.approx(expected)
    built.close()


def group_combinations() -> list[tuple[str, str, str, str]]:
    """Every algo × env pair with every network (transfer=none) and with every transfer (the default network=auto):
    each (algo, env, network) and (algo, env, transfer) combination once. Networks and transfers do not meet at
    compose time (no transfer preset reads a network key; the tuned algo × env presets set networks), so their full
    product (1,600 composes against 640, ~8 minutes on a slow core) would check no interaction that this misses."""
    networks, transfers = options("network"), [t for t in options("transfer") if t != "none"]
    return [combo for algo, env in itertools.product(ALGOS, ENVS)
            for combo in [*((algo, env, network, "none") for network in networks),
                          *((algo, env, "auto", transfer) for transfer in transfers)]]


def test_every_combination_composes_and_incompatible_ones_fail_clearly():
    spaces = {env: make_env(OmegaConf.to_object(compose([f"env={env}"])).env).action_space for env in ENVS}
    checked = 0
    for algo, env, network, transfer in group_combinations():
        cfg = compose([f"algo={algo}", f"env={env}", f"network={network}", f"transfer={transfer}"])
        assert unknown_keys(cfg) == {}, (algo, env, network, transfer)  # tuned/<algo>_<env> included
        typed: Config = OmegaConf.to_object(cfg)
        assert typed.algo.name == algo
        spec = ALGORITHMS[algo]
        discrete = isinstance(spaces[env], gym.spaces.Discrete)
        if (discrete and spec.discrete) or (not discrete and spec.continuous):
            check_action_space(algo, spaces[env], typed.env.id)
        else:
            with pytest.raises(ValueError, match="action space"):
                check_action_space(algo, spaces[env], typed.env.id)
        checked += 1
    assert checked == len(ALGOS) * len(ENVS) * (len(options("network")) + len(options("transfer")) - 1)


def test_a_discrete_space_not_starting_at_zero_is_refused_clearly():
    """The agents act with 0 … n−1: an env whose Discrete actions start elsewhere would get wrong actions."""
    for algo in ("dqn", "ppo", "a2c"):
        check_action_space(algo, gym.spaces.Discrete(3, start=0), "MyEnv-v0")
        with pytest.raises(ValueError, match="actions start at -1"):
            check_action_space(algo, gym.spaces.Discrete(3, start=-1), "MyEnv-v0")


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose(experiment):
    cfg = compose([f"experiment={experiment}"])
    assert unknown_keys(cfg) == {}
    typed = OmegaConf.to_object(cfg)
    assert typed.algo.name in ALGORITHMS


def test_zoo_dqn_lunarlander_is_exactly_rl_zoo():
    typed = OmegaConf.to_object(compose(["experiment=zoo_dqn_lunarlander"]))
    algo = typed.algo
    assert typed.env.id == "LunarLander-v3" and typed.total_steps == 100_000
    assert (algo.name, algo.num_envs, algo.learning_rate, algo.batch_size, algo.buffer_size) == \
        ("dqn", 1, 6.3e-4, 128, 50_000)
    assert (algo.learning_starts, algo.gamma, algo.target_update_interval, algo.tau) == (0, 0.99, 250, 1.0)
    assert (algo.train_freq, algo.gradient_steps) == (4, -1)
    assert (algo.exploration_fraction, algo.exploration_initial_eps, algo.exploration_final_eps) == \
        (0.12, 1.0, 0.1)
    assert algo.double is False and algo.loss.value == "huber" and algo.max_grad_norm == 10.0
    assert algo.bf16 is False
    assert typed.network.hidden == [256, 256] and typed.network.activation.value == "relu"


def test_typo_in_a_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException):
        compose(["algo.learning_rat=0.1"])


def test_a_key_added_with_plus_that_no_schema_declares_is_found():
    """Hydra's own hint for `algo.lerning_rate=…` is `+algo.lerning_rate=…`, which adds the key; `to_object` then
    drops it without a word. `unknown_keys` names every such key, at any depth, and leaves free-form mappings be."""
    cfg = compose(["algo=dqn", "+algo.lerning_rate=0.1", "+env.gravty=-5", "+network.depth=3", "+eval.foo=1",
                   "+seeed=3", "+env.kwargs.extra=1", "+transfer.map.actor=q"])
    assert unknown_keys(cfg) == {"algo.lerning_rate": "algo.learning_rate", "env.gravty": None,
                                 "network.depth": None, "seeed": "seed", "eval.foo": None}
    assert unknown_keys(compose(["algo=sac", "+env.kwargs.extra=1"])) == {}
    # The closest name may live at another level: the same name elsewhere, or a free-form mapping's key.
    cfg = compose(["algo=dqn", "env=lunarlander", "+learning_rate=1e-3", "+algo.seed=3", "+algo.progress=none",
                   "+env.gravity=-5"])
    assert unknown_keys(cfg) == {"learning_rate": "algo.learning_rate", "algo.seed": "seed",
                                 "algo.progress": "log.progress", "env.gravity": "env.kwargs.gravity"}


def test_a_helper_key_that_an_interpolation_reads_is_not_unknown():
    """`+lr=0.01 algo.learning_rate=${lr}`: the helper's value reaches a real setting, so it is not ignored."""
    cfg = compose(["algo=dqn", "+lr=0.01", "algo.learning_rate=${lr}", "+unused=1"])
    assert unknown_keys(cfg) == {"unused": None}
    assert OmegaConf.to_object(cfg).algo.learning_rate == 0.01


def test_wrong_type_fails_at_compose_time():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose(["algo.batch_size=big"])


def test_unknown_group_option_fails():
    with pytest.raises(ConfigCompositionException):
        compose(["algo=dqnn"])


def test_env_kwargs_pass_through():
    typed = OmegaConf.to_object(compose(["env=lunarlander", "env.kwargs.gravity=-5.0"]))
    env = make_env(typed.env)
    assert env.unwrapped.gravity == -5.0
    env.close()


def test_any_gymnasium_id_through_env_gym_takes_its_registry_threshold(tmp_path):
    from rlrun.run import Run

    with pytest.raises(Exception, match="env.id"):
        OmegaConf.to_object(compose(["env=gym"]))
    cfg = compose(["env=gym", "env.id=MountainCar-v0", "algo=dqn", "total_steps=8", "log.tensorboard=false",
                   "log.progress=none"])
    run = Run(OmegaConf.to_object(cfg), tmp_path, OmegaConf.to_yaml(cfg))
    assert run.cfg.env.reward_threshold == -110.0  # Gymnasium's, for solved_at_* in summary.json
    run.close()


def test_a_network_preset_on_the_command_line_replaces_the_tuned_network():
    def network(*overrides: str) -> tuple[list[int], str]:
        cfg = OmegaConf.to_object(compose(["algo=ppo", "env=cartpole", *overrides]))
        return list(cfg.network.hidden), cfg.network.activation.value

    assert network() == ([64, 64], "tanh")  # conf/tuned/ppo_cartpole.yaml
    assert network("network=large") == ([400, 300], "relu")
    assert network("network=mlp") == ([256, 256], "relu")
    assert network("network=large", "network.hidden=[32]") == ([32], "relu")
    cfg = OmegaConf.to_object(compose(["algo=ppo", "env=acrobot"]))  # no tuned pair: the schema's MLP
    assert (list(cfg.network.hidden), cfg.network.activation.value) == ([256, 256], "relu")


def test_async_vectorization_composes():
    typed = OmegaConf.to_object(compose(["env.vectorization=async"]))
    assert typed.env.vectorization.value == "async"


@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormals_sets_the_cpu_flag_for_training_and_for_rlrun_eval(tmp_path, flush):
    """`flush_denormals` (default true) makes subnormal floats read and compute as zero, so Adam's moments of
    dead ReLU units stop costing a slow path; `flush_denormals=false` keeps IEEE subnormals. `rlrun-eval` sets
    what the checkpoint's run used. (conftest puts the flag back after each test.)"""
    from rlrun.cli import evaluate_checkpoint
    from rlrun.run import Run

    def flushes() -> bool:
        return bool(((subnormal * 1.0) == 0).all())

    subnormal = torch.full((4,), 1e-40)  # float32 subnormals lie below 1.18e-38
    assert not flushes()
    overrides = ["algo=dqn", "env=cartpole", "total_steps=64", "algo.learning_starts=32", "algo.train_freq=16",
                 "algo.gradient_steps=1", "eval.episodes=1", "log.tensorboard=false", "log.progress=none"]
    cfg = compose([*overrides, *([] if flush else ["flush_denormals=false"])])
    run = Run(OmegaConf.to_object(cfg), tmp_path, OmegaConf.to_yaml(cfg))
    assert flushes() is flush
    run.train()
    torch.set_flush_denormal(not flush)  # the opposite of the run's setting, which rlrun-eval must restore
    evaluate_checkpoint(tmp_path, 1, "last", 0, "cpu", video=False)
    assert flushes() is flush


def test_flush_denormals_warns_where_the_cpu_cannot(monkeypatch):
    from rlrun.run import set_flush_denormals

    monkeypatch.setattr(torch, "set_flush_denormal", lambda enabled: False)  # what torch returns off x86/SSE3
    with pytest.warns(UserWarning, match="cannot flush subnormal floats"):
        set_flush_denormals(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        set_flush_denormals(False)  # keeping them asks nothing of the CPU
    assert not caught


def test_shared_hyperparameter_ranges_accept_every_default_and_refuse_by_name():
    """check_hyperparameters (run before an agent is built): every algorithm's defaults pass, as do the edge
    values that mean something (gradient_steps=-1, max_grad_norm=0 or inf, target_kl=None); NaN and values out of
    range are refused naming the key."""
    import dataclasses
    import math

    from rlrun.algos import ALGORITHMS, check_hyperparameters

    for spec in ALGORITHMS.values():
        defaults = spec.config_cls()
        check_hyperparameters(defaults)
        for key, good in [("gradient_steps", -1), ("max_grad_norm", 0.0), ("max_grad_norm", math.inf),
                          ("target_kl", None), ("gamma", 1.0), ("tau", 1.0)]:
            if hasattr(defaults, key):
                check_hyperparameters(dataclasses.replace(defaults, **{key: good}))
        for key, bad, message in [("gamma", 1.5, "must be in [0, 1]"), ("gamma", math.nan, "must be in [0, 1]"),
                                  ("tau", 0.0, "must be in (0, 1]"), ("learning_rate", -1e-3, "must be >= 0"),
                                  ("actor_lr", math.nan, "must be >= 0"), ("target_kl", 0.0, "must be positive"),
                                  ("gradient_steps", -2, "must be >= 0, or -1"),
                                  ("log_std_init", math.nan, "must be a finite number"),
                                  ("log_std_init", math.inf, "must be a finite number"),
                                  ("target_entropy", math.nan, "must be a finite number")]:
            if hasattr(defaults, key):
                with pytest.raises(ValueError, match=re.escape(f"algo.{key} {message}")):
                    check_hyperparameters(dataclasses.replace(defaults, **{key: bad}))


def _build(tmp_path, *overrides):
    from rlrun.run import Run

    cfg = compose(["log.progress=none", "log.tensorboard=false", "eval.episodes=1", *overrides])
    return Run(OmegaConf.to_object(cfg), tmp_path, OmegaConf.to_yaml(cfg, resolve=True))


@pytest.mark.parametrize(("overrides", "message"), [
    (["algo=td3", "env=pendulum", "total_steps=1000"], "total_steps=1000 ≤ algo.learning_starts=1000"),
    (["algo=dqn", "env=cartpole", "algo.gradient_steps=0"], "algo.gradient_steps=0 trains nothing"),
    (["algo=trpo", "env=pendulum", "algo.n_critic_updates=-3"], "n_critic_updates = 0 would never fit the critic"),
    (["algo=sac", "env=pendulum", "algo.alpha=nan"], "algo.alpha, algo.n_critics and algo.target_update_interval"),
    (["algo=td3", "env=pendulum", "algo.noise=ou", "algo.noise_theta=nan"], "OU noise needs theta > 0"),
    (["algo=dqn", "env=cartpole", "stop_at_return=nan"], "stop_at_return=nan would never stop the run"),
])
def test_settings_that_would_train_nothing_or_on_nan_are_refused_before_training(tmp_path, overrides, message):
    """Each of these ran: a run "completed" without one gradient step, NaN noise or temperature failed at the first
    loss (found by a fuzz review)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        _build(tmp_path, *overrides)
    assert not (tmp_path / "checkpoints").exists()


def test_ppo_with_a_batch_of_one_trains(tmp_path):
    """One env, one step per rollout: the explained variance of one return is NaN (no variance), a diagnostic that
    stopped the run as a 'non-finite loss' at step 1."""
    run = _build(tmp_path, "algo=ppo", "env=cartpole", "total_steps=20", "algo.num_envs=1", "algo.num_steps=1",
                 "algo.minibatch_size=1")
    summary = run.train()
    assert summary["status"] == "completed" and summary["steps_done"] == 20


def test_a_budget_below_one_iteration_says_how_many_steps_the_run_takes(tmp_path, capsys):
    """PPO collects whole rollouts: total_steps=1 ran 2,048 steps without a word."""
    run = _build(tmp_path, "algo=ppo", "env=cartpole", "total_steps=1", "algo.num_envs=2", "algo.num_steps=16",
                 "algo.minibatch_size=16", "log.progress=plain")
    assert ("total_steps=1 is less than one iteration of ppo, algo.num_envs × algo.num_steps = 2 × 16 = 32 env "
            "steps, which it collects whole: this run takes 32") in capsys.readouterr().out
    assert run.train()["steps_done"] == 32


@pytest.mark.parametrize("overrides, expected", [
    (["algo=td3", "env=pendulum", "total_steps=103", "algo.learning_starts=100", "algo.policy_delay=5"],
     "the actor and the target networks move once every algo.policy_delay=5 gradient steps, but this run takes "
     "about 3 (total_steps=103): they never move"),
    (["algo=sac", "env=pendulum", "total_steps=110", "algo.learning_starts=100", "algo.target_update_interval=20",
      "algo.train_freq=2", "algo.gradient_steps=-1"],
     "the target critics move once every algo.target_update_interval=20 gradient steps, but this run takes about "
     "10 (total_steps=110): they never move"),
    (["algo=dqn", "env=cartpole", "total_steps=200", "algo.learning_starts=0", "algo.target_update_interval=250"],
     "the target network is updated every algo.target_update_interval=250 env steps, but total_steps=200: it "
     "stays at its initial weights"),
])
def test_a_budget_that_ends_before_a_periodic_update_is_warned(overrides, expected):
    from rlrun.run import check_budget

    assert expected in check_budget(OmegaConf.to_object(compose(overrides)))
    longer = [o for o in overrides if not o.startswith("total_steps=")] + ["total_steps=100000"]
    assert check_budget(OmegaConf.to_object(compose(longer))) == []
