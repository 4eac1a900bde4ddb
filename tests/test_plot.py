"""`rlrun-plot`: learning curves grouped by configuration, mean and spread over seeds, a real PNG."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BIN, REPO

from rlrun.plot import _env_and_threshold, coverage_note, main, mean_and_spread, plot
from rlrun.sweep import find_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_mean_and_spread_interpolates_seeds_onto_a_common_grid():
    a = (np.array([0.0, 10.0, 20.0]), np.array([0.0, 10.0, 20.0]))
    b = (np.array([0.0, 10.0, 20.0]), np.array([10.0, 30.0, 50.0]))
    grid, mean, std = mean_and_spread([a, b], points=3)
    assert grid.tolist() == [0.0, 10.0, 20.0]
    assert mean.tolist() == [5.0, 20.0, 35.0] and std.tolist() == [5.0, 10.0, 15.0]
    # Seeds that evaluated at other steps: compared only where both have data (5..20), interpolated.
    c = (np.array([5.0, 20.0, 25.0]), np.array([5.0, 20.0, 0.0]))
    grid, mean, _ = mean_and_spread([a, c], points=4)
    assert grid[0] == 5.0 and grid[-1] == 20.0
    assert np.allclose(mean, grid)  # both are y = x on [5, 20]


def test_seeds_without_a_common_range_are_averaged_where_they_have_data_never_extrapolated():
    """One seed stopped at step 2,048, another's evaluations start at 3,072: each point is the seeds' own data (it
    was one point at 2,048 whose 'mean' took the second seed's value at 3,072)."""
    a = (np.array([1024.0, 2048.0]), np.array([10.0, 20.0]))
    b = (np.array([3072.0, 4096.0]), np.array([300.0, 400.0]))
    grid, mean, std = mean_and_spread([a, b])
    assert grid.tolist() == [1024.0, 2048.0, 3072.0, 4096.0]
    assert mean.tolist() == [10.0, 20.0, 300.0, 400.0] and not std.any()
    assert "do not overlap" in coverage_note([a, b])


def test_coverage_note_says_where_a_group_s_curve_stops_short_of_a_seed():
    a = (np.array([1024.0, 2048.0, 3072.0]), np.array([1.0, 2.0, 3.0]))
    b = (np.array([1030.0]), np.array([1.0]))  # stopped after its first evaluation
    assert coverage_note([a, b]) == "drawn where all have data, to step 1,030 (one reaches step 3,072)"
    assert coverage_note([a, b], "wall") == "drawn where all have data, to 1,030.0 s (one reaches 3,072.0 s)"
    overshoot = (np.array([1030.0, 2050.0, 3100.0]), np.array([1.0, 2.0, 3.0]))  # a rollout past each eval step
    assert coverage_note([a, overshoot]) == "" and coverage_note([a]) == ""


def _fake_run(root: Path, name: str, overrides: list[str], seed: int, slope: float, env_id: str = "CartPole-v1",
              threshold: float | None = 475) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"seed": seed, "env": {"id": env_id, "reward_threshold": threshold}}))
    lines = ["step,wall_time_s,return_mean,return_std,length_mean"]
    for i in range(1, 11):
        step = i * 1000 + seed  # seeds evaluate at slightly different steps
        lines.append(f"{step},{i * 0.5 + seed * 0.1:.3f},{slope * i + 10 * seed:.6f},1.0,{slope * i:.3f}")
    (run / "evaluations.csv").write_text("\n".join(lines) + "\n")
    (run / "summary.json").write_text(json.dumps({"seed": seed, "env_id": env_id, "reward_threshold": threshold}))
    return run


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for i, (algo, seed) in enumerate([("dqn", 0), ("dqn", 1), ("dqn", 2), ("double_dqn", 0), ("double_dqn", 1)]):
        _fake_run(root, f"{i}_algo={algo},seed={seed}", [f"algo={algo}", f"seed={seed}", "total_steps=10000"],
                  seed, 40.0 if algo == "dqn" else 20.0)
    return root


