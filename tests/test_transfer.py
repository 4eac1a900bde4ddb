"""Transfer learning (rlrun/transfer.py) and its metrics (rlrun/transfer_metrics.py), with tiny budgets."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import rlrun
from omegaconf import OmegaConf

from rlrun.checkpoint import CheckpointError, load_checkpoint
from rlrun.config import compose
from rlrun.run import Run, RunInterrupted
from rlrun.transfer import TransferError, read_report, regroup_optimizer
from rlrun.transfer_metrics import area_above, evaluate, main, markdown_table, time_to_threshold

PPO = ["algo=ppo", "network.hidden=[16,16]", "network.activation=tanh", "algo.num_envs=2", "algo.num_steps=32",
       "algo.minibatch_size=32", "algo.update_epochs=2", "eval.every_steps=0", "eval.episodes=1",
       "log.tensorboard=false", "log.progress=none"]
CARTPOLE = [*PPO, "env=cartpole"]


def build_run(run_dir: Path, *overrides: str) -> Run:
    cfg = compose(list(overrides))
    return Run(OmegaConf.to_object(cfg), run_dir, OmegaConf.to_yaml(cfg, resolve=True))


def model(run_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(run_dir) / "checkpoints" / f"{name}.pt")["model"]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A PPO run on CartPole (its best.pt is what a run directory source means)."""
    run_dir = tmp_path_factory.mktemp("source")
    build_run(run_dir, *CARTPOLE, "total_steps=256", "seed=7").train()
    return run_dir


