"""The `rlrun` and `rlrun-eval` commands as a user runs them: outputs on disk, clear errors on bad input."""

import json
import signal
import subprocess

import pytest
import torch
import yaml
from conftest import BIN, REPO, read_evaluations, read_summary, rlrun

from rlrun.evaluation import eval_base_seed

TINY = ["algo=dqn", "env=cartpole", "total_steps=600", "eval.every_steps=300", "eval.episodes=2",
        "algo.learning_starts=100", "algo.train_freq=50", "algo.gradient_steps=5", "algo.batch_size=16"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    proc = rlrun(run_dir, *TINY, "log.tensorboard=true")
    return run_dir, proc


def test_run_directory_holds_the_contract(tiny_run):
    run_dir, proc = tiny_run
    hydra_dir = run_dir / ".hydra"  # written by rlrun once the run is accepted, as Hydra writes it
    assert yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) == ["log.progress=plain", *TINY,
                                                                          "log.tensorboard=true"]
    config = yaml.safe_load((hydra_dir / "config.yaml").read_text())
    assert config["total_steps"] == 600 and config["algo"]["batch_size"] == 16 and "hydra" not in config
    hydra_yaml = yaml.safe_load((hydra_dir / "hydra.yaml").read_text())["hydra"]
    assert hydra_yaml["runtime"]["choices"]["algo"] == "dqn" and hydra_yaml["runtime"]["output_dir"] == str(run_dir)
    assert (run_dir / "checkpoints" / "last.pt").exists() and (run_dir / "checkpoints" / "best.pt").exists()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    summary = read_summary(run_dir)
    for key in ("algo", "env_id", "seed", "total_steps", "steps_done", "wall_time_s", "steps_per_second",
                "final_return_mean", "best_return_mean", "solved_at_step", "solved_at_wall_time_s", "status"):
        assert key in summary
    assert summary["status"] == "completed" and summary["algo"] == "dqn" and summary["env_id"] == "CartPole-v1"
    assert summary["steps_done"] >= 600 and summary["steps_per_second"] > 0
    rows = read_evaluations(run_dir)
    assert [row["step"] for row in rows] == [300, 600]
    assert (run_dir / "evaluations.csv").read_text().splitlines()[0] == \
        "step,wall_time_s,return_mean,return_std,length_mean"
    assert summary["final_return_mean"] == pytest.approx(rows[-1]["return_mean"], abs=1e-5)
    assert summary["best_return_mean"] == pytest.approx(max(r["return_mean"] for r in rows), abs=1e-5)
    assert "[completed] dqn on CartPole-v1" in proc.stdout  # the summary line
    assert not (run_dir.parent / "sweep_summary.csv").exists()  # a single run is not a sweep


def test_checkpoint_loads_with_weights_only(tiny_run):
    run_dir, _ = tiny_run
    payload = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert "q.head.weight" in payload["model"] and "q_target.head.weight" in payload["model"]
    assert payload["step"] == 600


def test_tensorboard_scalars_written(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = tiny_run
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"charts/episodic_return", "charts/episodic_length", "charts/sps", "losses/td_loss",
            "eval/return_mean"} <= tags
    assert [e.step for e in events.Scalars("eval/return_mean")] == [300, 600]


def test_rlrun_eval_reports_deterministic_return(tiny_run):
    run_dir, _ = tiny_run
    args = [str(BIN / "rlrun-eval"), str(run_dir), "--episodes", "3"]
    first = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    second = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    assert first["episodes"] == 3 and len(first["returns"]) == 3
    assert first["returns"] == second["returns"]  # deterministic policy, fixed seeds
    assert (run_dir / "eval_best.json").exists()


