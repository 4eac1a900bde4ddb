"""Multiruns through Hydra's own launchers and the Optuna sweeper, the k-seed objective, the sweep summary."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BIN, REPO, read_summary

from rlrun.files import RUNNING_MARKER
from rlrun.sweep import (
    STOP_MARKER,
    GracefulSweepStop,
    check_direction,
    find_runs,
    group_runs,
    objective_value,
    runs_in_progress,
    summarize,
)

# DQN on CartPole for a few hundred steps: seconds per job, enough to write every file a run writes.
TINY_DQN = ["env=cartpole", "total_steps=300", "eval.every_steps=150", "eval.episodes=1",
            "algo.learning_starts=100", "algo.train_freq=50", "algo.gradient_steps=2", "algo.batch_size=16",
            "log.tensorboard=false", "log.progress=none"]
TINY_PPO = ["total_steps=256", "algo.num_envs=2", "algo.num_steps=64", "algo.minibatch_size=32",
            "algo.update_epochs=1", "eval.every_steps=0", "eval.episodes=1", "log.tensorboard=false",
            "log.progress=none"]


def multirun(sweep_dir: Path, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    args = [str(BIN / "rlrun"), "-m", f"hydra.sweep.dir={sweep_dir}", *overrides]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-4000:]}")
    return proc


def refused(*args: str, status: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    """`rlrun *args`, which must end with exit `status` (2: bad input) and one paragraph, no traceback."""
    proc = subprocess.run([str(BIN / "rlrun"), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr
    return proc


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- pure functions ------------------------------------------------------------------------------------------
def test_objective_value_means_over_seeds_and_counts_unsolved_past_the_budget():
    runs = [{"best_return_mean": 100.0, "final_return_mean": 80.0, "solved_at_step": 4000, "total_steps": 10000,
             "solved_at_wall_time_s": 2.0, "wall_time_s": 5.0},
            {"best_return_mean": 300.0, "final_return_mean": 40.0, "solved_at_step": None, "total_steps": 10000,
             "solved_at_wall_time_s": None, "wall_time_s": 9.0}]
    assert objective_value(runs, "best_return") == 200.0
    assert objective_value(runs, "final_return") == 60.0
    assert objective_value(runs, "solved_at_step") == (4000 + 10001) / 2
    # rollouts overshoot total_steps: solved at the final evaluation (10240) still beats never solved (10241)
    late = {"solved_at_step": 10240, "steps_done": 10240, "total_steps": 10000}
    never = {"solved_at_step": None, "steps_done": 10240, "total_steps": 10000}
    assert objective_value([late], "solved_at_step") < objective_value([never], "solved_at_step") == 10241
    assert objective_value(runs, "solved_at_wall_time_s") == (2.0 + 9.0) / 2
    assert math.isnan(objective_value([{"best_return_mean": None}], "best_return"))


def test_sweeper_direction_must_suit_the_metric():
    from hydra_plugins.hydra_optuna_sweeper.config import Direction

    check_direction("best_return", "maximize")
    check_direction("solved_at_step", Direction.minimize)
    check_direction("final_return", None)  # grid sweeps have no direction
    with pytest.raises(ValueError, match="set hydra.sweeper.direction=maximize"):
        check_direction("best_return", Direction.minimize)  # the Optuna sweeper's default
    with pytest.raises(ValueError, match="set hydra.sweeper.direction=minimize"):
        check_direction("solved_at_wall_time_s", "maximize")


def _fake_job(sweep: Path, name: str, overrides: list[str], seed: int, best: float, final: float,
              solved: int | None = None, sps: float = 100.0) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "env": {"id": "CartPole-v1"}}))
    (job / "summary.json").write_text(json.dumps({
        "algo": "dqn", "env_id": "CartPole-v1", "seed": seed, "total_steps": 1000, "steps_done": 1000,
        "wall_time_s": 10.0, "steps_per_second": sps, "final_return_mean": final, "best_return_mean": best,
        "solved_at_step": solved, "solved_at_wall_time_s": None if solved is None else solved / 100,
        "status": "completed", "reward_threshold": 475}))
    return job


def test_summary_groups_by_the_overrides_that_differ_minus_seed(tmp_path):
    # `rlrun -m algo=dqn,double_dqn seed=0,1 total_steps=1000`: total_steps is the same everywhere.
    values = {("dqn", 0): (10, 8, None), ("dqn", 1): (30, 20, 500), ("double_dqn", 0): (50, 50, 200),
              ("double_dqn", 1): (70, 60, 400)}
    for i, ((algo, seed), (best, final, solved)) in enumerate(values.items()):
        _fake_job(tmp_path, f"{i}_job", [f"algo={algo}", f"seed={seed}", "total_steps=1000"], seed, best, final,
                  solved)
    groups = group_runs(find_runs([tmp_path]))
    assert sorted(groups) == ["algo=double_dqn", "algo=dqn"]
    assert [r.seed for r in groups["algo=dqn"]] == [0, 1]
    rows, keys = summarize([tmp_path])
    assert keys == ["algo"]
    dqn = next(r for r in rows if r["configuration"] == "algo=dqn")
    assert dqn["runs"] == 2 and dqn["seeds"] == "0 1"
    assert dqn["best_return_mean"] == 20.0 and dqn["best_return_std"] == 10.0  # population std of 10, 30
    assert dqn["final_return_mean"] == 14.0 and dqn["final_return_std"] == 6.0
    assert dqn["solved_runs"] == 1 and dqn["solved_at_step_mean"] == 500.0
    double = next(r for r in rows if r["configuration"] == "algo=double_dqn")
    assert double["solved_runs"] == 2 and double["solved_at_step_mean"] == 300.0
    assert double["solved_at_step_std"] == 100.0


def test_the_sweep_table_into_a_closed_pipe_still_writes_the_summary(tmp_path):
    """`python -m rlrun.sweep DIR | head -1` (and a multirun's closing table): rich would exit with status 1 on the
    broken pipe; the table goes through print_line instead."""
    for seed in (0, 1):
        _fake_job(tmp_path, f"{seed}_job", [f"seed={seed}"], seed, 10.0 + seed, 5.0)
    proc = subprocess.Popen([sys.executable, "-m", "rlrun.sweep", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err, err
    assert len(read_csv(tmp_path / "sweep_summary.csv")) == 1


def test_summary_treats_spellings_of_one_value_alike(tmp_path):
    _fake_job(tmp_path, "a", ["network.hidden=[64,64]", "log.tensorboard=False", "seed=0"], 0, 1, 1)
    _fake_job(tmp_path, "b", ["network.hidden=[64, 64]", "log.tensorboard=false", "seed=1"], 1, 3, 3)
    _fake_job(tmp_path, "c", ["network.hidden=[128]", "seed=0"], 0, 5, 5)
    groups = group_runs(find_runs([tmp_path]))
    assert {label: len(runs) for label, runs in groups.items()} == \
        {"network.hidden=[64, 64]": 2, "network.hidden=[128]": 1}


# -- Hydra launchers -------------------------------------------------------------------------------------------
def _check_sweep(sweep_dir: Path, jobs: int, configurations: dict[str, int]) -> list[dict[str, str]]:
    summaries = sorted(sweep_dir.glob("*/summary.json"))
    assert len(summaries) == jobs, f"expected {jobs} summary.json in {sweep_dir}, found {summaries}"
    for path in summaries:
        summary = json.loads(path.read_text())
        assert summary["status"] == "completed" and summary["steps_done"] >= 300
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert {row["configuration"]: int(row["runs"]) for row in rows} == configurations
    for row in rows:
        assert row["best_return_mean"] != "" and float(row["steps_per_second_mean"]) > 0
    return rows


def test_joblib_multirun_of_four_jobs_writes_four_summaries_and_the_sweep_summary(tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = multirun(sweep_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "algo=dqn,double_dqn",
                    "seed=0,1", *TINY_DQN)
    _check_sweep(sweep_dir, 4, {"algo=dqn": 2, "algo=double_dqn": 2})
    assert "Joblib" in proc.stdout + proc.stderr  # it really went through hydra-joblib-launcher
    assert "algo=double_dqn" in proc.stdout and "sweep_summary.csv" in proc.stdout  # the rich table


def test_a_bad_job_in_a_multirun_is_reported_without_a_traceback(tmp_path):
    """The job's clear error when it stops, Hydra's one-line report of it at the end, a non-zero exit; the other
    job runs and the failed one leaves no .hydra/ (rlrun writes it only for an accepted run)."""
    sweep_dir = tmp_path / "sweep"
    args = [str(BIN / "rlrun"), "-m", f"hydra.sweep.dir={sweep_dir}", "algo=dqn", "algo.batch_size=0,16",
            *[o for o in TINY_DQN if not o.startswith("algo.batch_size=")]]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode != 0
    assert proc.stderr.count("rlrun error: algo.batch_size, algo.train_freq and algo.target_update_interval "
                             "must be > 0") == 2, proc.stderr
    assert "Error executing job with overrides" in proc.stderr and "Traceback" not in proc.stderr
    bad, good = sorted(path for path in sweep_dir.iterdir() if path.is_dir())
    assert not (bad / ".hydra").exists() and not (bad / "summary.json").exists()
    assert (good / ".hydra" / "overrides.yaml").exists() and read_summary(good)["status"] == "completed"


@pytest.mark.slow  # ~25 s, mostly submitit starting its workers
def test_a_failed_job_still_leaves_the_sweep_summary_of_the_others(tmp_path):
    """Hydra's sweeper raises on a failed job before its multirun end: the summary is kept after every job."""
    sweep_dir = tmp_path / "sweep"
    args = [str(BIN / "rlrun"), "-m", f"hydra.sweep.dir={sweep_dir}", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", "algo=sac,dqn", *TINY_DQN]  # SAC cannot act in CartPole
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode != 0 and "needs a continuous" in proc.stdout + proc.stderr
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert len(rows) == 1 and rows[0]["runs"] == "1" and rows[0]["statuses"] == "completed"
    assert not (tmp_path / "sweep_summary.csv").exists()  # written in the sweep dir, not above it


def test_submitit_local_multirun_of_two_jobs(tmp_path):
    sweep_dir = tmp_path / "sweep"
    multirun(sweep_dir, "hydra/launcher=submitit_local", "algo=dqn", "seed=0,1", *TINY_DQN)
    _check_sweep(sweep_dir, 2, {"all runs": 2})
    assert (sweep_dir / ".submitit").is_dir()  # submitit's own job folders


RAY_MISSING = importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None


@pytest.mark.slow  # ~30 s, mostly Ray starting a local instance
@pytest.mark.skipif(RAY_MISSING, reason="hydra-ray-launcher is not installed: pip install -e '.[ray]' "
                    "(make install does)")
def test_ray_launcher_on_a_local_ray_instance(tmp_path):
    sweep_dir = tmp_path / "sweep"
    multirun(sweep_dir, "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
             "+hydra.launcher.ray.init.include_dashboard=false", "algo=dqn", "seed=0,1",
             *TINY_DQN, timeout=400)
    _check_sweep(sweep_dir, 2, {"all runs": 2})


def test_a_sweep_whose_async_job_is_refused_while_being_built_ends(tmp_path):
    """The refused job's env worker processes are closed with it; the sweep ends with the job's error (it used to
    wait for ever at exit for workers that ignore SIGTERM)."""
    proc = subprocess.run([str(BIN / "rlrun"), "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "algo=ppo",
                           "env=cartpole", "env.vectorization=async", "algo.num_envs=2", "algo.num_steps=32",
                           "algo.minibatch_size=512", "total_steps=1000"],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode != 0 and "minibatch_size" in proc.stderr, proc.stderr
    assert "BrokenPipeError" not in proc.stderr and "EOFError" not in proc.stderr, proc.stderr


# -- Optuna ------------------------------------------------------------------------------------------------------
def _trials(db: Path, study: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=study, storage=f"sqlite:///{db}").trials


@pytest.mark.filterwarnings("ignore:Deprecated API features")  # optuna 2.10 on SQLAlchemy 1.4
def test_optuna_search_stores_its_study_and_an_interrupted_search_continues(tmp_path):
    sweep_dir = tmp_path / "search"
    common = ["hparams_search=ppo_cartpole", *TINY_PPO, "objective.seeds=2"]
    proc = multirun(sweep_dir, "hydra.sweeper.n_trials=3", *common)
    db = sweep_dir / "optuna.db"
    assert db.exists()
    trials = _trials(db, "ppo_cartpole")
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    # Each trial samples the architecture as well as the hyperparameters.
    assert all({"network.hidden", "network.activation", "algo.learning_rate"} <= set(t.params) for t in trials)
    trial_dirs = sorted(p.parent for p in sweep_dir.glob("*/objective.json"))
    assert len(trial_dirs) == 3
    for trial_dir in trial_dirs:  # k=2 seeds per trial; the trial's value is their mean
        objective = json.loads((trial_dir / "objective.json").read_text())
        assert objective["seeds"] == [0, 1] and objective["metric"] == "best_return"
        assert objective["mean"] == pytest.approx(sum(objective["values"]) / 2)
        assert len(list(trial_dir.glob("seed*/summary.json"))) == 2
    values = sorted(t.value for t in trials)
    assert values == pytest.approx(sorted(json.loads((d / "objective.json").read_text())["mean"]
                                          for d in trial_dirs))
    assert "Best value" in proc.stdout + proc.stderr
    assert len(read_csv(sweep_dir / "sweep_summary.csv")) >= 1

    # The same command and sweep dir again: the study is loaded and grows; no trial directory is reused.
    proc = multirun(sweep_dir, "hydra.sweeper.n_trials=1", *common)
    assert "Using an existing study" in proc.stdout + proc.stderr
    assert len(_trials(db, "ppo_cartpole")) == 4
    assert len(list(sweep_dir.glob("*/objective.json"))) == 4

    # Continued with the other direction: refused before a trial runs (Optuna would fail with a traceback).
    proc = refused("-m", f"hydra.sweep.dir={sweep_dir}", *common, "objective.metric=solved_at_step",
                   "hydra.sweeper.direction=minimize")
    assert "was created to maximize" in proc.stderr and "hydra.sweeper.direction=maximize" in proc.stderr
    assert len(_trials(db, "ppo_cartpole")) == 4

    # Continued with other choice(…) values: Optuna refuses them from inside its storage; one paragraph, exit 2.
    proc = refused("-m", f"hydra.sweep.dir={sweep_dir}", *common, "hydra.sweeper.n_trials=1",
                   'network.hidden=choice("[64]","[32]")')
    assert "was started with other values for one of its choice(…) parameters" in proc.stderr
    states = [t.state.name for t in _trials(db, "ppo_cartpole")]
    assert states.count("COMPLETE") == 4 and "RUNNING" not in states, states  # the begun trial: marked FAIL


@pytest.mark.filterwarnings("ignore:Deprecated API features")
@pytest.mark.parametrize("storage", ["sqlite", "in_memory"])
def test_optuna_search_in_which_every_trial_fails_ends_with_one_paragraph(tmp_path, storage):
    """Every trial refused (update_epochs=0): Optuna's `best_trial` would end the search with its own traceback
    ("Record does not exist." from SQLite, "No trials are completed yet." in memory); rlrun's sweeper says so."""
    sweep_dir = tmp_path / "search"
    extra = ["hydra.sweeper.storage=null"] if storage == "in_memory" else []
    proc = refused("-m", f"hydra.sweep.dir={sweep_dir}", "hparams_search=ppo_cartpole", "hydra.sweeper.n_trials=2",
                   *TINY_PPO, "algo.update_epochs=0", *extra, status=1)
    assert proc.stderr.count("algo.update_epochs must be positive") >= 2  # each trial's own error
    expected = "all 2 trials failed" if storage == "sqlite" else "every trial failed"
    assert f"the Optuna search 'ppo_cartpole' has no result: {expected}" in proc.stderr, proc.stderr
    if storage == "sqlite":
        assert [t.state.name for t in _trials(sweep_dir / "optuna.db", "ppo_cartpole")] == ["FAIL", "FAIL"]
        assert f"with the same hydra.sweep.dir ({sweep_dir}) it continues this study" in proc.stderr
    else:  # nothing to continue
        assert "this study was in memory" in proc.stderr and "it continues" not in proc.stderr

    # Continued with a search space Optuna refuses: its own reason is shown, not "no result" (the study still has
    # no finished trial, which a review found turning any error into that message).
    proc = refused("-m", f"hydra.sweep.dir={sweep_dir}", "hparams_search=ppo_cartpole", "hydra.sweeper.n_trials=1",
                   *TINY_PPO, *extra, "algo.learning_rate=tag(log, interval(0, 1e-3))")
    assert "has no result" not in proc.stderr
    assert "could not start: Optuna refused its settings" in proc.stderr
    assert "must be larger than 0 for a log distribution" in proc.stderr


@pytest.mark.parametrize("setting, reason", [
    ("algo.gae_lambda=interval(0.9,0.8)", "must be smaller than or equal to the `high` value"),
    ("hydra.sweeper.storage=notaurl", "Could not parse SQLAlchemy URL"),
    ("hydra.sweeper.storage=sqlite:////proc/no/optuna.db", "unable to open database file"),
])
def test_optuna_search_whose_settings_optuna_refuses_stops_in_one_paragraph(tmp_path, setting, reason):
    """A reversed interval, a storage URL it cannot parse or open: Optuna raises before the first trial, from
    inside its distributions or SQLAlchemy."""
    proc = refused("-m", f"hydra.sweep.dir={tmp_path / 'search'}", "hparams_search=ppo_cartpole",
                   "hydra.sweeper.n_trials=1", *TINY_PPO, setting)
    assert "could not start: Optuna refused its settings" in proc.stderr and reason in proc.stderr


@pytest.mark.filterwarnings("ignore:Deprecated API features")
def test_optuna_search_with_a_finished_trial_reports_it_when_later_trials_fail(tmp_path):
    """A continued study whose new trials all fail still has a best trial: Hydra's sweeper ends as usual."""
    sweep_dir = tmp_path / "search"
    multirun(sweep_dir, "hparams_search=ppo_cartpole", "hydra.sweeper.n_trials=1", *TINY_PPO)
    proc = multirun(sweep_dir, "hparams_search=ppo_cartpole", "hydra.sweeper.n_trials=1", *TINY_PPO,
                    "algo.update_epochs=0")
    assert "Best value" in proc.stdout + proc.stderr and "has no result" not in proc.stderr
    assert [t.state.name for t in _trials(sweep_dir / "optuna.db", "ppo_cartpole")] == ["COMPLETE", "FAIL"]


def test_a_sweep_with_an_unknown_plus_key_is_refused_once_before_any_job(tmp_path):
    """Every job would be refused alike (and an Optuna search would then end in Optuna's traceback): the sweep
    stops at its start, with exit 2, one message and no sweep directory."""
    sweep_dir = tmp_path / "sweep"
    proc = refused("-m", f"hydra.sweep.dir={sweep_dir}", "hparams_search=ppo_cartpole", "+algo.lerning_rate=1",
                   *TINY_PPO)
    assert "unknown setting algo.lerning_rate (did you mean algo.learning_rate?)" in proc.stderr
    assert not sweep_dir.exists()


def test_optuna_search_with_the_wrong_direction_stops_before_its_study_exists(tmp_path):
    sweep_dir = tmp_path / "search"
    proc = refused("-m", f"hydra.sweep.dir={sweep_dir}", "hparams_search=ppo_cartpole",
                   "objective.metric=solved_at_step", *TINY_PPO)
    assert "set hydra.sweeper.direction=minimize" in proc.stderr
    assert not (sweep_dir / "optuna.db").exists()


def test_slurm_launcher_preset_composes_with_requeue_settings():
    proc = subprocess.run([str(BIN / "rlrun"), "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    launcher = yaml.safe_load(proc.stdout.split("\n", 1)[1])  # after "# @package hydra.launcher"
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["max_num_timeout"] > 0 and launcher["cpus_per_task"] == 1


def test_an_interrupted_seed_of_a_several_seed_job_names_its_own_directory(tmp_path):
    """objective.seeds=2: the interrupted run is job_dir/seed<N>; the message used to name the job dir and advise
    resume=<job dir>, where no checkpoint is (found by a fuzz review)."""
    import signal

    from rlrun.cli import interrupted_message
    from rlrun.run import RunInterrupted

    summary = {"steps_done": 300, "checkpoint_step": 300}
    message = interrupted_message(RunInterrupted(signal.SIGINT, summary, tmp_path / "trial0" / "seed1"),
                                  tmp_path / "trial0")
    assert f"are in {tmp_path / 'trial0' / 'seed1'}" in message and "resume=auto" in message
    assert f"resume={tmp_path / 'trial0'}" not in message
    single = interrupted_message(RunInterrupted(signal.SIGINT, summary, tmp_path / "run"), tmp_path / "run")
    assert f"Continue with resume={tmp_path / 'run'}" in single


@pytest.mark.parametrize("args, message", [
    (["-m", "--cfg", "hydra", "seed=0,1", *TINY_DQN], "--multirun and --cfg cannot be given together"),
    (["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "seed=0,1", *TINY_DQN],
     "hydra.launcher.n_jobs=0 runs nothing"),
    (["-m", "hydra/launcher=joblib", "hydra.launcher.backend=threading", "seed=0,1", *TINY_DQN],
     "hydra.launcher.backend=threading: Hydra's joblib launcher always runs its jobs in loky"),  # was ignored
    (["-m", "hydra/launcher=joblib", "hydra.launcher.prefer=threads", "hydra.launcher.require=sharedmem",
      "seed=0,1", *TINY_DQN], "hydra.launcher.prefer=threads, require=sharedmem: "),  # ignored; a traceback
    (["-m", "objective.seeds=0", "seed=0,1", *TINY_DQN], "objective.seeds must be at least 1, got 0"),
    (["-m", "hparams_search=ppo_cartpole", "hydra.sweeper.n_trials=0", *TINY_PPO],
     "hydra.sweeper.n_trials must be at least 1, got 0"),
    pytest.param(["-m", "hydra/launcher=slurm", "seed=0,1", *TINY_DQN], "this machine has no `srun` on its PATH",
                 marks=pytest.mark.skipif(shutil.which("srun") is not None, reason="SLURM is installed here")),
])
def test_a_sweep_that_would_fail_in_hydra_its_launcher_or_every_job_stops_first(tmp_path, args, message):
    """Found by fuzz reviews: each of these ended in a traceback from inside Hydra, joblib or submitit, in the same
    error once per job (objective.seeds), or as a search in which "every trial failed" (n_trials=0)."""
    sweep_dir = tmp_path / "sweep"
    proc = refused(*args, f"hydra.sweep.dir={sweep_dir}")
    assert message in proc.stderr
    assert not sweep_dir.exists()


@pytest.mark.filterwarnings("ignore:Deprecated API features")
def test_fail_running_trials_marks_only_this_searchs_unfinished_trials(tmp_path):
    """What a Ctrl-C (or a refused search space) leaves: trials this search began stay RUNNING in optuna.db for ever
    unless marked. One begun before the search (another process's) and finished ones are left as they are."""
    import datetime
    import time
    from types import SimpleNamespace

    import optuna

    from rlrun.sweep import fail_running_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    earlier = study.ask()
    time.sleep(0.05)
    since = datetime.datetime.now()
    done, unfinished = study.ask(), study.ask()
    study.tell(done, 1.0)
    sweeper = SimpleNamespace(storage=storage, study_name="s")
    assert fail_running_trials(sweeper, since) == 1
    states = {t.number: t.state.name for t in optuna.load_study(study_name="s", storage=storage).trials}
    assert states == {earlier.number: "RUNNING", done.number: "COMPLETE", unfinished.number: "FAIL"}
    assert fail_running_trials(SimpleNamespace(storage=None, study_name="s"), since) == 0  # in memory: gone
    assert fail_running_trials(SimpleNamespace(storage="sqlite:////proc/no/db", study_name="s"), since) == 0


def _start_joblib_sweep(sweep_dir: Path, *extra: str, sweep: tuple[str, ...] = ("seed=0,1,2,3", "total_steps=1000000")
                        ) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "rlrun"), "-m", f"hydra.sweep.dir={sweep_dir}", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", "algo=dqn", "env=cartpole", *sweep, "eval.every_steps=0",
                             "log.tensorboard=false", "log.progress=none", *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_until(proc: subprocess.Popen, condition) -> None:
    deadline = time.monotonic() + 240
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:  # its long jobs would train on: the test would wait for them for ever
                os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(proc.communicate()[0])
        time.sleep(0.05)


def test_a_ctrl_c_in_a_parallel_sweep_waits_for_its_running_jobs_to_checkpoint(tmp_path):
    """A terminal's Ctrl-C reaches the sweep's process and its joblib workers alike: the running jobs checkpoint and
    write summary.json (status interrupted) before the sweep's process stops them (joblib used to kill them at once:
    no summary, and no checkpoint at all with the default checkpoint.every_steps=0), and queued jobs do not run.
    Continued with resume=auto, the jobs resume; a SIGTERM to the sweep's process alone (`kill PID`) then reaches
    them through the sweep's stop marker, and the resumed sessions are waited for although their runs hold the
    summary.json of the session before."""
    sweep_dir = tmp_path / "sweep"
    proc = _start_joblib_sweep(sweep_dir)
    _wait_until(proc, lambda: len(list(sweep_dir.glob("*/evaluations.csv"))) == 2)  # both workers train
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in output, output
    assert "its running jobs checkpointed and wrote summary.json" in output, output
    started = sorted(path.parent for path in sweep_dir.glob("*/evaluations.csv"))
    assert [job.name[0] for job in started] == ["0", "1"]  # jobs 2 and 3 never trained
    first = {}
    for job in started:
        first[job] = summary = read_summary(job)
        assert summary["status"] == "interrupted" and 0 < summary["checkpoint_step"] == summary["steps_done"]
        torch.load(job / "checkpoints" / "last.pt", weights_only=True)
    assert not (sweep_dir / STOP_MARKER).exists()  # not left for the sweep's resume=auto
    rows = read_csv(sweep_dir / "sweep_summary.csv")  # written although no job ended normally
    assert len(rows) == 1 and rows[0]["runs"] == "2" and rows[0]["statuses"] == "interrupted"

    proc = _start_joblib_sweep(sweep_dir, "resume=auto")
    _wait_until(proc, lambda: all((job / RUNNING_MARKER).exists() for job in started))  # both sessions resumed
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGTERM)  # the sweep's process only
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 143 and "Traceback" not in output, output
    assert "its running jobs checkpointed and wrote summary.json" in output, output
    for job in started:
        summary = read_summary(job)
        assert summary["status"] == "interrupted" and summary["resumed_from"] is not None
        assert summary["checkpoint_step"] == summary["steps_done"] > first[job]["steps_done"]


def test_a_ctrl_c_while_a_joblib_worker_is_idle_still_checkpoints_the_running_job(tmp_path):
    """One job on two workers: the idle worker used to die of the Ctrl-C, and loky then killed the busy one, whose
    run was left without checkpoint or summary. Workers now block the signal and the job stops through the marker."""
    sweep_dir = tmp_path / "sweep"
    proc = _start_joblib_sweep(sweep_dir, sweep=("seed=0", "total_steps=1000000"))
    _wait_until(proc, lambda: bool(list(sweep_dir.glob(f"*/{RUNNING_MARKER}"))))
    time.sleep(2.0)
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "its running jobs checkpointed and wrote summary.json" in output, output
    (job,) = sweep_dir.glob("0_*")
    summary = read_summary(job)
    assert summary["status"] == "interrupted" and 0 < summary["checkpoint_step"] == summary["steps_done"]
    assert not (job / RUNNING_MARKER).exists()


def test_a_finished_job_continued_with_resume_auto_is_not_waited_for(tmp_path):
    """Continued with resume=auto, a finished job only reloads its last checkpoint and keeps its summary.json: a Ctrl-C
    while the other job trains must not wait for the finished one (an mtime test between evaluations.csv and
    summary.json would have waited 120 s)."""
    sweep_dir, sweep = tmp_path / "sweep", ("seed=0", "total_steps=1500,1000000")  # job 0 short, job 1 long

    def interrupt_once_job_1_trains(*extra: str) -> str:
        proc = _start_joblib_sweep(sweep_dir, *extra, sweep=sweep)
        _wait_until(proc, lambda: (bool(list(sweep_dir.glob(f"1_*/{RUNNING_MARKER}")))  # job 1 trains, job 0 is done
                                   and bool(list(sweep_dir.glob("0_*/summary.json")))
                                   and not list(sweep_dir.glob(f"0_*/{RUNNING_MARKER}"))))
        time.sleep(2.0)
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 130 and time.monotonic() - started < 60, output
        assert "its running jobs checkpointed and wrote summary.json" in output, output
        return output

    interrupt_once_job_1_trains()
    (done,), (running,) = sweep_dir.glob("0_*"), sweep_dir.glob("1_*")
    assert read_summary(done)["status"] == "completed"
    completed = (done / "summary.json").read_bytes()
    interrupt_once_job_1_trains("resume=auto")
    assert (done / "summary.json").read_bytes() == completed and not (done / RUNNING_MARKER).exists()
    summary = read_summary(running)
    assert summary["status"] == "interrupted" and summary["resumed_from"] is not None


def test_jobs_of_a_parallel_sweep_whose_process_is_killed_stop_and_their_workers_exit(tmp_path):
    """The workers block SIGINT and SIGTERM: if the sweep's process dies (SIGKILL), its running jobs stop as on
    SIGTERM within a second (checkpoint, summary.json), and their workers exit instead of training on orphaned."""
    sweep_dir = tmp_path / "sweep"
    proc = _start_joblib_sweep(sweep_dir)
    _wait_until(proc, lambda: len(list(sweep_dir.glob(f"*/{RUNNING_MARKER}"))) == 2)
    time.sleep(2.0)
    workers = [int(marker.read_text()) for marker in sweep_dir.glob(f"*/{RUNNING_MARKER}")]
    proc.kill()
    proc.communicate(timeout=60)

    def alive(pid: int) -> bool:  # a zombie (not reaped by whoever adopted it) has exited
        try:
            return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False

    deadline = time.monotonic() + 120
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers)
    jobs = sorted(path.parent for path in sweep_dir.glob("*/evaluations.csv"))
    assert len(jobs) == 2
    for job in jobs:
        summary = read_summary(job)
        assert summary["status"] == "interrupted" and 0 < summary["checkpoint_step"] == summary["steps_done"]


def test_the_graceful_stop_waits_for_running_runs_then_interrupts(tmp_path):
    """GracefulSweepStop's handler, without a sweep: it marks the sweep with the signal's name, waits for the runs
    this sweep began to write summary.json (their RUNNING_MARKER gone), and says which runs it gave up on at its
    time limit."""
    stale, done, resumed, seeded = tmp_path / "0_a", tmp_path / "1_b", tmp_path / "2_c", tmp_path / "3_d" / "seed1"
    for run in (stale, done, resumed, seeded):
        run.mkdir(parents=True)
        (run / "summary.json").write_text("{}")  # a session before
    for run in (stale, resumed, seeded, done):  # sessions that began and wrote no summary yet
        (run / RUNNING_MARKER).write_text(f"{os.getpid()}\n")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (done / RUNNING_MARKER).write_text(dead.stdout)  # its process was killed: it will not finish
    an_hour_ago = time.time() - 3600
    os.utime(stale / RUNNING_MARKER, (an_hour_ago, an_hour_ago))  # a run of an earlier sweep that was killed
    stop = GracefulSweepStop(tmp_path, timeout_s=60)
    assert sorted(runs_in_progress(tmp_path, stop.since)) == [resumed, seeded]
    threading.Timer(0.5, lambda: [(run / RUNNING_MARKER).unlink() for run in (resumed, seeded)]).start()
    previous = {signum: signal.getsignal(signum) for signum in GracefulSweepStop.SIGNALS}
    try:
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            stop.handler(signal.SIGTERM, None)
        assert 0.4 < time.monotonic() - started < 30 and stop.unfinished == [] and stop.signum == signal.SIGTERM
        assert (tmp_path / STOP_MARKER).read_text() == "SIGTERM"  # running jobs stop as on it (Run.stop_file)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a second signal stops the wait
        (seeded / RUNNING_MARKER).write_text(f"{os.getpid()}\n")
        stop = GracefulSweepStop(tmp_path, timeout_s=0.3)
        with pytest.raises(KeyboardInterrupt):
            stop.handler(signal.SIGINT, None)
        assert stop.unfinished == [seeded]
        stop.uninstall()
        assert not (tmp_path / STOP_MARKER).exists()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