@pytest.fixture(scope="module")
def lunar_source(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("lunar_source")
    build_run(run_dir, *PPO, "env=lunarlander", "algo.normalize_obs=false", "algo.normalize_reward=false",
              "total_steps=128", "eval.episodes=1").train()
    return run_dir


def test_freeze_keeps_frozen_layers_bit_equal_and_trains_the_rest(source, tmp_path):
    run = build_run(tmp_path, *CARTPOLE, "total_steps=512", "transfer=freeze", f"transfer.source={source}",
                    "transfer.freeze_layers=1")
    frozen = [p for name, p in run.agent.actor.named_parameters() if name.startswith("body.0.")]
    assert frozen and not any(p.requires_grad for p in frozen)
    in_optimizer = {id(p) for g in run.agent.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in frozen)
    run.train()
    src, out = model(source, "best"), model(tmp_path)
    report = read_report(tmp_path)
    expected_frozen = ["actor.body.0.weight", "actor.body.0.bias", "critic.body.0.weight", "critic.body.0.bias"]
    assert report["frozen"] == expected_frozen
    assert sorted(report["loaded"]) == sorted(src)  # same algorithm, same shapes: everything loads
    assert report["missing"] == [] and report["shape_mismatch"] == []
    for name in expected_frozen:
        assert torch.equal(out[name], src[name]), name
    for name in ("actor.body.2.weight", "actor.head.weight", "critic.body.2.weight", "critic.head.weight"):
        assert not torch.equal(out[name], src[name]), f"{name} did not train"
    # the report's names are the checkpoint's
    assert set(report["loaded"]) <= set(out)


def test_param_groups_carry_the_configured_learning_rates(source, tmp_path):
    run = build_run(tmp_path / "a", *CARTPOLE, "total_steps=256", "algo.learning_rate=1e-3", "algo.anneal_lr=true",
                    "transfer=layerwise", f"transfer.source={source}", "transfer.lr_scales=[0.1,0.5,2.0]")
    groups = {tuple(g["params"]): g for g in run.transfer.param_groups()}
    by_name = {name: (g["lr"], g["lr_scale"]) for names, g in groups.items() for name in names}
    assert by_name["actor.body.0.weight"] == pytest.approx((1e-4, 0.1))
    assert by_name["critic.body.2.bias"] == pytest.approx((5e-4, 0.5))
    assert by_name["actor.head.weight"] == pytest.approx((2e-3, 2.0))
    assert by_name["critic.head.bias"] == pytest.approx((2e-3, 2.0))  # the last value is every head's
    run.train()  # annealing keeps each group's multiplier
    lrs = {g["lr_scale"]: g["lr"] for g in run.agent.optimizer.param_groups}
    base = lrs[1.0] if 1.0 in lrs else lrs[2.0] / 2.0
    for scale, lr in lrs.items():
        assert lr == pytest.approx(base * scale)
    report = json.loads((tmp_path / "a" / "transfer_report.json").read_text())
    assert {g["lr_scale"] for g in report["param_groups"]} == {0.1, 0.5, 2.0}

    run = build_run(tmp_path / "b", *CARTPOLE, "total_steps=64", "algo.learning_rate=1e-3", "transfer=layerwise",
                    f"transfer.source={source}", "transfer.layer_decay=0.5", "transfer.lr_scale=0.1")
    by_name = {n: g["lr"] for g in run.transfer.param_groups() for n in g["params"]}
    assert by_name["actor.body.0.weight"] == pytest.approx(1e-3 * 0.1 * 0.25)
    assert by_name["actor.body.2.weight"] == pytest.approx(1e-3 * 0.1 * 0.5)
    assert by_name["actor.head.weight"] == pytest.approx(1e-3 * 0.1)


def test_freezing_more_layers_than_the_body_has_is_refused_clearly(source, tmp_path):
    common = [*CARTPOLE, "total_steps=64", "transfer=freeze", f"transfer.source={source}"]
    with pytest.raises(TransferError, match="freeze_layers=3, but .* has 2 hidden layers"):
        build_run(tmp_path / "a", *common, "transfer.freeze_layers=3")
    build_run(tmp_path / "b", *common, "transfer.freeze_layers=2")  # the whole body: allowed


@pytest.mark.parametrize("unfreeze", [[], ["transfer.unfreeze_at_step=32"]])
def test_freezing_every_trained_layer_is_refused_clearly(source, tmp_path, unfreeze):
    """lr_scales all 0: PPO's loss would need no gradient (a torch error at the first update, found by a fuzz
    review), and until unfreeze_at_step nothing would learn either. One trainable layer is enough."""
    common = [*CARTPOLE, "total_steps=64", "transfer=layerwise", f"transfer.source={source}", *unfreeze]
    with pytest.raises(TransferError, match="freezes every layer that this algorithm trains"):
        build_run(tmp_path / "a", *common, "transfer.lr_scales=[0,0,0]")
    build_run(tmp_path / "b", *common, "transfer.lr_scales=[0,0,1]").train()  # the heads train: allowed


def test_regroup_optimizer_drops_frozen_and_splits_by_scale():
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    opt = torch.optim.Adam([a, b, c], lr=0.01, eps=1e-5)
    regroup_optimizer(opt, {a: None, b: 0.5})
    assert [(g["lr"], g["lr_scale"], len(g["params"]), g["eps"]) for g in opt.param_groups] == \
        [(0.005, 0.5, 1, 1e-5), (0.01, 1.0, 1, 1e-5)]
    assert all(p is not a for g in opt.param_groups for p in g["params"])


def test_new_action_space_needs_reinit_head(lunar_source, tmp_path):
    common = [*PPO, "env=lunarlander_continuous", "algo.normalize_obs=false", "algo.normalize_reward=false",
              "total_steps=64", "transfer=finetune", f"transfer.source={lunar_source}"]
    with pytest.raises(TransferError, match="reinit_head=true"):
        build_run(tmp_path / "a", *common)
    run = build_run(tmp_path / "b", *common, "transfer.reinit_head=true")
    report = run.transfer.report
    src = model(lunar_source, "best")
    assert sorted(report.reinitialised) == ["actor.head.bias", "actor.head.weight", "critic.head.bias",
                                             "critic.head.weight"]
    assert "actor.log_std" in report.missing  # the Gaussian actor's own parameter has no source
    assert run.agent.actor.head.weight.shape == (2, 16)  # LunarLanderContinuous: 2 actions, not 4
    assert torch.equal(run.agent.actor.body[0].weight, src["actor.body.0.weight"])
    assert not torch.equal(run.agent.critic.head.weight, src["critic.head.weight"])  # fresh, not the source's
    run.train()


def test_freeze_leaves_freshly_initialised_tensors_trainable(source, tmp_path):
    """CartPole (4 observations) → Pendulum (3): the first layer's weights cannot come from the source, so they
    stay fresh and must train even though transfer=freeze freezes that layer's loaded bias."""
    run = build_run(tmp_path, *PPO, "env=pendulum", "total_steps=64", "transfer=freeze",
                    f"transfer.source={source}", "transfer.freeze_layers=1", "transfer.reinit_mismatched=true",
                    "transfer.reinit_head=true")
    report = run.transfer.report
    assert {"actor.body.0.weight", "critic.body.0.weight"} <= set(report.reinitialised)
    assert "actor.body.0.weight" not in report.frozen and "actor.body.0.bias" in report.frozen
    assert run.agent.actor.body[0].weight.requires_grad and not run.agent.actor.body[0].bias.requires_grad
    before = run.agent.actor.body[0].weight.detach().clone()
    run.train()
    assert not torch.equal(run.agent.actor.body[0].weight, before)


def test_dqn_body_feeds_both_ppo_networks(tmp_path):
    dqn = tmp_path / "dqn"
    build_run(dqn, "algo=dqn", "env=cartpole", "network.hidden=[16,16]", "network.activation=tanh",
              "total_steps=200", "algo.learning_starts=100", "eval.every_steps=0", "eval.episodes=1",
              "log.tensorboard=false", "log.progress=none").train()
    run = build_run(tmp_path / "ppo", *CARTPOLE, "total_steps=64", "transfer=finetune", f"transfer.source={dqn}",
                    "transfer.checkpoint=last", "transfer.reinit_mismatched=true")
    report = run.transfer.report
    assert report.mapping == {"actor": "q", "critic": "q"}
    assert [m["name"] for m in report.shape_mismatch] == ["critic.head.weight", "critic.head.bias"]
    src = model(dqn)
    assert torch.equal(run.agent.critic.body[2].weight, src["q.body.2.weight"])
    assert torch.equal(run.agent.actor.head.weight, src["q.head.weight"])
    assert "q_target.body.0.weight" in report.unused_source
    # an explicit map for the actor; the critic keeps the default
    run = build_run(tmp_path / "ppo2", *CARTPOLE, "total_steps=64", "transfer=finetune", f"transfer.source={dqn}",
                    "transfer.checkpoint=last", "transfer.reinit_mismatched=true", "transfer.map={actor:q_target}")
    assert run.transfer.report.mapping == {"actor": "q_target", "critic": "q"}
    assert torch.equal(run.agent.actor.body[0].weight, src["q_target.body.0.weight"])


def test_observation_normalisation_comes_with_the_weights(tmp_path):
    """best.pt carries the statistics its policy acted with; one from before that (weights only) falls back to
    the statistics in last.pt beside it."""
    src = tmp_path / "src"
    build_run(src, *CARTPOLE, "algo.normalize_obs=true", "total_steps=128").train()
    run = build_run(tmp_path / "dst", *CARTPOLE, "algo.normalize_obs=true", "total_steps=64",
                    "transfer=finetune", f"transfer.source={src}")
    stats = load_checkpoint(src / "checkpoints" / "best.pt")["obs_norm"]
    assert stats["mean"].abs().sum() > 0  # real statistics, not the initial zeros
    assert np.array_equal(run.agent.parts.obs_norm.rms.mean, stats["mean"].numpy())
    assert run.transfer.report.obs_norm_from.endswith("best.pt")

    best = src / "checkpoints" / "best.pt"
    legacy = load_checkpoint(best)
    del legacy["obs_norm"]
    torch.save(legacy, best)
    run = build_run(tmp_path / "dst_legacy", *CARTPOLE, "algo.normalize_obs=true", "total_steps=64",
                    "transfer=finetune", f"transfer.source={src}")
    last_stats = load_checkpoint(src / "checkpoints" / "last.pt")["agent_state"]["obs_norm"]
    assert np.array_equal(run.agent.parts.obs_norm.rms.mean, last_stats["mean"].numpy())
    assert run.transfer.report.obs_norm_from.endswith("last.pt")
    fresh = build_run(tmp_path / "off", *CARTPOLE, "algo.normalize_obs=true", "total_steps=64",
                      "transfer=finetune", f"transfer.source={src}", "transfer.obs_norm=false")
    assert not fresh.agent.parts.obs_norm.rms.mean.any() and fresh.transfer.report.obs_norm_from is None


def test_shape_mismatch_fails_clearly_through_the_cli(source, tmp_path):
    args = [*CARTPOLE, "total_steps=64", "network.hidden=[32,32]", "transfer=finetune", f"transfer.source={source}"]
    proc = rlrun(tmp_path / "a", *args, check=False, timeout=120)
    assert proc.returncode != 0
    assert "shape mismatch" in proc.stderr and "Traceback" not in proc.stderr
    assert "actor.body.0.weight" in proc.stderr
    proc = rlrun(tmp_path / "b", *args, "transfer.reinit_mismatched=true", timeout=120)
    report = read_report(tmp_path / "b")
    assert report["loaded"] == ["actor.head.bias", "critic.head.bias"]  # the only shapes that still fit
    assert "actor.body.0.weight" in [m["name"] for m in report["shape_mismatch"]]


def test_missing_or_malicious_source_is_refused(tmp_path):
    proc = rlrun(tmp_path / "a", *CARTPOLE, "total_steps=64", "transfer=finetune",
                 f"transfer.source={tmp_path / 'nowhere'}", check=False, timeout=120)
    assert proc.returncode != 0 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "PWNED",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "rlrun-checkpoint-v1", "model": {"actor.body.0.weight": Evil()}}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        build_run(tmp_path / "b", *CARTPOLE, "total_steps=64", "transfer=finetune", f"transfer.source={evil}")
    proc = rlrun(tmp_path / "c", *CARTPOLE, "total_steps=64", "transfer=finetune", f"transfer.source={evil}",
                 check=False, timeout=120)
    assert proc.returncode != 0 and "refused" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "PWNED").exists()


