"""Crash safety and safe loading: atomic writes, full disk, NaN, malicious and corrupt checkpoints."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BIN, REPO, read_summary, rlrun
from omegaconf import OmegaConf

from rlrun import checkpoint, files
from rlrun import run as run_module
from rlrun.checkpoint import CheckpointError, load_buffer, load_checkpoint, save_checkpoint
from rlrun.config import compose
from rlrun.run import NonFiniteError, Run

TINY = ["algo=dqn", "env=cartpole", "network.hidden=[16]", "total_steps=800", "eval.every_steps=400",
        "eval.episodes=1", "algo.learning_starts=100", "algo.train_freq=4", "algo.gradient_steps=1",
        "algo.batch_size=16", "log.tensorboard=false", "log.progress=none"]


def build_run(run_dir: Path, *overrides: str) -> Run:
    cfg = compose([*TINY, *overrides])
    return Run(OmegaConf.to_object(cfg), run_dir, OmegaConf.to_yaml(cfg, resolve=True))


def payload(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "step": int(value)}


def test_kill_between_temp_write_and_rename_keeps_previous_checkpoint(tmp_path):
    """A child writes checkpoint 1, then is SIGKILLed inside the rename of checkpoint 2."""
    script = textwrap.dedent(f"""
        import os, signal, numpy as np, torch
        from rlrun.checkpoint import save_checkpoint
        path = {str(tmp_path / "last.pt")!r}
        save_checkpoint(path, {{"model": {{"w": torch.full((3,), 1.0)}}, "step": 1}},
                        {{"x": np.ones(4)}}, step=1)
        real_replace = os.replace
        def dying_replace(src, dst):
            if str(dst).endswith("last.pt"):
                os.kill(os.getpid(), signal.SIGKILL)  # temp file written and fsynced, rename not done
            return real_replace(src, dst)
        os.replace = dying_replace
        save_checkpoint(path, {{"model": {{"w": torch.full((3,), 2.0)}}, "step": 2}},
                        {{"x": np.zeros(4)}}, step=2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 1.0))
    np.testing.assert_array_equal(load_buffer(tmp_path / "last.pt", loaded)["x"], np.ones(4))


class FullDisk:
    """`open` for rlrun.files (atomic writes): its files take `room` bytes in all, then fail with ENOSPC."""

    def __init__(self, room: int):
        self.room = room

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        disk = self

        class Handle:
            def write(self, data) -> int:
                size = memoryview(data).nbytes
                if size > disk.room:
                    raise OSError(errno.ENOSPC, "No space left on device")
                disk.room -= size
                return handle.write(data)

            def __getattr__(self, name):
                return getattr(handle, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

        return Handle()


@pytest.mark.parametrize("with_buffer", [False, True])
def test_full_disk_keeps_previous_checkpoint_and_says_so(tmp_path, monkeypatch, with_buffer):
    path = tmp_path / "last.pt"
    buffer = {"x": np.ones(4)} if with_buffer else None
    save_checkpoint(path, payload(1.0), buffer, step=1)
    big = {"model": {"w": torch.zeros(100_000)}, "step": 2}
    monkeypatch.setattr(files, "open", FullDisk(room=10_000), raising=False)
    with pytest.raises(CheckpointError, match="no space left"):
        save_checkpoint(path, big, {"x": np.zeros(100_000)} if with_buffer else None, step=2)
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 1.0))
    if with_buffer:
        np.testing.assert_array_equal(load_buffer(path, loaded)["x"], np.ones(4))
    assert not list(tmp_path.glob(".*.tmp-*"))  # no temp file left behind


