"""Episode video: `rlrun-eval RUN --video` and `eval.video=true` write playable MP4s (Gymnasium's RecordVideo)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, REPO, rlrun

# Acrobot: an untrained greedy policy rarely swings up, so an evaluation episode runs its full 500 steps —
# a real video whatever the (tiny) training did; capped at 150 steps to keep the test fast.
TINY = ["algo=dqn", "env=acrobot", "env.max_episode_steps=150", "total_steps=300", "eval.episodes=1", "algo.learning_starts=100",
        "algo.train_freq=50", "algo.gradient_steps=2", "algo.batch_size=16", "log.tensorboard=false"]


def assert_playable_mp4(path: Path, min_bytes: int = 10_000) -> int:
    """A valid MP4 container of non-trivial size that ffmpeg decodes; returns its frame count."""
    import imageio_ffmpeg

    data = path.read_bytes()
    assert data[4:8] == b"ftyp", f"{path} is not an MP4 (ISO base media) file"
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert frames > 10 and seconds > 0
    return frames


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("video") / "run"
    rlrun(run_dir, *TINY, "eval.every_steps=0")
    return run_dir


def test_rlrun_eval_video_writes_an_mp4_per_episode(trained):
    proc = subprocess.run([str(BIN / "rlrun-eval"), str(trained), "--episodes", "2", "--video"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    videos = [Path(p) for p in report["videos"]]
    assert [p.name for p in videos] == ["eval-best-ep0.mp4", "eval-best-ep1.mp4"]
    for video, length in zip(videos, [report["length_mean"]] * 2):
        assert video.parent == trained / "videos"
        assert assert_playable_mp4(video) >= min(length, 100)
    # Recording does not change what is evaluated.
    plain = subprocess.run([str(BIN / "rlrun-eval"), str(trained), "--episodes", "2"],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
    assert json.loads(plain.stdout)["returns"] == report["returns"]


def test_eval_video_records_one_episode_per_periodic_evaluation(tmp_path):
    run_dir = tmp_path / "run"
    rlrun(run_dir, *TINY, "eval.every_steps=150", "eval.video=true")
    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["step00000150.mp4", "step00000300.mp4"]
    for video in videos:
        assert_playable_mp4(video)


def test_a_renderer_s_missing_package_is_refused_when_the_recorder_is_built(tmp_path, monkeypatch):
    """Without pygame, Gymnasium's classic-control and Box2D envs cannot render: rlrun-eval --video and
    eval.video=true say so before any episode runs (rlrun-eval printed a traceback from the first render)."""
    import gymnasium as gym
    from gymnasium.envs.classic_control.acrobot import AcrobotEnv

    from rlrun.config import EnvConfig
    from rlrun.evaluation import Evaluator

    def no_pygame(self):
        raise gym.error.DependencyNotInstalled('pygame is not installed, run `pip install "gymnasium[classic-control]"`')

    monkeypatch.setattr(AcrobotEnv, "render", no_pygame)
    with pytest.raises(ValueError, match="recording video of Acrobot-v1 needs a package that is not installed: "
                                         "pygame is not installed"):
        Evaluator(EnvConfig(id="Acrobot-v1"), 1, 0, video_dir=tmp_path / "videos")
    Evaluator(EnvConfig(id="Acrobot-v1"), 1, 0).close()  # without video nothing renders