def test_freeze_with_unfreeze_survives_resume_bit_exactly(source, tmp_path):
    """Interrupted at step 128, resumed; unfreezes at 192 in both: the same weights as a straight run."""
    args = [*CARTPOLE, "total_steps=320", "checkpoint.every_steps=64", "transfer=freeze",
            f"transfer.source={source}", "transfer.freeze_layers=2", "transfer.unfreeze_at_step=192"]
    straight = build_run(tmp_path / "straight", *args)
    straight.train()
    assert all(p.requires_grad for p in straight.agent.actor.parameters())
    src = model(source, "best")
    assert not torch.equal(model(tmp_path / "straight")["actor.body.0.weight"], src["actor.body.0.weight"])

    run = build_run(tmp_path / "cut", *args)
    train_iteration = run.agent.train_iteration

    def stop_at_128(runner):
        metrics = train_iteration(runner)
        if runner.global_step >= 128:
            run._stop_signal = signal.SIGTERM
        return metrics

    run.agent.train_iteration = stop_at_128
    with pytest.raises(RunInterrupted):
        run.train()
    at_cut = model(tmp_path / "cut")
    assert torch.equal(at_cut["actor.body.2.weight"], src["actor.body.2.weight"])  # still frozen at 128
    without_transfer = [a for a in args if not a.startswith("transfer")]
    with pytest.raises(CheckpointError, match="transfer=freeze run"):
        build_run(tmp_path / "cut", *without_transfer, "resume=auto")
    resumed = build_run(tmp_path / "cut", *args, "resume=auto")
    assert not resumed.agent.actor.body[0].weight.requires_grad
    resumed.train()
    final, expected = model(tmp_path / "cut"), model(tmp_path / "straight")
    for name in expected:
        assert torch.equal(final[name], expected[name]), name


