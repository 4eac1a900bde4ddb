"""A resumed run is the run: kill -9 after the first checkpoint, `resume=auto`, and the evaluations and final
weights are bit-identical to an uninterrupted run with the same seed (issue 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import BIN, REPO, read_summary, rlrun

from rlrun.algos import ALGORITHMS

# Tiny but non-trivial settings per algorithm: several checkpoints, evaluations between them, and episodes that
# straddle checkpoints (so resuming must rebuild envs mid-episode).
DISCRETE_ENV = ["env=cartpole"]
CONTINUOUS_ENV = ["env=pendulum"]
SMALL_NET = ["network.hidden=[32,32]"]
PER_ALGO: dict[str, list[str]] = {
    "dqn": ["algo.learning_starts=200", "algo.train_freq=4", "algo.gradient_steps=1", "algo.batch_size=32",
            "algo.target_update_interval=100", "algo.buffer_size=3000"],
    "double_dqn": ["algo.learning_starts=200", "algo.train_freq=4", "algo.gradient_steps=1",
                   "algo.batch_size=32", "algo.target_update_interval=100", "algo.buffer_size=3000"],
    # Their defaults start learning at 10,000 steps, after this run's end: these train from step 500 on, so
    # the optimizers, target networks, noise and replay sampling all cross the checkpoint.
    "ddpg": ["algo.learning_starts=500", "algo.batch_size=32", "algo.buffer_size=4000"],
    "td3": ["algo.learning_starts=500", "algo.batch_size=32", "algo.buffer_size=4000"],
    "sac": ["algo.learning_starts=500", "algo.batch_size=32", "algo.buffer_size=4000"],
}
TOTAL_STEPS = 6000
CHECKPOINT_EVERY = 1500
# On-policy agents on CartPole run thousands of steps per second: give them a longer run, so the test can
# kill them well after their first checkpoint and well before their end.
FAST_TOTAL_STEPS = 24_000
FAST = {"ppo", "a2c", "reinforce", "vpg", "trpo"}


def overrides_for(algo: str) -> list[str]:
    spec = ALGORITHMS[algo]
    env = DISCRETE_ENV if spec.discrete else CONTINUOUS_ENV
    total = FAST_TOTAL_STEPS if algo in FAST else TOTAL_STEPS
    return [f"algo={algo}", *env, *SMALL_NET, *PER_ALGO.get(algo, []), f"total_steps={total}",
            "eval.every_steps=1000", "eval.episodes=2", f"checkpoint.every_steps={CHECKPOINT_EVERY}",
            "log.tensorboard=false", "seed=3", "resume=auto"]


def start(run_dir: Path, overrides: list[str]) -> subprocess.Popen:
    args = [str(BIN / "rlrun"), f"hydra.run.dir={run_dir}", "log.progress=plain", *overrides]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_after_first_checkpoint(run_dir: Path, overrides: list[str]) -> None:
    proc = start(run_dir, overrides)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert proc.poll() is None, f"run ended before its first checkpoint:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    # Killed as soon as the checkpoint is seen; the run has usually gone on a little past it, leaving
    # evaluation rows (and TensorBoard points) that the resumed run must drop.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert read_summary_status(run_dir) is None  # kill -9 leaves no summary


def read_summary_status(run_dir: Path) -> str | None:
    return read_summary(run_dir)["status"] if (run_dir / "summary.json").exists() else None


def evaluation_columns(run_dir: Path) -> list[tuple[str, str]]:
    lines = (run_dir / "evaluations.csv").read_text().strip().splitlines()
    rows = [line.split(",") for line in lines]
    return [(row[0], row[2]) for row in rows]  # step, return_mean (as written: bit-exact text)


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_same_run(reference: Path, resumed: Path) -> None:
    assert evaluation_columns(resumed) == evaluation_columns(reference)
    ref_model, res_model = final_model(reference), final_model(resumed)
    assert ref_model.keys() == res_model.keys()
    for key in ref_model:
        assert torch.equal(ref_model[key], res_model[key]), f"{key} differs after resume"


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_kill_9_then_resume_auto_is_bit_identical(tmp_path, algo):
    overrides = overrides_for(algo)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    rlrun(reference, *overrides)
    kill_after_first_checkpoint(resumed, overrides)
    proc = rlrun(resumed, *overrides)
    assert "resumed from" in proc.stdout
    assert read_summary(resumed)["status"] == "completed"
    assert read_summary(resumed)["steps_done"] == read_summary(reference)["steps_done"]
    assert_same_run(reference, resumed)


def test_kill_9_then_resume_with_async_envs_is_bit_identical(tmp_path):
    """Envs in subprocesses (env.vectorization=async): each worker rebuilds its episode on resume."""
    overrides = [*overrides_for("ppo"), "env.vectorization=async", "algo.num_envs=2"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    rlrun(reference, *overrides)
    kill_after_first_checkpoint(resumed, overrides)
    rlrun(resumed, *overrides)
    assert_same_run(reference, resumed)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_with_async_envs_still_checkpoints(tmp_path, signum):
    """Ctrl-C in a terminal (SLURM, docker stop: SIGTERM) reaches the env worker processes too: they ignore it,
    and the run checkpoints and stops as with in-process envs (a worker's death used to end it in a broken pipe)."""
    overrides = [*overrides_for("ppo"), "env.vectorization=async", "algo.num_envs=2"]
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([str(BIN / "rlrun"), f"hydra.run.dir={run_dir}", "log.progress=plain", *overrides],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signum)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, output
    assert "Traceback" not in output and "not saved" not in output, output
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["checkpoint_step"] == summary["steps_done"] < TOTAL_STEPS


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_marks_interrupted_and_resumes_exactly(tmp_path, signum):
    overrides = [o for o in overrides_for("dqn") if o != "log.tensorboard=false"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    rlrun(reference, *overrides)
    proc = start(resumed, overrides)
    deadline = time.monotonic() + 300
    while not (resumed / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, output
    assert "Traceback" not in output
    summary = read_summary(resumed)
    assert summary["status"] == "interrupted" and summary["steps_done"] < TOTAL_STEPS
    payload = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    assert payload["step"] == summary["steps_done"] == summary["checkpoint_step"]  # written at the interruption
    assert f"Continue with resume={resumed}" in output and "not saved" not in output
    rlrun(resumed, *overrides)
    assert read_summary(resumed)["status"] == "completed"
    assert_same_run(reference, resumed)
    # TensorBoard too: no extra point at the interrupt step (the pending metrics went into the checkpoint)
    ref_tb, res_tb = tensorboard_points(reference), tensorboard_points(resumed)
    assert ref_tb.keys() == res_tb.keys() and "losses/td_loss" in ref_tb
    for tag in ref_tb:
        assert res_tb[tag] == ref_tb[tag], tag


def tensorboard_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per scalar tag, after TensorBoard's purge of points a resumed run replaced; wall-clock
    tags (charts/sps) are left out."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if tag != "charts/sps"}


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path):
    rlrun(tmp_path / "run", *overrides_for("dqn")[:-1], "total_steps=300", "checkpoint.every_steps=0",
          "resume=auto")
    assert read_summary(tmp_path / "run")["resumed_from"] is None


def test_resume_from_a_run_directory_continues_into_a_new_one(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    base = [o for o in overrides_for("dqn") if not o.startswith(("resume=", "total_steps="))]
    rlrun(first, *base, "total_steps=3000")
    rlrun(second, *base, "total_steps=6000", f"resume={first}")
    summary = read_summary(second)
    assert summary["resumed_from"] == str(first / "checkpoints" / "last.pt")
    assert summary["steps_done"] == 6000
    steps = [int(step) for step, _ in evaluation_columns(second)[1:]]
    assert steps == [1000, 2000, 3000, 4000, 5000, 6000]  # the first run's rows, then the continuation
    third = tmp_path / "third"  # continued with nothing left to do: best.pt can only be the first run's
    rlrun(third, *base, "total_steps=3000", f"resume={first}")
    assert (third / "checkpoints" / "best.pt").read_bytes() == (first / "checkpoints" / "best.pt").read_bytes()


def test_continuing_a_run_into_a_directory_that_holds_another_is_refused(tmp_path):
    source, victim = tmp_path / "source", tmp_path / "victim"
    base = [o for o in overrides_for("dqn") if not o.startswith(("resume=", "total_steps="))]
    rlrun(source, *base, "total_steps=2000")
    rlrun(victim, *base, "total_steps=1000", "seed=4")
    before = {path: path.read_bytes() for path in victim.rglob("*") if path.is_file()}
    assert victim / ".hydra" / "config.yaml" in before
    proc = rlrun(victim, *base, "total_steps=3000", f"resume={source}", check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and "Traceback" not in proc.stderr
    after = {path: path.read_bytes() for path in victim.rglob("*") if path.is_file()}
    assert after == before  # .hydra/ included: the refused command's config went nowhere


def test_resume_refuses_another_seed_env_or_algo_setting(tmp_path):
    """The saved optimizer state, episodes and random streams belong to the original settings (a changed
    learning rate, say, would be overwritten by the optimizer's saved one): refused, pointing to transfer."""
    first = tmp_path / "first"
    base = [o for o in overrides_for("dqn") if not o.startswith(("resume=", "total_steps="))]
    rlrun(first, *base, "total_steps=2000")
    for change in ("seed=9", "env.max_episode_steps=100", "algo.learning_rate=0.0001"):
        proc = rlrun(tmp_path / "changed", *base, "total_steps=3000", change, f"resume={first}", check=False)
        assert proc.returncode == 2 and "cannot resume" in proc.stderr and "Traceback" not in proc.stderr
        assert change.split("=")[0] in proc.stderr and "transfer=finetune" in proc.stderr
        assert not (tmp_path / "changed" / "checkpoints").exists()
    # The same refusal in the run's own directory leaves its files, .hydra/ included, as they were.
    before = {path: path.read_bytes() for path in first.rglob("*") if path.is_file()}
    proc = rlrun(first, *base, "total_steps=3000", "seed=9", "resume=auto", check=False)
    assert proc.returncode == 2 and "cannot resume" in proc.stderr
    assert {path: path.read_bytes() for path in first.rglob("*") if path.is_file()} == before


def test_a_stopped_run_stays_stopped_when_the_same_command_is_requeued(tmp_path):
    run_dir = tmp_path / "run"
    base = [o for o in overrides_for("dqn") if not o.startswith("total_steps=")]
    stop = [*base, "total_steps=3000", "stop_at_return=0"]  # any CartPole return ≥ 0: stops at the first eval
    rlrun(run_dir, *stop)
    first = read_summary(run_dir)
    assert first["status"] == "stopped" and first["steps_done"] == 1000
    rows, weights = evaluation_columns(run_dir), final_model(run_dir)
    rlrun(run_dir, *stop)
    assert read_summary(run_dir)["status"] == "stopped" and read_summary(run_dir)["steps_done"] == 1000
    assert evaluation_columns(run_dir) == rows
    assert all(torch.equal(weights[key], value) for key, value in final_model(run_dir).items())
    rlrun(run_dir, *base, "total_steps=3000", "stop_at_return=null")  # without the stop it goes on
    assert read_summary(run_dir)["status"] == "completed" and read_summary(run_dir)["steps_done"] == 3000
    # a completed run whose final evaluation passes the threshold was not stopped: more steps continue it
    rlrun(run_dir, *base, "total_steps=4000", "stop_at_return=0")
    assert read_summary(run_dir)["steps_done"] == 4000
    assert [step for step, _ in evaluation_columns(run_dir)[1:]] == ["1000", "2000", "3000", "4000"]


def test_resume_into_other_sizes(tmp_path):
    """Another algo.num_envs cannot continue the saved episodes: refused before anything is written. Another
    algo.buffer_size is taken: the newest transitions move into the new buffer (tests/test_buffers.py)."""
    first = tmp_path / "first"
    base = [o for o in overrides_for("dqn") if not o.startswith(("resume=", "total_steps="))]
    rlrun(first, *base, "total_steps=3000")
    proc = rlrun(tmp_path / "envs", *base, "total_steps=4000", "algo.num_envs=2", f"resume={first}", check=False)
    assert proc.returncode == 2, proc.stderr
    assert "cannot resume" in proc.stderr and "algo.num_envs: 1 → 2" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "envs" / "checkpoints").exists()
    for size in (1000, 5000):
        proc = rlrun(tmp_path / f"buffer{size}", *base, "total_steps=4000", f"algo.buffer_size={size}",
                     f"resume={first}")
        assert f"changed settings: algo.buffer_size: 3000 → {size}" in proc.stdout
        assert read_summary(tmp_path / f"buffer{size}")["steps_done"] == 4000


def test_rng_states_carry_the_cuda_generators_and_say_when_they_cannot_be_restored():
    from rlrun.run import rng_states, set_rng_states

    states = rng_states()
    assert "torch_cuda" in states
    if torch.cuda.is_available():
        pytest.skip("the warning is for resuming a GPU run where CUDA is missing; this machine has CUDA")
    assert states["torch_cuda"] == []
    set_rng_states(states)  # a CPU run's states restore without a word
    from_gpu = dict(states, torch_cuda=[torch.zeros(16, dtype=torch.uint8)])
    with pytest.warns(UserWarning, match="not bit-for-bit"):
        set_rng_states(from_gpu)


def test_config_changes_compares_nested_settings_and_nans():
    from rlrun.run import config_changes

    saved = "seed: 1\nenv:\n  id: X\n  kwargs: {wind: .nan}\nalgo:\n  lr: 0.1\ntotal_steps: 5\n"
    same_but_budget = saved.replace("total_steps: 5", "total_steps: 9")
    assert config_changes(saved, same_but_budget, ("seed", "env", "algo")) == []  # NaN equals NaN here
    changed = saved.replace("lr: 0.1", "lr: 0.2").replace("kwargs: {wind: .nan}", "kwargs: {wind: .nan, g: 2}")
    assert config_changes(saved, changed, ("seed", "env", "algo")) == ["algo.lr: 0.1 → 0.2", "env.kwargs.g: None → 2"]


def test_config_changes_ignore_keys_no_schema_declares():
    """A run made before unknown `+keys` were refused may hold one in its config (the run ignored it): resuming
    it without the key is not a change of settings, while a real change beside it still is."""
    from rlrun.run import config_changes

    saved = "seed: 0\nalgo:\n  name: dqn\n  learning_rate: 0.001\n  lerning_rate: 0.01\n"
    assert config_changes(saved, saved.replace("  lerning_rate: 0.01\n", ""), ("seed", "algo")) == []
    changed = saved.replace("  lerning_rate: 0.01\n", "").replace("0.001", "0.002")
    assert config_changes(saved, changed, ("seed", "algo")) == ["algo.learning_rate: 0.001 → 0.002"]


def test_a_best_pt_from_past_the_checkpoint_is_not_carried(tmp_path):
    from rlrun.checkpoint import save_checkpoint
    from rlrun.run import Run

    best = tmp_path / "best.pt"
    save_checkpoint(best, {"model": {}, "step": 3000})
    assert Run._best_at_or_before(best, 3000) == {"model": {}, "step": 3000}
    assert Run._best_at_or_before(best, 2000) is None and Run._best_at_or_before(tmp_path / "none.pt", 3000) is None