def test_full_disk_during_a_run_fails_clearly_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    run = build_run(tmp_path, "checkpoint.every_steps=200")
    real_save = checkpoint.save_checkpoint
    calls = {"n": 0}

    def save_then_fill_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the disk fills up: a checkpoint no longer fits, summary.json (~1 KB) still does
            monkeypatch.setattr(files, "open", FullDisk(room=2_000), raising=False)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(run_module, "save_checkpoint", save_then_fill_disk)
    with pytest.raises(CheckpointError, match=r"no space left .* \(the replay buffer of last.pt\); the previous "
                       r"last.pt and the buffer file it names are kept unchanged"):
        run.train()
    monkeypatch.undo()
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed"
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == summary["checkpoint_step"] > 0


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    run = build_run(tmp_path, "checkpoint.every_steps=200")
    real_update = run.agent.update
    calls = {"n": 0}

    def poisoned_update():
        calls["n"] += 1
        metrics = real_update()
        if calls["n"] >= 120:  # after the checkpoint at step 200 (updates start at step 100)
            metrics["losses/td_loss"] = torch.tensor(float("nan"))
        return metrics

    run.agent.update = poisoned_update
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        run.train()
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and "losses/td_loss" in summary["error"]
    assert summary["error"].endswith(f"its last good checkpoint (step {summary['checkpoint_step']:,}) is kept")
    kept = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert kept["step"] == summary["checkpoint_step"] < summary["steps_done"]
    assert all(torch.isfinite(value).all() for value in kept["model"].values())


def test_nan_parameter_is_caught_before_it_is_checkpointed(tmp_path):
    run = build_run(tmp_path, "checkpoint.every_steps=200")
    with torch.no_grad():
        run.agent.q.head.bias.fill_(float("inf"))
    run.agent.update = lambda: {}  # no loss to catch it first: the parameter check must
    with pytest.raises(NonFiniteError, match="q.head.bias"):
        run.train()
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and summary["checkpoint_step"] is None
    assert summary["error"].endswith("no checkpoint had been written yet")
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("periodic", [True, False, None])  # None: checkpoints off, Ctrl-C after last.pt's rename
def test_a_second_ctrl_c_during_the_final_checkpoint_says_which_step_resume_continues_from(tmp_path, monkeypatch,
                                                                                          periodic):
    """Ctrl-C, then Ctrl-C again while the final checkpoint is written: that write is abandoned (the previous
    last.pt stays whole) and summary.json and the message say which step a resume continues from."""
    from rlrun.cli import interrupted_message
    from rlrun.run import RunInterrupted

    run = build_run(tmp_path, f"checkpoint.every_steps={200 if periodic else 0}")
    real_save, real_iteration = run_module.save_checkpoint, run.agent.train_iteration

    def first_ctrl_c_at_step_500(runner):
        metrics = real_iteration(runner)
        if runner.global_step >= 500 and run._stop_signal is None:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    def second_ctrl_c_during_the_final_save(path, payload, *args, **kwargs):
        if run._stop_signal is not None and periodic is not None:
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(path, payload, *args, **kwargs)

    real_fsync_dir, fsyncs = files._fsync_dir, []

    def second_ctrl_c_after_last_pt_is_renamed(directory):
        real_fsync_dir(directory)
        if run._stop_signal is not None:
            fsyncs.append(directory)
        if len(fsyncs) == 2:  # the final save: its buffer's, then last.pt's
            os.kill(os.getpid(), signal.SIGINT)

    run.agent.train_iteration = first_ctrl_c_at_step_500
    monkeypatch.setattr(run_module, "save_checkpoint", second_ctrl_c_during_the_final_save)
    if periodic is None:
        monkeypatch.setattr(files, "_fsync_dir", second_ctrl_c_after_last_pt_is_renamed)
    with pytest.raises(RunInterrupted) as interrupted:
        run.train()
    summary = read_summary(tmp_path)
    assert summary["status"] == "interrupted" and summary["steps_done"] >= 500
    message = interrupted_message(interrupted.value, tmp_path)
    if periodic is None:  # the final last.pt was in place: it counts, though the write's last fsync was cut short
        assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == summary["checkpoint_step"] \
            == summary["steps_done"]
        assert "not saved" not in message and f"Continue with resume={tmp_path}" in message
    elif periodic:
        assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == summary["checkpoint_step"] == 400
        assert f"it holds step 400, the {summary['steps_done'] - 400:,} steps after it were not saved" in message
    else:
        assert summary["checkpoint_step"] is None and not (tmp_path / "checkpoints" / "last.pt").exists()
        assert "before the run's first checkpoint was written" in message and "resume=auto" in message