def _assert_png(path: Path, min_bytes: int = 20_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"


def test_plot_groups_runs_by_configuration_minus_seed(sweep, tmp_path):
    drawn = plot([sweep], tmp_path / "curves.png")
    assert drawn == {"algo=dqn": "3 seeds", "algo=double_dqn": "2 seeds"}
    _assert_png(tmp_path / "curves.png")


def test_plot_counts_runs_that_share_a_seed_as_runs(sweep, tmp_path):
    """A repeat of seed 0 (its own directory, the same settings) is a fourth run, not a fourth seed."""
    _fake_run(sweep, "5_algo=dqn,seed=0", ["algo=dqn", "seed=0", "total_steps=10000"], 0, 40.0)
    drawn = plot([sweep], tmp_path / "curves.png")
    assert drawn == {"algo=dqn": "4 runs, 3 seeds", "algo=double_dqn": "2 seeds"}


def test_plot_reads_interpolations_in_a_runs_files_as_text(tmp_path, monkeypatch):
    """A run directory is data: `${oc.env:…}` in its .hydra/config.yaml is drawn as it is, never resolved."""
    monkeypatch.setenv("RLRUN_TEST_SECRET", "s3cr3t")
    run = _fake_run(tmp_path / "runs", "run", ["algo=dqn"], 0, 1.0, env_id="${oc.env:RLRUN_TEST_SECRET}")
    (run / "summary.json").write_text(json.dumps({"seed": 0}))  # the env id then comes from the config
    drawn = plot([run], tmp_path / "curves.png")
    assert drawn == {"all runs": "1 seed"}
    assert _env_and_threshold(find_runs([run], marker="evaluations.csv")[0])[0] == "${oc.env:RLRUN_TEST_SECRET}"


def test_plot_puts_each_env_in_its_own_panel(sweep, tmp_path):
    other = tmp_path / "other"
    _fake_run(other, "run", ["algo=dqn", "env=acrobot"], 0, 5.0, env_id="Acrobot-v1", threshold=-100)
    drawn = plot([sweep, other / "run"], tmp_path / "two.png", x_axis="wall")
    assert drawn["CartPole-v1: algo=dqn"] == "3 seeds" and drawn["Acrobot-v1: all runs"] == "1 seed"
    _assert_png(tmp_path / "two.png")


def test_rlrun_plot_command_writes_a_png_and_reports_the_groups(sweep, tmp_path):
    out = tmp_path / "fig" / "curves.png"
    proc = subprocess.run([str(BIN / "rlrun-plot"), str(sweep), "-o", str(out), "--x", "steps"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "algo=dqn: 3 seeds" in proc.stdout and "algo=double_dqn: 2 seeds" in proc.stdout
    _assert_png(out)


def test_rlrun_plot_fails_clearly_on_a_directory_without_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        proc = subprocess.run([str(BIN / "rlrun-plot"), str(path), "-o", str(tmp_path / "x.png")],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert proc.returncode == 2
        assert "rlrun-plot error:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("content", [b"step,wall_time_s,return_mean,return_std,length_mean\n100,1.0,\n",
                                     b"when,what\n1,2\n", b"\x89\xff\xfe\x00garbage"])
def test_rlrun_plot_fails_clearly_on_an_unreadable_evaluations_csv(tmp_path, content):
    """A truncated row, foreign columns, binary junk: a one-line error naming the file and exit 2."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "evaluations.csv").write_bytes(content)
    proc = subprocess.run([str(BIN / "rlrun-plot"), str(run), "-o", str(tmp_path / "x.png")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a readable evaluations.csv" in proc.stderr and str(run) in proc.stderr


@pytest.mark.parametrize("name", ["curves.xyz", "curves", "/proc/curves.png"])
def test_rlrun_plot_fails_clearly_on_an_output_it_cannot_write(sweep, tmp_path, name):
    """An unknown image suffix (or none: matplotlib would add .png behind the user's back) is a usage error;
    an unwritable path is a one-line error."""
    output = name if name.startswith("/") else str(tmp_path / name)
    proc = subprocess.run([str(BIN / "rlrun-plot"), str(sweep), "-o", output], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and output in proc.stderr
    assert not list(tmp_path.glob("curves*"))


def test_rlrun_plot_leaves_out_damaged_run_files_and_says_so(sweep, tmp_path):
    """One run of a sweep with a broken .hydra/overrides.yaml and a summary.json that is not an object: drawn
    from its evaluations.csv with a warning naming the file, not a traceback for the whole plot."""
    broken = sweep / "0_algo=dqn,seed=0"
    (broken / ".hydra" / "overrides.yaml").write_text("{{{: [")
    (broken / "summary.json").write_text("[1, 2]")
    (sweep / "2_algo=dqn,seed=2" / "summary.json").write_text(json.dumps({"seed": "two", "reward_threshold": "x"}))
    (sweep / "1_algo=dqn,seed=1" / ".hydra" / "config.yaml").write_text("- a list\n")
    proc = subprocess.run([str(BIN / "rlrun-plot"), str(sweep), "-o", str(tmp_path / "x.png")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"ignoring {broken / '.hydra' / 'overrides.yaml'}: not readable YAML" in proc.stderr
    assert "config.yaml: a list, not a dict" in proc.stderr
    _assert_png(tmp_path / "x.png")


@pytest.mark.parametrize("config_yaml", ["null: 1\nseed: 0\n", "2020-01-01: 1\nseed: 0\n", "seed: 2020-01-01\n"])
def test_rlrun_plot_leaves_out_a_config_that_omegaconf_cannot_hold(sweep, tmp_path, config_yaml):
    """Readable YAML whose keys or values OmegaConf refuses (a null or date key, a date value): that run's config
    is left out with a warning, as unreadable YAML is (it used to be OmegaConf's traceback)."""
    config = sweep / "3_algo=double_dqn,seed=0" / ".hydra" / "config.yaml"
    config.write_text(config_yaml)
    proc = subprocess.run([str(BIN / "rlrun-plot"), str(sweep), "-o", str(tmp_path / "x.png")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"ignoring {config}: not a config" in proc.stderr
    _assert_png(tmp_path / "x.png")


def test_a_group_cut_short_by_a_seed_that_stopped_early_says_so(sweep, tmp_path, capsys):
    csv = sweep / "0_algo=dqn,seed=0" / "evaluations.csv"
    csv.write_text("".join(csv.read_text().splitlines(keepends=True)[:3]))  # seed 0 stopped after 2 evaluations
    main([str(sweep), "-o", str(tmp_path / "curves.png")])
    out = capsys.readouterr().out
    assert "algo=dqn: 3 seeds; drawn where all have data, to step 2,000 (one reaches step 10,002)" in out
    assert "algo=double_dqn: 2 seeds\n" in out


def test_rlrun_plot_fails_clearly_when_the_format_s_writer_fails(sweep, tmp_path, monkeypatch, capsys):
    """.pgf passes the suffix check but needs LaTeX: one line and exit 2 (it was matplotlib's traceback)."""
    import matplotlib.figure

    def no_latex(self, *args, **kwargs):
        raise RuntimeError("'xelatex' not found.  Install it or change rcParams['pgf.texsystem'].\nmore")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", no_latex)
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "-o", str(tmp_path / "curves.pgf")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("rlrun-plot error: cannot write") and "in the .pgf format: 'xelatex' not found." in err
    assert len(err.strip().splitlines()) == 1