def test_rlrun_eval_reproduces_the_runs_evaluation_with_normalised_observations(tmp_path):
    """The policy acts on normalised observations: rlrun-eval must use the run's statistics (best.pt holds
    them too), and an agent trained with several envs and minibatches larger than one env's rollout builds."""
    run_dir = tmp_path / "run"
    rlrun(run_dir, "algo=ppo", "env=cartpole", "algo.normalize_obs=true", "algo.num_envs=2", "algo.num_steps=64",
          "algo.minibatch_size=128", "total_steps=1024", "eval.every_steps=0", "eval.episodes=3")
    in_run = read_evaluations(run_dir)[-1]["return_mean"]
    for which in ("best", "last"):
        proc = _rlrun_eval(str(run_dir), "--checkpoint", which, "--episodes", "3", "--seed", str(eval_base_seed(0)))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["return_mean"] == pytest.approx(in_run, abs=1e-4)
    assert "obs_norm" in torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)


def test_a_fresh_run_refuses_a_directory_that_holds_a_run(tiny_run):
    run_dir, _ = tiny_run
    kept = {name: (run_dir / name).read_bytes()
            for name in ("summary.json", "evaluations.csv", "checkpoints/best.pt", "checkpoints/last.pt",
                         ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")}
    # Another seed: had the refused command's config been written anywhere, .hydra/ would show it.
    _assert_clean_failure(rlrun(run_dir, *TINY, "seed=7", check=False), "already holds a run", "resume=")
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept


def test_stop_at_return_stops_early(tmp_path):
    rlrun(tmp_path / "run", *TINY, "stop_at_return=-1000")  # any eval mean reaches it
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "stopped" and summary["steps_done"] < 600


def test_eval_every_zero_still_runs_a_final_evaluation(tmp_path):
    rlrun(tmp_path / "run", *TINY, "eval.every_steps=0")
    assert [row["step"] for row in read_evaluations(tmp_path / "run")] == [600]


def _assert_clean_failure(proc, *needles):
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in output, output


# Each row: overrides, then what the one-paragraph error must say. Hydra's own compose errors exit 1.
BAD_INPUT = [
    (["total_steps=many"], ["total_steps"]),
    (["algo.learning_rat=0.1"], ["learning_rat"]),
    (["algo=dqn", "+algo.learning_rat=0.1", "+log.progres=none"],
     ["unknown settings algo.learning_rat (did you mean algo.learning_rate?), log.progres (did you mean "
      "log.progress?), added with `+`", "rlrun algo=dqn --help"]),
    (["total_steps=-5"], ["total_steps must be positive"]),
    (["algo=dqn", "env=pendulum"], ["needs a discrete action space"]),
    (["env.id=NoSuchEnv-v9"], ["NoSuchEnv-v9"]),
    (["device=cuda"] if not torch.cuda.is_available() else ["resume=/no/such/run"], ["cuda"]
     if not torch.cuda.is_available() else ["no checkpoint"]),
    (["resume=/no/such/run"], ["no checkpoint"]),
    (["seed=-1"], ["seed must be in [0, 2^63)"]),
    (["log.every_steps=-1"], ["log.every_steps must be >= 0"]),
    (["torch_threads=-3"], ["torch_threads must be between 0"]),
    (["network.hidden=[-4]"], ["network.hidden"]),
    (["network.hidden=[0]"], ["network.hidden"]),
    (["env=lunarlander", "env.kwargs.gravity=5"], ["gravity"]),
    (["env=cartpole", "env.max_episode_steps=0"], ["env.max_episode_steps must be a positive number"]),
    (["env=gym"], ["env.id has no value and needs one: set it on the command line (env.id=…)"]),
    (["env=pendulum", "algo=ppo", "env.kwargs.g=abc"], ["Pendulum-v1 failed its first reset and step", "'g': 'abc'"]),
    (["env=gym", "env.id=FrozenLake-v1", "algo=ppo"], ["need a Box observation space"]),
    (["env=gym", "env.id=CarRacing-v3", "algo=ppo"], ["flat (1-D) observation vector", "(96, 96, 3)"]),
]
# rlrun's own checks, exit 2: shared hyperparameters out of range are named (torch's own errors name no key;
# gamma=2 used to train), and limits whose violation used to crash (a segfault, a traceback) are refused first.
REFUSED_BY_RLRUN = [
    (["seed=99999999999999999999"], ["seed must be in [0, 2^63), got 99999999999999999999"]),
    (["torch_threads=100000"], ["torch_threads must be between 0", "got 100000"]),  # was a segfault
    (["algo=dqn", "algo.gamma=2"], ["algo.gamma must be in [0, 1], got 2.0"]),
    (["algo=ppo", "algo.gae_lambda=-0.5"], ["algo.gae_lambda must be in [0, 1]"]),
    (["algo=dqn", "algo.tau=0"], ["algo.tau must be in (0, 1]"]),
    (["algo=dqn", "algo.gradient_steps=-3"], ["algo.gradient_steps must be >= 0, or -1"]),
    (["algo=dqn", "algo.exploration_final_eps=2"], ["algo.exploration_final_eps must be in [0, 1]"]),
    (["algo=sac", "env=pendulum", "algo.alpha_lr=-1"], ["algo.alpha_lr must be >= 0, got -1.0"]),
    (["algo=td3", "env=pendulum", "algo.noise_sigma=-1"], ["algo.noise_sigma must be >= 0"]),
    (["algo=ppo", "algo.adam_eps=-1"], ["algo.adam_eps must be >= 0"]),
    (["algo=ppo", "algo.learning_rate=nan"], ["algo.learning_rate must be >= 0, got nan"]),
    (["algo=a2c", "algo.rmsprop_alpha=2"], ["algo.rmsprop_alpha must be in [0, 1]"]),
    (["algo=ppo", "algo.target_kl=-1"], ["algo.target_kl must be positive (or null: off)"]),
    (["algo=vpg", "algo.vf_minibatch_size=0"], ["algo.vf_minibatch_size must be positive"]),
    (["algo=reinforce", "algo.baseline=true", "algo.vf_iters=0"], ["algo.vf_iters must be positive"]),
    (["algo=ppo", "network.hidden=[10000000,10000000]"], ["does not fit in memory", "network.hidden=[10000000"]),
    (["env=gym", "env.id=nosuchmod:Foo-v0"], ["importing its module failed", "nosuchmod"]),
    (["algo=base_dqn"], ["algo=base_dqn is the schema behind the algo presets", "pick algo=dqn"]),
    (["env=base_env"], ["env=base_env is the schema behind the env presets"]),
    # An option no group has, before Hydra composes (its own error lists the base_* schemas among the options).
    (["algo=nope"], ["algo=nope is not one of rlrun's algo presets: a2c, ddpg, double_dqn, dqn, ppo, reinforce, "
                     "sac, td3, trpo, vpg."]),
    (["algo=dpq"], ["algo=dpq is not one of rlrun's algo presets (did you mean algo=dqn?)"]),
    (["network=lrge"], ["did you mean network=large?"]),
    (["experiment=null"], ["experiment=null names no preset"]),  # was Hydra's traceback
]


@pytest.mark.parametrize("overrides, needles, status", [
    *((overrides, needles, 2 if any(o.startswith("+") for o in overrides) else None)
      for overrides, needles in BAD_INPUT),
    *((overrides, needles, 2) for overrides, needles in REFUSED_BY_RLRUN),
])
def test_bad_input_gives_a_clear_error(tmp_path, overrides, needles, status):
    proc = rlrun(tmp_path / "run", "total_steps=100", *overrides, check=False, timeout=120)
    _assert_clean_failure(proc, *needles)
    if status is not None:
        assert proc.returncode == status  # rlrun's own bad-input code (Hydra's compose errors exit 1)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything trained


@pytest.mark.parametrize("args, needle", [
    (["--help", "env=lunarlandr"], "did you mean env=lunarlander?"),  # was a traceback under --help
    (["-m", "algo=dqn,ppoo"], "algo=ppoo is not one of rlrun's algo presets (did you mean algo=ppo?)"),
    (["--hel", "algo.nope=1"], "rlrun --help with these overrides: Could not override 'algo.nope'"),  # a traceback
    (["--cfg", "job", "tuned=ppo_cartpol"], "(did you mean tuned=ppo_cartpole?)"),  # Hydra ignored it
    (["--cfg", "job", "algo=1"], "algo=1 is not one of rlrun's algo presets"),  # Hydra's traceback
])
def test_an_unknown_option_is_refused_under_help_and_in_a_sweep(tmp_path, args, needle):
    proc = subprocess.run([str(BIN / "rlrun"), *args, f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    _assert_clean_failure(proc, needle)
    assert proc.returncode == 2 and not (tmp_path / "sweep").exists()


def _rlrun_eval(*args):
    return subprocess.run([str(BIN / "rlrun-eval"), *args], capture_output=True,
                          text=True, timeout=120)


def test_rlrun_eval_missing_checkpoint(tmp_path):
    _assert_clean_failure(_rlrun_eval(str(tmp_path / "missing.pt")), "does not exist")


def test_rlrun_eval_names_what_is_wrong(tiny_run, tmp_path):
    """A negative --seed, a checkpoint whose step is not a number, weights of another shape: each error says
    which argument or tensor, before any episode runs."""
    from rlrun.checkpoint import load_checkpoint, save_checkpoint

    run_dir, _ = tiny_run
    proc = _rlrun_eval(str(run_dir), "--seed", "-1")
    _assert_clean_failure(proc, "--seed must be >= 0")
    assert proc.returncode == 2
    payload = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    save_checkpoint(tmp_path / "bad_step.pt", {**payload, "step": "abc"})
    _assert_clean_failure(_rlrun_eval(str(tmp_path / "bad_step.pt")), "bad_step.pt is damaged: its step is 'abc'")
    wider = {key: (torch.zeros(value.shape[0] + 1, *value.shape[1:]) if key == "q.head.bias" else value)
             for key, value in payload["model"].items()}
    save_checkpoint(tmp_path / "bad_shape.pt", {**payload, "model": wider})
    _assert_clean_failure(_rlrun_eval(str(tmp_path / "bad_shape.pt")), "size mismatch for head.bias",
                          "did network.* change?")


@pytest.mark.parametrize("env_id", ["${oc.env:RLRUN_TEST_SECRET}", "x\\${oc.env:RLRUN_TEST_SECRET}"])
def test_rlrun_eval_does_not_resolve_interpolations_in_a_checkpoints_config(tmp_path, tiny_run, monkeypatch, env_id):
    """A checkpoint is data: `${oc.env:…}` in its stored config stays text, it does not read this machine's
    environment (here it then names no registered env, and is refused as such). A backslash before it (which
    OmegaConf would read as an escaped backslash, then a live interpolation) does not change that."""
    run_dir, _ = tiny_run
    payload = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    stored = yaml.safe_load(payload["config"])
    stored["env"]["id"] = env_id
    payload["config"] = yaml.safe_dump(stored)
    torch.save(payload, tmp_path / "interpolated.pt")
    monkeypatch.setenv("RLRUN_TEST_SECRET", "CartPole-v1")
    proc = _rlrun_eval(str(tmp_path / "interpolated.pt"))
    _assert_clean_failure(proc, "${oc.env:RLRUN_TEST_SECRET}")
    assert "CartPole-v1" not in proc.stdout + proc.stderr


def test_rlrun_eval_checkpoint_with_a_corrupt_config(tmp_path, tiny_run):
    run_dir, _ = tiny_run
    payload = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    payload["config"] = "algo: [unclosed"
    torch.save(payload, tmp_path / "bad_config.pt")
    _assert_clean_failure(_rlrun_eval(str(tmp_path / "bad_config.pt")), "not a valid rlrun config")


def test_rlrun_eval_of_a_file_that_is_not_a_checkpoint(tiny_run):
    run_dir, _ = tiny_run
    _assert_clean_failure(_rlrun_eval(str(run_dir / "summary.json")), "is not a checkpoint: torch.save did not "
                                                                       "write it")


def test_rlrun_eval_says_what_the_file_is_when_it_is_not_a_checkpoint(tmp_path, tiny_run):
    """/dev/null exists but is no file; a replay buffer is not a damaged checkpoint; a pickle of other objects is
    refused without torch's advice to load it with weights_only=False."""
    import pickle

    run_dir, _ = tiny_run
    _assert_clean_failure(_rlrun_eval("/dev/null"), "/dev/null is not a regular file")
    buffer = next((run_dir / "checkpoints").glob("last-buffer-*.npz"))
    _assert_clean_failure(_rlrun_eval(str(buffer)), "is a replay buffer file", "not a checkpoint")
    (tmp_path / "objects.pt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    proc = _rlrun_eval(str(tmp_path / "objects.pt"))
    _assert_clean_failure(proc, "refused to load", "nothing in it was executed")
    assert "weights_only set to False" not in proc.stderr and "weights_only=False" not in proc.stderr


def test_rlrun_eval_that_cannot_write_says_so_after_printing_the_result(tiny_run, tmp_path):
    """The report's place taken by a directory: the result is printed, then one line, status 1. A file named
    `videos`: --video is refused before any episode, status 2 (both used to be tracebacks)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    (run_dir / "eval_best.json").unlink(missing_ok=True)  # written there by an rlrun-eval test that ran before
    (run_dir / "eval_best.json" / "in_the_way").mkdir(parents=True)
    proc = _rlrun_eval(str(run_dir), "--episodes", "1")
    _assert_clean_failure(proc, "the result above was not written to", "eval_best.json")
    assert proc.returncode == 1 and '"return_mean"' in proc.stdout
    (run_dir / "videos").write_text("x")
    proc = _rlrun_eval(str(run_dir), "--episodes", "1", "--video")
    _assert_clean_failure(proc, "--video: cannot make", "leave out --video")
    assert proc.returncode == 2 and (run_dir / "videos").read_text() == "x"


def test_a_run_dir_that_cannot_be_made_is_one_line(tmp_path):
    """Hydra makes the run (or sweep) dir before rlrun's code runs: a path under a file used to end in its
    traceback."""
    (tmp_path / "a_file").write_text("x")
    proc = rlrun(tmp_path / "a_file", *TINY, check=False, timeout=120)
    _assert_clean_failure(proc, "cannot make the directory hydra.run.dir=", "File exists", "a file is in the way")
    assert proc.returncode == 2
    proc = rlrun(tmp_path / "a_file" / "run", *TINY, check=False, timeout=120)
    _assert_clean_failure(proc, "cannot make the directory hydra.run.dir=", "Not a directory")
    proc = subprocess.run([str(BIN / "rlrun"), "-m", f"hydra.sweep.dir={tmp_path / 'a_file'}", *TINY],
                          capture_output=True, text=True, timeout=120)
    _assert_clean_failure(proc, "cannot make the directory hydra.sweep.dir=", "File exists", "a file is in the way")
    assert proc.returncode == 2
    assert (tmp_path / "a_file").read_text() == "x"


def test_rlrun_eval_corrupt_checkpoint(tmp_path, tiny_run):
    run_dir, _ = tiny_run
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes()[:200])
    _assert_clean_failure(_rlrun_eval(str(corrupt)), "corrupt")


def test_ctrl_c_while_starting_is_one_line_not_a_traceback(monkeypatch, capsys):
    """Before the run installs its own handler (which checkpoints), a Ctrl-C while Hydra composes the config or
    the run is built: one line and exit 130."""
    from rlrun import cli, entry

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_hydra_main", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        entry.rlrun()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.startswith("rlrun: interrupted while starting, before training began")


def test_ctrl_c_in_a_sweeps_own_process_says_so(monkeypatch, capsys, tmp_path):
    """A joblib sweep's parent takes the Ctrl-C as a KeyboardInterrupt while its jobs run: it used to say
    "while starting, before training began" (found by a fuzz review)."""
    from rlrun import cli, entry
    from rlrun.sweep import SweepCallback

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_hydra_main", interrupted)
    monkeypatch.setattr(SweepCallback, "running_sweep_dir", tmp_path / "sweep")
    with pytest.raises(SystemExit) as exit_info:
        entry.rlrun()
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert err.startswith(f"rlrun: interrupted during the sweep in {tmp_path / 'sweep'}") and "resume=auto" in err


@pytest.mark.parametrize(("script", "needle"), [("rlrun", "while starting, before training began"),
                                                ("rlrun_eval", "before the evaluation finished"),
                                                ("rlrun_plot", "before the figure was written")])
def test_ctrl_c_while_a_command_imports_is_one_line(monkeypatch, capsys, script, needle):
    """The console scripts import their command inside the guard (`rlrun.cli` takes ~3 s to import: torch)."""
    from rlrun import entry

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(entry.importlib, "import_module", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        getattr(entry, script)()
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_soon_after_launch_is_not_a_traceback(tmp_path, signum):
    """A real SIGINT (or SIGTERM: a scheduler's) to the installed `rlrun` script while it is still importing torch
    (or, on a fast machine, composing the config or training): exit 130 (143) and one line, whichever moment it
    lands in. A SIGTERM there used to end the process silently."""
    import time

    # SIGINT's default disposition in the child, as in a terminal: pytest-xdist's workers ignore SIGINT, and an
    # ignored disposition is inherited (Python then installs no KeyboardInterrupt handler at all).
    proc = subprocess.Popen([str(BIN / "rlrun"), f"hydra.run.dir={tmp_path / 'run'}",
                             "log.progress=plain", "algo=dqn", "env=cartpole", "total_steps=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.5)  # inside the guarded import (~3 s) on this machine, and handled at any later moment too
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "interrupted" in err


def test_a_reader_that_goes_away_does_not_end_the_run(tmp_path):
    """`rlrun … | head -1`: stdout becomes a closed pipe after the first line. The run goes on without output and
    writes its checkpoint and summary.json (a BrokenPipeError used to end it before either)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([str(BIN / "rlrun"), f"hydra.run.dir={run_dir}", "log.progress=plain",
                             "log.plain_every_s=0", *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "Broken pipe" not in err
    assert read_summary(run_dir)["status"] == "completed" and read_summary(run_dir)["checkpoint_step"] == 600
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 600


def test_help_lists_the_presets_to_choose_not_the_schemas_they_build_on(tmp_path):
    proc = subprocess.run([str(BIN / "rlrun"), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("rlrun: deep reinforcement learning experiments")
    groups = dict(line.split(": ", 1) for line in proc.stdout.splitlines()
                  if line.split(": ", 1)[0] in ("algo", "env", "network", "transfer"))
    assert groups["algo"].split(", ") == ["a2c", "ddpg", "double_dqn", "dqn", "ppo", "reinforce", "sac", "td3",
                                          "trpo", "vpg"]
    assert "lunarlander" in groups["env"].split(", ") and "base_env" not in groups["env"]
    assert "base_" not in proc.stdout.split("== Config ==")[0]
    assert "total_steps:" in proc.stdout.split("== Config ==")[1]  # the composed config still follows


def test_presets_in_another_config_dir_are_left_to_hydra(tmp_path):
    """With --config-path (-cp) or --config-dir the groups may hold presets conf/ lacks: no refusal before Hydra."""
    import shutil

    from rlrun import CONF_DIR

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "algo" / "my_dqn.yaml").write_text((conf / "algo" / "dqn.yaml").read_text())
    for flag in ("-cp", "-cd"):
        proc = subprocess.run([str(BIN / "rlrun"), "--cfg", "job", flag, str(conf), "algo=my_dqn"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0 and "name: dqn" in proc.stdout, proc.stderr


def test_without_schema_options_keeps_every_other_line():
    from rlrun.cli import without_schema_options

    text = ("head: base_x stays\n== Configuration groups ==\nalgo: a2c, base_a2c, dqn\nnetwork: base_network, mlp\n"
            "\n== Config ==\nkey: base_value\n")
    assert without_schema_options(text) == ("head: base_x stays\n== Configuration groups ==\nalgo: a2c, dqn\n"
                                            "network: mlp\n\n== Config ==\nkey: base_value\n")


def test_log_progress_none_prints_nothing(tmp_path):
    """`log.progress=none` prints nothing: the final "[completed] …" line was still printed."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([str(BIN / "rlrun"), f"hydra.run.dir={run_dir}", *TINY, "log.progress=none"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and read_summary(run_dir)["status"] == "completed"