class _Payload:
    """Pickles to a call that would create a marker file if it were ever unpickled with full pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    torch.save({"format": "rlrun-checkpoint-v1", "model": {}, "evil": _Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    path, marker = _malicious_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_malicious_checkpoint_through_the_clis(tmp_path):
    path, marker = _malicious_checkpoint(tmp_path)
    proc = subprocess.run([str(BIN / "rlrun-eval"), str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "refused" in proc.stderr and "Traceback" not in proc.stderr
    proc = rlrun(tmp_path / "new", *TINY, f"resume={path}", check=False, timeout=120)
    assert proc.returncode != 0 and "refused" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0, 10, 500])
def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path, cut):
    good = tmp_path / "good.pt"
    save_checkpoint(good, payload(1.0))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:cut])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)


def test_not_an_rlrun_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an rlrun checkpoint"):
        load_checkpoint(path)


def test_foreign_config_with_target_is_never_instantiated(tmp_path):
    """A checkpoint's stored config is data: a `_target_` in it is not called."""
    from rlrun.cli import config_from_checkpoint

    marker = tmp_path / "PWNED"
    cfg = compose(TINY)
    raw = OmegaConf.to_container(cfg, resolve=True)
    raw["network"]["_target_"] = "pathlib.Path.touch"
    raw["network"]["self"] = str(marker)
    with pytest.raises(CheckpointError):  # an unknown key fails validation; nothing is instantiated
        config_from_checkpoint({"config": OmegaConf.to_yaml(OmegaConf.create(raw))})
    assert not marker.exists()


def test_a_flipped_byte_in_a_weight_is_caught(tmp_path):
    """torch.load does not check CRCs: without rlrun's check this file loads with a wrong weight."""
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    save_checkpoint(good, payload(1.0))
    data = bytearray(good.read_bytes())
    at = data.index(np.full(3, 1.0, dtype=np.float32).tobytes())  # the tensor's storage, stored uncompressed
    data[at + 1] ^= 0x01
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC"):
        load_checkpoint(bad)


@pytest.mark.parametrize(("content", "needle"), [(b"hello\n", "is not a checkpoint"),
                                                 (b"PK\x03\x04" + bytes(64), "corrupt")])