# -- metrics ---------------------------------------------------------------------------------------------
def _write_run(run_dir: Path, seed: int, steps: list[int], returns: list[float], threshold: float = 15.0) -> Path:
    run_dir.mkdir(parents=True)
    rows = "\n".join(f"{s},{s / 100},{r},0.0,100" for s, r in zip(steps, returns))
    (run_dir / "evaluations.csv").write_text(f"step,wall_time_s,return_mean,return_std,length_mean\n{rows}\n")
    (run_dir / "summary.json").write_text(json.dumps({"seed": seed, "reward_threshold": threshold}))
    return run_dir


def test_metrics_against_hand_computed_curves(tmp_path, capsys):
    steps = [10, 20, 30]
    _write_run(tmp_path / "scratch" / "s1", 1, steps, [0, 10, 20])
    _write_run(tmp_path / "scratch" / "s2", 2, steps, [0, 0, 0])
    _write_run(tmp_path / "good" / "s1", 1, steps, [10, 20, 20])
    _write_run(tmp_path / "good" / "s2", 2, steps, [0, 20, 20])
    _write_run(tmp_path / "bad" / "s1", 1, steps, [-10, 0, 10])
    _write_run(tmp_path / "bad" / "s2", 2, steps, [0, 0, 10])
    result = evaluate([tmp_path / "scratch"], {"good": [tmp_path / "good"], "bad": [tmp_path / "bad"]}, floor=-10.0)
    good = result["groups"]["good"]["per_seed"]
    # seed 1, above floor -10: scratch areas 10·(10+20)/2 + 10·(20+30)/2 = 400, transfer 10·(20+30)/2 + 10·30 = 550
    assert good[0]["jumpstart"] == 10 and good[0]["area_scratch"] == 400 and good[0]["area_transfer"] == 550
    assert good[0]["area_ratio"] == pytest.approx(0.375)
    assert good[0]["time_to_threshold_scratch"] == 30 and good[0]["time_to_threshold_transfer"] == 20
    assert good[0]["steps_saved"] == 10 and not good[0]["steps_saved_is_bound"]
    # seed 2: scratch never reaches 15 (counted as its last step, a bound), transfer at 20;
    # areas 10·10 + 10·10 = 200 and 10·(10+30)/2 + 10·30 = 500
    assert good[1]["time_to_threshold_scratch"] is None and good[1]["steps_saved"] == 10
    assert good[1]["steps_saved_is_bound"] and good[1]["area_ratio"] == pytest.approx((500 - 200) / 200)
    mean = result["groups"]["good"]["mean"]
    assert mean["jumpstart"] == (5.0, 5.0) and not mean["negative_transfer"] and mean["reached_threshold"] == 2
    bad = result["groups"]["bad"]
    assert bad["mean"]["negative_transfer"] and bad["mean"]["negative_transfer_seeds"] == 1
    assert bad["per_seed"][0]["jumpstart"] == -10 and bad["per_seed"][0]["final_difference"] == -10
    assert "**yes**" in markdown_table(result)

    assert main(["--scratch", str(tmp_path / "scratch"), "--transfer", f"good={tmp_path / 'good'}",
                 "--floor", "-10", "--json", str(tmp_path / "m.json")]) == 0
    assert "| good |" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["groups"]["good"]["mean"]["area_ratio"][0] == \
        pytest.approx((0.375 + 1.5) / 2)
    (tmp_path / "broken" / "s1").mkdir(parents=True)
    (tmp_path / "broken" / "s1" / "evaluations.csv").write_text("step,wall_time_s,return_mean\n10,1.0,\n")
    assert main(["--scratch", str(tmp_path / "scratch"), "--transfer", str(tmp_path / "broken")]) == 2
    assert "not a readable evaluations.csv" in capsys.readouterr().err
    _write_run(tmp_path / "lonely" / "s9", 9, steps, [0, 0, 0])
    assert main(["--scratch", str(tmp_path / "scratch"), "--transfer", str(tmp_path / "lonely")]) == 2
    assert "same seed" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")  # --json under a path that is a file: a one-line error, exit 2
    assert main(["--scratch", str(tmp_path / "scratch"), "--transfer", f"good={tmp_path / 'good'}",
                 "--json", str(tmp_path / "a_file" / "m.json")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_metric_helpers():
    assert time_to_threshold(np.array([1.0, 2.0, 3.0]), np.array([0.0, 5.0, 4.0]), 5.0) == 2.0
    assert time_to_threshold(np.array([1.0]), np.array([0.0]), 5.0) is None
    # interpolated onto a finer grid, a straight line keeps its area
    assert area_above(np.array([0.0, 10.0]), np.array([0.0, 10.0]), 0.0, 0.0, 10.0, np.array([5.0])) == 50.0


@pytest.mark.parametrize("algo, env", [("dqn", "cartpole"), ("a2c", "cartpole"), ("vpg", "cartpole"),
                                       ("sac", "pendulum"), ("td3", "pendulum"), ("ddpg", "pendulum")])
def test_freeze_works_for_every_algorithm_with_an_optimizer(algo, env, tmp_path):
    args = [f"algo={algo}", f"env={env}", "network.hidden=[16,16]", "total_steps=300", "eval.every_steps=0",
            "eval.episodes=1", "log.tensorboard=false", "log.progress=none"]
    if algo in ("dqn", "sac", "td3", "ddpg"):
        args.append("algo.learning_starts=50")
    build_run(tmp_path / "src", *args).train()
    run = build_run(tmp_path / "dst", *args, "transfer=freeze", f"transfer.source={tmp_path / 'src'}",
                    "transfer.checkpoint=last")
    run.train()
    frozen = run.transfer.report.frozen
    assert frozen and all(".body.0." in name for name in frozen)
    src, out = model(tmp_path / "src"), model(tmp_path / "dst")
    for name in frozen:
        assert torch.equal(out[name], src[name]), name
    moved = [name for name in out if ".body.2." in name and name in src and not torch.equal(out[name], src[name])]
    assert moved, "nothing above the frozen layer trained"


@pytest.mark.parametrize("options", [["transfer=freeze"], ["transfer=finetune", "transfer.lr_scale=0.5"]])
def test_trpo_actor_cannot_be_frozen_or_lr_scaled(source, tmp_path, options):
    """TRPO's actor takes natural-gradient steps, not optimizer steps: a scaled LR would reach only its critic."""
    with pytest.raises(TransferError, match="actor.body.0.weight is not trained by a torch optimizer"):
        build_run(tmp_path, *[a for a in CARTPOLE if not a.startswith("algo.update")], "algo=trpo",
                  "total_steps=64", *options, f"transfer.source={source}")


def test_a_trpo_transfer_run_started_with_an_lr_scale_before_the_check_still_resumes(source, tmp_path):
    """Before the check, a TRPO run with transfer.lr_scale=0.5 was accepted (the scale reached its critic only).
    Such a run directory resumes as it was started; only a fresh one is refused."""
    trpo = [*[a for a in CARTPOLE if not a.startswith("algo.update")], "algo=trpo", "transfer=finetune",
            f"transfer.source={source}"]
    build_run(tmp_path, *trpo, "total_steps=64").train()
    last = tmp_path / "checkpoints" / "last.pt"
    payload = torch.load(last, weights_only=True)
    stored = OmegaConf.create(payload["config"])
    stored.transfer.lr_scale = 0.5  # as the older version stored it
    payload["config"] = OmegaConf.to_yaml(stored)
    torch.save(payload, last)
    resumed = build_run(tmp_path, *trpo, "transfer.lr_scale=0.5", "total_steps=128", "resume=auto")
    resumed.train()
    assert load_checkpoint(last)["step"] >= 128


def test_feature_extract_freezes_every_body_layer_and_trains_new_heads(lunar_source, tmp_path):
    run = build_run(tmp_path, *PPO, "env=lunarlander_continuous", "algo.normalize_obs=false",
                    "algo.normalize_reward=false", "total_steps=128", "transfer=feature_extract",
                    f"transfer.source={lunar_source}")
    report = run.transfer.report
    assert sorted(report.frozen) == sorted(n for n in report.loaded if ".body." in n) and len(report.frozen) == 8
    heads_before = {n: p.detach().clone() for n, p in run.transfer.params.items() if ".head." in n}
    run.train()
    src, out = model(lunar_source, "best"), model(tmp_path)
    assert all(torch.equal(out[n], src[n]) for n in report.frozen)
    assert all(not torch.equal(out[n], heads_before[n]) for n in heads_before if n.endswith("weight"))


@pytest.mark.parametrize("option", ["transfer.lr_scale=nan", "transfer.lr_scale=inf"])
def test_a_non_finite_lr_scale_is_refused_before_training(source, tmp_path, option):
    with pytest.raises(TransferError, match="lr_scale must be a positive number"):
        build_run(tmp_path, *CARTPOLE, "total_steps=64", "transfer=finetune", f"transfer.source={source}", option)
    with pytest.raises(TransferError, match="lr_scales must be >= 0"):
        build_run(tmp_path, *CARTPOLE, "total_steps=64", "transfer=layerwise", f"transfer.source={source}",
                  "transfer.lr_scales=[nan,1]")


@pytest.mark.parametrize("damage", ["not json", json.dumps([1, 2]),
                                    json.dumps({"source": "x", "kind": "freeze", "mapping": "q", "loaded": []}),
                                    json.dumps({"source": "x", "kind": "freeze", "mapping": {"actor": "actor"},
                                                "loaded": []})])  # the last lacks source_algo, …
def test_resuming_a_transfer_run_with_a_damaged_report_names_the_file(source, tmp_path, damage):
    args = [*CARTPOLE, "total_steps=128", "transfer=freeze", "transfer.freeze_layers=1", f"transfer.source={source}"]
    build_run(tmp_path, *args).train()
    (tmp_path / "transfer_report.json").write_text(damage)
    with pytest.raises(CheckpointError, match="transfer_report.json (is damaged|is not readable JSON)"):
        build_run(tmp_path, *args[:-2], "total_steps=256", "resume=auto",
                  *[a for a in args if a.startswith("transfer.")])


@pytest.mark.parametrize("damage", ["mapping", "loaded"])
def test_a_report_naming_networks_or_tensors_this_agent_lacks_is_refused_naming_the_file(source, tmp_path, damage):
    """Well-formed JSON of the right types whose content does not fit the agent: one paragraph naming the file
    (it was torch's "loaded state dict has a different number of parameter groups")."""
    args = [*CARTPOLE, "total_steps=128", "transfer=freeze", "transfer.freeze_layers=1", f"transfer.source={source}"]
    build_run(tmp_path, *args).train()
    report = read_report(tmp_path)
    if damage == "mapping":
        report["mapping"] = {"zzz": "actor"}
    else:
        report["loaded"] = ["nope.weight"]
    (tmp_path / "transfer_report.json").write_text(json.dumps(report))
    with pytest.raises(CheckpointError, match="transfer_report.json does not describe this PPOAgent's networks"):
        build_run(tmp_path, *[a for a in args if a != "total_steps=128"], "total_steps=256", "resume=auto")


def test_a_refused_resume_leaves_no_report_and_a_plain_run_replaces_a_stale_one(source, tmp_path):
    """A transfer run's resume into a new directory that is refused leaves that directory without a report; a
    report left there anyway (a refused run of an older version, a kill before the first checkpoint) is removed
    by a plain run, whose own resume would otherwise be refused as a transfer run's."""
    args = [*CARTPOLE, "total_steps=128", "transfer=freeze", "transfer.freeze_layers=1", f"transfer.source={source}"]
    first = tmp_path / "first"
    build_run(first, *args).train()
    with pytest.raises(CheckpointError, match="with another seed"):  # refused after the report was read
        build_run(tmp_path / "new", *args, f"resume={first}", "seed=123")
    assert not (tmp_path / "new" / "transfer_report.json").exists()

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "transfer_report.json").write_text((first / "transfer_report.json").read_text())
    build_run(plain, *CARTPOLE, "total_steps=128").train()
    assert not (plain / "transfer_report.json").exists()
    resumed = build_run(plain, *CARTPOLE, "total_steps=256", "resume=auto")
    resumed.train()
    assert resumed.runner.global_step == 256


def test_observation_statistics_of_another_shape_are_reported_not_loaded(tmp_path):
    """A normalising PPO source on LunarLander (8 observations) feeding Acrobot (6): its statistics cannot be
    used, and the report says so (the first layer is kept fresh with reinit_mismatched)."""
    src = tmp_path / "src"
    build_run(src, *PPO, "env=lunarlander", "algo.normalize_obs=true", "total_steps=128").train()
    run = build_run(tmp_path / "dst", *PPO, "env=acrobot", "algo.normalize_obs=true", "total_steps=64",
                    "transfer=finetune", f"transfer.source={src}", "transfer.reinit_mismatched=true")
    report = run.transfer.report
    assert report.obs_norm_from is None
    assert report.obs_norm_skipped.endswith("holds statistics of shape (8,), this env observes shape (6,)")
    assert "observation normalisation NOT loaded" in report.text()
    assert read_report(tmp_path / "dst")["obs_norm_skipped"] == report.obs_norm_skipped


def test_a_source_s_statistics_unused_by_a_run_that_does_not_normalise_are_reported(tmp_path):
    """The weights were trained on normalised observations; a run without normalisation feeds them raw ones: the
    report says the statistics were not loaded, and why (it said nothing)."""
    src = tmp_path / "src"
    build_run(src, *CARTPOLE, "algo.normalize_obs=true", "total_steps=128").train()
    run = build_run(tmp_path / "dst", *CARTPOLE, "algo.normalize_obs=false", "total_steps=64",
                    "transfer=finetune", f"transfer.source={src}")
    report = run.transfer.report
    assert report.obs_norm_from is None
    assert "best.pt holds the source's statistics, but this run does not normalise" in report.obs_norm_skipped
    assert "observation normalisation NOT loaded" in report.text()


def test_damaged_observation_statistics_in_a_source_are_refused(tmp_path):
    src = tmp_path / "src"
    build_run(src, *PPO, "env=lunarlander", "algo.normalize_obs=true", "total_steps=128").train()
    for name in ("best", "last"):
        payload = load_checkpoint(src / "checkpoints" / f"{name}.pt")
        stats = payload["obs_norm"] if "obs_norm" in payload else payload["agent_state"]["obs_norm"]
        del stats["mean"]
        torch.save(payload, src / "checkpoints" / f"{name}.pt")
    with pytest.raises(CheckpointError, match="best.pt holds damaged observation-normalisation statistics"):
        build_run(tmp_path / "dst", *PPO, "env=lunarlander", "algo.normalize_obs=true", "total_steps=64",
                  "transfer=finetune", f"transfer.source={src}")


def test_transfer_none_with_a_source_says_it_is_not_loaded(source, tmp_path, capsys):
    """Allowed (a sweep transfer=none,finetune transfer.source=… compares against scratch), but said."""
    run = build_run(tmp_path, *[a for a in CARTPOLE if a != "log.progress=none"], "log.progress=plain",
                    "total_steps=64", f"transfer.source={source}")
    assert run.transfer is None
    assert f"transfer=none: transfer.source={source} is not loaded" in capsys.readouterr().out


def test_a_source_without_the_chosen_checkpoint_or_a_sweep_dir_is_refused_with_what_would_work(source, tmp_path):
    import shutil

    only_last = tmp_path / "sweep" / "0"
    shutil.copytree(source, only_last)
    (only_last / "checkpoints" / "best.pt").unlink()
    with pytest.raises(TransferError, match=r"has no checkpoints/best.pt \(it has last.pt\); "
                                            r"transfer.checkpoint=last starts from its last.pt"):
        build_run(tmp_path / "a", *CARTPOLE, "transfer=finetune", f"transfer.source={only_last}")
    with pytest.raises(TransferError, match=f"is not a run directory .* transfer.source={only_last}$"):
        build_run(tmp_path / "b", *CARTPOLE, "transfer=finetune", f"transfer.source={tmp_path / 'sweep'}")
    run = build_run(tmp_path / "c", *CARTPOLE, "transfer=finetune", f"transfer.source={only_last}",
                    "transfer.checkpoint=last")
    assert run.transfer.report.source.endswith("last.pt")