def test_garbage_checkpoints_fail_clearly_through_the_clis(tmp_path, content, needle):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(content)
    proc = rlrun(tmp_path / "new", *TINY, f"resume={run_dir}", check=False, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([str(BIN / "rlrun-eval"), str(run_dir), "--checkpoint", "last"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr


def test_a_replay_buffer_file_without_its_arrays_is_a_clear_error():
    from rlrun.buffers import ReplayBuffer

    buffer = ReplayBuffer(4, (2,), (), torch.int64, torch.device("cpu"))
    with pytest.raises(ValueError, match="lacks obs"):
        buffer.load_arrays({"next_obs": np.zeros((0, 2)), "actions": np.zeros(0), "rewards": np.zeros(0),
                            "terminated": np.zeros(0), "pos_size": np.zeros(2, dtype=np.int64)})


def test_a_replay_buffer_whose_arrays_disagree_is_a_clear_error(tmp_path):
    """Arrays that pass the zip's checksums but do not make a buffer: refused with the file's name, not a
    traceback from inside torch's copy (or Python's "not enough values to unpack")."""
    run_dir = tmp_path / "run"
    build_run(run_dir, "total_steps=400").train()
    (buffer_file,) = (run_dir / "checkpoints").glob("last-buffer-*.npz")
    with np.load(buffer_file, allow_pickle=False) as data:
        good = {key: data[key] for key in data.files}
    for damage, message in [({"actions": good["actions"][:100]}, "actions is int64 \\(100,\\)"),
                            ({"pos_size": good["pos_size"][:1]}, "pos_size is"),
                            ({"obs": good["obs"][:, :2]}, "obs is float32"),
                            ({"pos_size": np.array([5, 3])}, "position 5 and size 3")]:
        np.savez(buffer_file.with_suffix(""), **{**good, **damage})  # np.savez adds the .npz back
        with pytest.raises(CheckpointError, match=f"replay buffer {buffer_file.name} next to .*{message}"):
            build_run(run_dir, "total_steps=800", "resume=auto")


def test_rlrun_eval_does_not_import_a_module_a_checkpoint_names(tmp_path):
    """Gymnasium imports `module` for an id `module:Env`: from a checkpoint that would be code chosen by data."""
    run_dir = tmp_path / "run"
    rlrun(run_dir, *TINY)
    path = run_dir / "checkpoints" / "last.pt"
    stored = torch.load(path, weights_only=True)
    stored["config"] = stored["config"].replace("id: CartPole-v1", "id: this:CartPole-v1")
    save_checkpoint(path, stored)
    proc = subprocess.run([str(BIN / "rlrun-eval"), str(run_dir), "--checkpoint", "last"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--import-env-module" in proc.stderr
    assert "Beautiful is better than ugly" not in proc.stdout  # `import this` prints the Zen of Python


def _assert_best_matches_the_evaluations(run_dir: Path) -> None:
    """best.pt is the first evaluation with the highest mean in evaluations.csv, which summary.json reports."""
    from conftest import read_evaluations

    rows = read_evaluations(run_dir)
    best_row = max(rows, key=lambda row: row["return_mean"])  # the first of equal maxima, as the run keeps it
    assert read_summary(run_dir)["best_return_mean"] == pytest.approx(best_row["return_mean"])
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["step"] == int(best_row["step"])
    assert all(bool(value.abs().sum() > 0) for key, value in best["model"].items() if key.endswith("weight"))


def test_a_best_pt_from_past_the_last_checkpoint_is_put_back_on_resume(tmp_path):
    """kill -9 after an evaluation wrote a new best.pt but before the next checkpoint: the resumed run drops that
    evaluation's row and goes on from the checkpoint's best, so best.pt must be the checkpoint's best again, in
    place and when the checkpoint is continued into a new directory."""
    run_dir = tmp_path / "run"
    build_run(run_dir, "total_steps=400").train()
    _assert_best_matches_the_evaluations(run_dir)
    # What the kill leaves: a best.pt (and an evaluation row) from step 600, after last.pt's step 400.
    forged = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    forged["step"] = 600
    forged["model"] = {key: torch.zeros_like(value) for key, value in forged["model"].items()}
    save_checkpoint(run_dir / "checkpoints" / "best.pt", forged)
    with open(run_dir / "evaluations.csv", "a") as handle:
        handle.write("600,1.0,500.0,0.0,500.0\n")
    build_run(tmp_path / "continued", "total_steps=400", f"resume={run_dir}").train()
    _assert_best_matches_the_evaluations(tmp_path / "continued")
    build_run(run_dir, "total_steps=400", "resume=auto").train()
    _assert_best_matches_the_evaluations(run_dir)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    build_run(run_dir, "total_steps=400").train()
    return run_dir


@pytest.mark.parametrize("damage, needle", [
    ({"best": "x"}, 'its copy of the best evaluation\'s weights ("best") is not a checkpoint payload'),
    ({"best": {"step": 3}}, '("best") is not a checkpoint payload'),
    ({"buffer_file": "../../../../etc/passwd"}, "names its replay buffer '../../../../etc/passwd', which is not"),
    ({"buffer_file": "/etc/passwd"}, "which is not the name of a file beside it"),
    ({"buffer_file": 5}, "names its replay buffer 5"),
    ({"step": -5}, "is damaged: its step is -5"),
    ({"step": "abc"}, "is damaged: its step is 'abc'"),
])
def test_a_damaged_last_pt_is_refused_on_resume_naming_what_is_wrong(tmp_path, trained_run, damage, needle):
    """Fields of last.pt that rlrun writes and reads back: each damaged one is named (they used to fail with a
    message about something else, or, a bad step, to resume)."""
    import re
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    torch.save({**load_checkpoint(last), **damage}, last)  # save_checkpoint would rewrite buffer_file
    with pytest.raises(CheckpointError, match=re.escape(needle)):
        build_run(run_dir, "total_steps=800", "resume=auto")


def test_a_last_pt_whose_run_state_holds_the_wrong_kind_of_value_is_refused_naming_it(tmp_path, trained_run):
    """A hand-edited runner state (a step that is not a number): the error named neither the file nor the field's
    role ("invalid literal for int() with base 10: 'garbage'"); now it names the checkpoint."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    payload = load_checkpoint(last)
    payload["runner_state"]["global_step"] = "garbage"
    torch.save(payload, last)
    with pytest.raises(CheckpointError, match=f"{last} does not hold a whole rlrun run state \\(ValueError: "):
        build_run(run_dir, "total_steps=1600", "resume=auto")


def test_a_checkpoint_from_before_best_was_kept_in_last_pt_keeps_its_best_pt(tmp_path):
    """A last.pt written before it carried "best": the best.pt beside it stays, and is what this run's later
    checkpoints carry (a review found the next resume deleting it when no new evaluation beat the old best)."""
    run_dir = tmp_path / "run"
    build_run(run_dir, "total_steps=400").train()
    last = run_dir / "checkpoints" / "last.pt"
    legacy = load_checkpoint(last)
    legacy.pop("best")
    legacy["run_state"]["best_return_mean"] = 1e9  # so no evaluation of the resumed run writes a new best.pt
    save_checkpoint(last, legacy, load_buffer(last, legacy), step=legacy["step"])
    build_run(run_dir, "total_steps=800", "resume=auto").train()
    assert load_checkpoint(last)["best"]["step"] == 400
    build_run(run_dir, "total_steps=800", "resume=auto").train()  # requeued once more
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["step"] == 400


def test_a_checkpoint_whose_config_predates_the_transfer_section_still_resumes(tmp_path):
    """Settings that an older rlrun did not write (its config had no `transfer:`) are not changes."""
    import yaml

    run_dir = tmp_path / "run"
    build_run(run_dir, "total_steps=400").train()
    last = run_dir / "checkpoints" / "last.pt"
    old = load_checkpoint(last)
    config = yaml.safe_load(old["config"])
    del config["transfer"]
    old["config"] = yaml.safe_dump(config)
    save_checkpoint(last, old, load_buffer(last, old), step=old["step"])
    build_run(run_dir, "total_steps=800", "resume=auto").train()
    assert read_summary(run_dir)["steps_done"] >= 800


def test_requeueing_a_finished_run_leaves_its_summary_and_checkpoint_as_they_were(tmp_path):
    run_dir = tmp_path / "run"
    build_run(run_dir).train()
    kept = {name: (run_dir / name).read_bytes() for name in ("summary.json", "checkpoints/last.pt",
                                                             "checkpoints/best.pt", "evaluations.csv")}
    assert read_summary(run_dir)["steps_per_second"] > 0 and read_summary(run_dir)["resumed_from"] is None
    build_run(run_dir, "resume=auto").train()  # the same command, requeued after the run had completed
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    # Continued into a new directory with nothing left to do: no throughput to report, not 0.
    build_run(tmp_path / "continued", f"resume={run_dir}").train()
    summary = read_summary(tmp_path / "continued")
    assert summary["status"] == "completed" and summary["steps_per_second"] is None
    assert load_checkpoint(tmp_path / "continued" / "checkpoints" / "last.pt")["step"] == summary["steps_done"]


@pytest.mark.parametrize("change", ["network.activation=tanh", "network.hidden=[16,16]"])
def test_a_resume_that_changes_the_network_is_refused_clearly(tmp_path, change):
    run_dir = tmp_path / "run"
    build_run(run_dir, "total_steps=400").train()
    with pytest.raises(CheckpointError, match="cannot resume .* with another network"):
        build_run(run_dir, "total_steps=800", "resume=auto", change)


@pytest.mark.parametrize("change", ["transfer=finetune", "transfer.lr_scale=0.5"])
def test_a_resume_that_changes_the_transfer_is_refused_clearly(tmp_path, change):
    """The frozen set and the optimizer's param groups belong to the transfer settings the run started with
    (torch's own "parameter group that doesn't match" came out before)."""
    source, run_dir = tmp_path / "source", tmp_path / "run"
    build_run(source, "total_steps=400").train()
    transfer = ["transfer=freeze", f"transfer.source={source}"]
    build_run(run_dir, "total_steps=400", *transfer).train()
    with pytest.raises(CheckpointError, match="cannot resume .* with another transfer"):
        build_run(run_dir, "total_steps=800", "resume=auto", *transfer, change)
    build_run(run_dir, "total_steps=800", "resume=auto", *transfer).train()  # the same settings resume
    assert read_summary(run_dir)["steps_done"] >= 800


def test_a_full_disk_as_the_run_starts_is_a_clear_error(tmp_path):
    """The first file the run writes (evaluations.csv) does not fit: one line naming the problem and exit 1, not
    a traceback. (Checkpoint writes that fail have their own message: the tests above.)"""
    script = textwrap.dedent(f"""
        import errno, sys
        import rlrun.logger

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", "evaluations.csv")

        rlrun.logger.EvaluationsCsv.__init__ = full
        sys.argv = ["rlrun", "hydra.run.dir={tmp_path / 'run'}", *{TINY!r}]
        from rlrun.cli import main
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "cannot read or write the run's files under" in proc.stderr and "No space left on device" in proc.stderr


@pytest.mark.parametrize("kill_a_worker", [False, True])
def test_a_process_that_leaves_async_envs_open_still_exits(tmp_path, kill_a_worker):
    """Async env workers ignore SIGTERM (a signal to the process group is the main process's to handle), so at exit
    rlrun closes the envs still open; multiprocessing would otherwise SIGTERM the workers and wait for ever. Also
    when a worker has died (gymnasium's close stops at its broken pipe), and when multiprocessing's exit handler was
    registered again after rlrun's import (its first get_logger() does that)."""
    script = tmp_path / "leave_open.py"
    script.write_text(textwrap.dedent(f"""
        import multiprocessing, os, signal
        from omegaconf import OmegaConf
        from rlrun.config import compose
        from rlrun.envs import make_vec_env

        if __name__ == "__main__":
            multiprocessing.get_logger()
            envs = make_vec_env(OmegaConf.to_object(compose(["env=cartpole", "env.vectorization=async"])).env, 3)
            envs.reset(seed=0)
            if {kill_a_worker}:
                os.kill(envs.processes[0].pid, signal.SIGKILL)
                envs.processes[0].join()
            print("exiting with the envs open", flush=True)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0 and "exiting with the envs open" in proc.stdout, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_checkpoint_that_does_not_fit_after_its_buffer_did_leaves_no_buffer_file(tmp_path, monkeypatch):
    """The new replay-buffer file fits, the checkpoint naming it does not: the buffer file is removed (it took
    the space the disk lacked, named by nothing); the previous pair is whole."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload(1.0), {"x": np.ones(4)}, step=1)
    monkeypatch.setattr(files, "open", FullDisk(room=20_000), raising=False)  # the buffer's ~1 KB fits
    with pytest.raises(files.DiskFull, match="no space left"):
        save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}, "step": 2}, {"x": np.zeros(8)}, step=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-buffer-1.npz", "last.pt"]
    np.testing.assert_array_equal(load_buffer(path, load_checkpoint(path))["x"], np.ones(4))


def test_a_ctrl_c_right_after_the_checkpoint_s_rename_keeps_the_buffer_it_names(tmp_path, monkeypatch):
    """The new last.pt is in place when the interrupt lands: the buffer file it names must stay (a review found the
    cleanup of an unreferenced buffer deleting it, which left a run that could not be resumed)."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload(1.0), {"x": np.ones(4)}, step=1)
    real_replace = os.replace

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        if Path(dst) == path:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, payload(2.0), {"x": np.full(4, 2.0)}, step=2)
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert loaded["step"] == 2 and loaded["buffer_file"] == "last-buffer-2.npz"
    np.testing.assert_array_equal(load_buffer(path, loaded)["x"], np.full(4, 2.0))


def test_a_refused_run_leaves_the_lock_file_as_it_was(tmp_path):
    """The lock file holds the pid of the process training there (what a refusal names); a refused run writes it
    back as it was, or removes it where there was none."""
    build_run(tmp_path).train()
    before = (tmp_path / ".lock").read_bytes()
    assert before.startswith(f"pid {os.getpid()} on ".encode())
    (tmp_path / ".lock").write_bytes(b"pid 1 on elsewhere\n")
    with pytest.raises(ValueError, match="already holds a run"):
        build_run(tmp_path)
    assert (tmp_path / ".lock").read_bytes() == b"pid 1 on elsewhere\n"
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError):
        build_run(fresh, "total_steps=-1")
    assert not (fresh / ".lock").exists()


def test_a_file_size_limit_fails_the_run_with_status_1_and_keeps_its_checkpoint(tmp_path):
    """`ulimit -f` (EFBIG, SIGXFSZ ignored as a batch system may): a failure, not bad input (exit 1, it was 2 for a
    full disk and a bare errno for a size limit), saying what was kept."""
    run_dir = tmp_path / "run"
    command = (f"ulimit -f 32; trap '' XFSZ; exec {BIN / 'rlrun'} hydra.run.dir={run_dir} log.progress=none "
               f"algo=dqn env=cartpole network.hidden=[64] total_steps=3000 checkpoint.every_steps=500 "
               f"eval.every_steps=0 eval.episodes=1 log.tensorboard=false algo.buffer_size=100000")
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1, proc.stderr
    assert "no space left (File too large) while writing" in proc.stderr and "kept unchanged" in proc.stderr
    assert "Traceback" not in proc.stderr
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and summary["checkpoint_step"] > 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == summary["checkpoint_step"]
    assert not list((run_dir / "checkpoints").glob(".*.tmp-*"))


def test_temp_files_of_a_process_killed_mid_write_are_removed_at_the_next_start(tmp_path):
    """A `kill -9` during a checkpoint write leaves `.last.pt.tmp-<pid>`, up to a checkpoint's size: the next run
    in that directory removes it; a live process's temp file (rlrun-eval writing beside the run) stays."""
    build_run(tmp_path).train()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / "checkpoints" / f".last.pt.tmp-{dead}"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".eval_best.json.tmp-{os.getppid()}"
    live.write_text("{}")
    run = build_run(tmp_path, "total_steps=1200", "resume=auto")
    assert not stale.exists() and live.exists()
    run.close()


def test_a_second_process_in_a_run_directory_is_refused(tmp_path):
    """Two sessions in one directory (a requeued job overlapping the first) interleaved evaluations.csv rows and
    checkpoints; the second is refused while the first holds the directory's lock, and accepted after."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from rlrun.files import RunDirLock
        lock = RunDirLock({str(tmp_path)!r})
        lock.acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(files.RunDirInUse, match=f"is in use by another rlrun process \\(pid {holder.pid} on "):
            build_run(tmp_path)
        assert not (tmp_path / "evaluations.csv").exists() and not (tmp_path / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    build_run(tmp_path).train()  # the lock went with the process
    assert read_summary(tmp_path)["status"] == "completed"


def test_a_continuation_that_dies_before_its_first_checkpoint_can_be_run_again(tmp_path):
    """Continuing another run's checkpoint into a new directory wrote the best.pt it carries over at start: killed
    before its first last.pt, the same command was then refused ("already holds a run"), and resume=auto started
    from step 0. The carried best.pt is written with the first last.pt."""
    source = tmp_path / "source"
    build_run(source).train()
    run = build_run(tmp_path / "new", f"resume={source}", "total_steps=1600")
    assert not (tmp_path / "new" / "checkpoints" / "best.pt").exists()
    run.close()  # as if killed here, before its first checkpoint
    again = build_run(tmp_path / "new", f"resume={source}", "total_steps=1600")
    assert again.runner.global_step == 800  # the same command continues from the source's step
    again.train()
    best = load_checkpoint(tmp_path / "new" / "checkpoints" / "best.pt")
    assert best["step"] in (400, 800, 1200, 1600)  # carried over, or a better evaluation of the continuation


def test_an_evaluations_csv_shorter_than_its_checkpoint_recorded_is_not_padded(tmp_path, capsys):
    """Lengthening the file to the recorded size filled it with NUL bytes (rlrun-plot then failed on it): the
    complete rows are kept, new ones follow, and the run says what was lost."""
    build_run(tmp_path, "log.progress=plain").train()
    csv_path = tmp_path / "evaluations.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:-1]) + lines[-1][:5])  # the last row cut in the middle
    build_run(tmp_path, "log.progress=plain", "total_steps=1600", "resume=auto").train()
    text = csv_path.read_bytes().decode()
    assert "\0" not in text
    rows = text.splitlines()
    assert rows[0].startswith("step,") and rows[1:-2] == [line.rstrip("\n") for line in lines[1:-1]]
    assert all(len(row.split(",")) == 5 for row in rows[1:]) and int(rows[-1].split(",")[0]) == 1600
    assert "is shorter than the checkpoint recorded" in capsys.readouterr().out
