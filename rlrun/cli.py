"""Command-line entry points. The only `@hydra.main` lives here; it turns config into objects and calls Run."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from rlrun import CONF_DIR
from rlrun.config import Config, register_configs

register_configs()

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class JobFailed(CompactHydraException):
    """A multirun job stopped on bad input or a non-finite loss. Hydra reports a failed job again once the sweep
    ends (or the sweeper stops); a compact exception makes that report the message alone, not a traceback."""


def _error(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]rlrun error:[/] {message}")


def to_typed_config(cfg: DictConfig) -> Config:
    """DictConfig → the typed `Config` dataclass tree algorithms receive (after `check_known_keys`)."""
    check_known_keys(cfg)
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def check_known_keys(cfg: DictConfig) -> None:
    """Refuse (ValueError) a key that no schema declares, added with `+key=…`: the typed config would drop it
    silently. Run for every job, and once before a sweep starts (rlrun/sweep.py)."""
    from rlrun.config import unknown_keys

    unknown = unknown_keys(cfg)
    if unknown:
        algo = OmegaConf.select(cfg, "algo.name", default="?")
        named = ", ".join(name + (f" (did you mean {close}?)" if close else "") for name, close in unknown.items())
        raise ValueError(f"unknown setting{'s' if len(unknown) > 1 else ''} {named}, added with `+`: no rlrun "
                         f"option has that name, so the run would ignore it. `rlrun algo={algo} --help` lists "
                         f"every setting.")


def check_group_choices(choices: Any) -> None:
    """Refuse (ValueError) a `base_*` option: those are the typed schemas the presets build on (Hydra lists them
    among a group's options, except in `rlrun --help`), and one picked on its own runs with no preset's or tuned
    config's values."""
    for group in ("algo", "env", "network", "transfer"):
        option = str(choices.get(group) or "")
        if option.startswith("base_"):
            preset = f"{group}={option.removeprefix('base_')}, or another" if group == "algo" else "one"
            raise ValueError(f"{group}={option} is the schema behind the {group} presets, not a preset: pick "
                             f"{preset} (`rlrun --help` lists them; a sweep over all presets is "
                             f"{group}='glob(*,exclude=base_*)')")


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from rlrun.checkpoint import CheckpointError
    from rlrun.envs import EnvError

    return (ValueError, CheckpointError, EnvError, OmegaConfBaseException)


def train(cfg: DictConfig, run_dir: Path, on_accepted: Callable[[], None] | None = None,
          stop_file: Path | None = None, stop_with_parent: int | None = None) -> dict[str, Any]:
    """Compose → typed config → Run.train(); returns the summary. `on_accepted` is called once the run is built
    (its checks passed: nothing refused it), before it trains; `stop_file` and `stop_with_parent` are Run's."""
    from rlrun.run import Run

    typed = to_typed_config(cfg)
    run = Run(typed, run_dir, OmegaConf.to_yaml(cfg, resolve=True))
    run.stop_file, run.stop_with_parent = stop_file, stop_with_parent
    if on_accepted is not None:
        on_accepted()
    return run.train()


def write_hydra_dir(cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """The job's `.hydra/` (config.yaml, hydra.yaml, overrides.yaml): the files Hydra writes before a job starts
    when `hydra.output_subdir` is set. conf/config.yaml sets it to null and rlrun writes them here instead, once
    the run has been accepted, so that a refused command (a fresh run, or a resume with changed settings, pointed
    at a directory that holds a run) leaves that run's `.hydra/` as it was."""
    from rlrun.files import atomic_write_text

    hydra_dir = Path(hydra_cfg.runtime.output_dir) / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", cfg), ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
                       ("overrides.yaml", hydra_cfg.overrides.task)):
        atomic_write_text(hydra_dir / name, OmegaConf.to_yaml(node))


def _print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    solved = (f"solved at step {summary['solved_at_step']:,} ({summary['solved_at_wall_time_s']:.0f} s)"
              if summary["solved_at_step"] is not None else "not solved")
    final = summary["final_return_mean"]
    best = summary["best_return_mean"]
    rate = summary["steps_per_second"]
    from rlrun.files import print_line

    print_line(f"[{summary['status']}] {summary['algo']} on {summary['env_id']} seed={summary['seed']}: "
               f"{summary['steps_done']:,} steps in {summary['wall_time_s']:.1f} s "
               f"({f'{rate} steps/s' if rate is not None else 'no steps this session'}); "
               f"final eval {final if final is None else round(final, 1)}, "
               f"best {best if best is None else round(best, 1)}, {solved}. Run dir: {run_dir}")


def _one_paragraph(exc: BaseException) -> str:
    """The error's message; OmegaConf's without its indented key/type lines, and a missing value with the override
    that sets it."""
    if not isinstance(exc, OmegaConfBaseException):
        return str(exc)
    from rlrun.files import first_line

    first = first_line(exc)
    key = getattr(exc, "full_key", None)
    if isinstance(exc, MissingMandatoryValue) and key:
        return f"{key} has no value and needs one: set it on the command line ({key}=…)"
    return f"{first} ({key})" if key and key not in first else first


def interrupted_message(exc: Any, run_dir: Path) -> str:
    """What an interrupted run says: where its files are, and the step a resume continues from when a second
    Ctrl-C cut the final checkpoint short (`exc` is a `RunInterrupted`). In a job of several seeds
    (objective.seeds > 1) the run is one seed's, in `run_dir`/seed<N>: resuming that one alone would not finish the
    job."""
    seed_dir = getattr(exc, "run_dir", None)
    if seed_dir is not None and Path(seed_dir) != Path(run_dir):
        return (f"interrupted by {exc}; the checkpoint and summary.json (status interrupted) of the seed it was "
                f"training are in {seed_dir}. The same command with resume=auto and the same job directory continues "
                f"the job: seeds already finished are skipped and this one resumes (an Optuna search starts new "
                f"trials instead).")
    done, saved = exc.summary["steps_done"], exc.summary["checkpoint_step"]
    if saved is None:
        return (f"interrupted by {exc} before the run's first checkpoint was written (step {done:,}); "
                f"summary.json (status interrupted) is in {run_dir}. Start it again from step 0 with resume=auto and the "
                f"same hydra.run.dir, or in another hydra.run.dir.")
    lost = (f"; it holds step {saved:,}, the {done - saved:,} steps after it were not saved (a second Ctrl-C stopped "
            f"the final checkpoint)" if saved != done else "")
    return (f"interrupted by {exc}; checkpoint and summary.json (status interrupted) are in {run_dir}{lost}. "
            f"Continue with resume={run_dir} (or resume=auto and the same hydra.run.dir).")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    from rlrun.files import DiskFull
    from rlrun.run import NonFiniteError, RunInterrupted
    from rlrun.sweep import (
        STOP_MARKER,
        check_direction,
        job_sweep_dir,
        objective_value,
        sweep_worker_parent,
        train_seeds,
    )

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN

    stop_file = job_sweep_dir(hydra_cfg) / STOP_MARKER if multirun else None
    parent = sweep_worker_parent() if multirun else None

    def train_job(run_cfg: DictConfig, directory: Path) -> dict[str, Any]:
        return train(run_cfg, directory, on_accepted=lambda: write_hydra_dir(cfg, hydra_cfg), stop_file=stop_file,
                     stop_with_parent=parent)

    if stop_file is not None and stop_file.exists():
        raise JobFailed("rlrun error: not started: a Ctrl-C is stopping the sweep")
    try:
        check_group_choices(hydra_cfg.runtime.choices)
        if multirun:
            check_direction(cfg.objective.metric, hydra_cfg.sweeper.get("direction"))
        if cfg.objective.seeds != 1:  # a sweeper's objective as the mean over k seeds (rlrun/sweep.py)
            runs = train_seeds(cfg, run_dir, train_job)
        else:
            runs = [(train_job(cfg, run_dir), run_dir)]
    except RunInterrupted as exc:
        _error(interrupted_message(exc, run_dir))
        if parent is not None and os.getppid() != parent:  # orphaned worker: nobody reads its result; it would
            os._exit(128 + exc.signum)  # wait for ever on loky's pipes, deaf to the signals it blocks
        sys.exit(128 + exc.signum)
    except (NonFiniteError, DiskFull) as exc:
        _error(str(exc))
        if multirun:
            raise JobFailed(f"rlrun error: {exc}") from None
        sys.exit(EXIT_FAILED)
    except _bad_input_types() as exc:
        message = _one_paragraph(exc)
        _error(message)
        if multirun:
            raise JobFailed(f"rlrun error: {message}") from None
        sys.exit(EXIT_BAD_INPUT)
    except OSError as exc:  # a full disk or an unwritable directory outside the checkpoint writes (which say so)
        message = f"cannot read or write the run's files under {run_dir}: {exc}"
        _error(message)
        if multirun:
            raise JobFailed(f"rlrun error: {message}") from None
        sys.exit(EXIT_FAILED)
    if cfg.log.progress != "none":  # `none` prints nothing (summary.json holds it all)
        for summary, directory in runs:
            _print_summary(summary, directory)
    # What Hydra's sweepers (Optuna) optimise: objective.metric, mean over the job's seeds.
    return objective_value([summary for summary, _ in runs], cfg.objective.metric)


def main() -> None:
    """`rlrun` (through rlrun/entry.py, whose guard turns a Ctrl-C before training began into one line)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(sys.argv[1:])  # as Hydra reads them (`--hel` is `--help`)
    check_hydra_flags(args)
    check_group_options(args)
    if not args.help:
        _hydra_main()
        return
    help_text = io.StringIO()
    try:
        with contextlib.redirect_stdout(help_text):
            _hydra_main()
    except (HydraException, OmegaConfBaseException, ValueError) as exc:  # Hydra's help raises them as tracebacks
        _error(f"rlrun --help with these overrides: {_one_paragraph(exc)}")
        sys.exit(EXIT_BAD_INPUT)
    finally:
        print(without_schema_options(help_text.getvalue()), end="")


GROUPS = ("algo", "env", "network", "transfer", "experiment", "hparams_search", "tuned")
OPTIONAL_GROUPS = ("experiment", "hparams_search", "tuned")
"""Groups whose default is no preset: `~group` leaves them out."""


def check_group_options(args: argparse.Namespace) -> None:
    """`algo=nope` (or one value of a sweep `algo=dqn,nope`) in one line naming the group's presets and the closest
    one, exit status 2, before Hydra composes anything: Hydra's own error lists the `base_*` schemas among the
    options and, under `--help`, is a traceback (`tuned=nope` it ignored). `args` are Hydra's parsed command line.
    Left to Hydra: overrides it cannot parse, sweeps it expands itself (`glob(…)`, ranges), and commands that read
    other config directories (`--config-path`, `--config-dir`, `hydra.searchpath`), where a preset may live
    outside conf/."""
    from difflib import get_close_matches

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep

    if (args.config_dir is not None or args.config_path is not None
            or any(o.lstrip("+~").startswith("hydra.searchpath") for o in args.overrides)):
        return
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except HydraException:
        return
    for override in overrides:
        group = override.key_or_group
        if group not in GROUPS or override.is_delete() or override.package:
            continue
        value = override.value()
        values = value.list if isinstance(value, ChoiceSweep) else [value]
        leave_out = (f"or give ~{group} to leave the group out" if group in OPTIONAL_GROUPS
                     else "its default applies")
        if None in values:  # Hydra's own error is a traceback ("must be a string or a list. Got NoneType")
            _error(f"{group}=null names no preset, and Hydra takes no null for a group: leave {group}= out of the "
                   f"command ({leave_out})")
            sys.exit(EXIT_BAD_INPUT)
        if not all(isinstance(v, (str, int, float)) for v in values):  # configs in a list, a sweep Hydra expands
            continue
        presets = sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))
        for option in map(str, values):  # algo=1 or algo=true: Hydra's traceback
            if option not in presets and not option.startswith("base_"):  # base_*: check_group_choices says why
                close = get_close_matches(option, presets, n=1, cutoff=0.6)
                hint = f" (did you mean {group}={close[0]}?)" if close else ""
                tail = f"; ~{group} leaves the group out" if group in OPTIONAL_GROUPS else ""
                _error(f"{group}={option} is not one of rlrun's {group} presets{hint}: {', '.join(presets)}{tail}.")
                sys.exit(EXIT_BAD_INPUT)


def without_schema_options(help_text: str) -> str:
    """Hydra's `--help` with the `base_*` schema options left out of the "group: a, b, …" lines of its
    "== Configuration groups ==" section: each preset of a group builds on one (`algo=dqn` on `base_dqn`), but on
    its own one is no config to choose (check_group_choices refuses it)."""
    lines, in_groups = [], False
    for line in help_text.splitlines(keepends=True):
        if line.startswith("== "):
            in_groups = line.startswith("== Configuration groups ==")
        group, sep, options = line.rstrip("\n").partition(": ")
        if in_groups and sep:
            kept = [option for option in options.split(", ") if not option.startswith("base_")]
            line = f"{group}: {', '.join(kept)}" + line[len(line.rstrip(chr(10))):]
        lines.append(line)
    return "".join(lines)


def check_hydra_flags(args: argparse.Namespace) -> None:
    """Hydra's own check of its flags raises from inside Hydra (a traceback): `-m` with `--cfg`, say. The same
    check, on Hydra's parsed command line, as one line and exit status 2."""
    given = [flag for flag, on in (("--run", args.run), ("--multirun", args.multirun), ("--cfg", args.cfg),
                                   ("--shell-completion", args.shell_completion), ("--info", args.info is not None))
             if on]
    if len(given) > 1:
        _error(f"{' and '.join(given)} cannot be given together: only one of --run, --multirun (-m), --cfg, --info "
               f"and --shell-completion. To see a sweep's config, give --cfg without -m.")
        sys.exit(EXIT_BAD_INPUT)


# -- rlrun-eval ------------------------------------------------------------------------------------------
def eval_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlrun-eval", description="Evaluate a trained rlrun agent with "
                                     "its deterministic policy on fresh episodes.")
    parser.add_argument("path", help="a run directory or a checkpoint file (.pt)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to run (default 10)")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"],
                        help="which checkpoint of a run directory to use (default best)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the first evaluation episode")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--video", action="store_true", help="record MP4s of the episodes into the run directory")
    parser.add_argument("--import-env-module", action="store_true",
                        help="allow an env.id of the form module:EnvId from the checkpoint (imports that module)")
    args = parser.parse_args(argv)
    try:
        result = evaluate_checkpoint(Path(args.path), args.episodes, args.checkpoint, args.seed, args.device,
                                     args.video, args.import_env_module)
    except _bad_input_types() as exc:
        _error(str(exc))
        sys.exit(EXIT_BAD_INPUT)
    except OSError as exc:  # the video encoder could not write (a full disk, a read-only run directory)
        # moviepy's message is a page whose first line is only "Broken pipe": its lines, joined, say why
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        _error(f"rlrun-eval could not write its files for {args.path}: {detail[:400]}")
        sys.exit(EXIT_FAILED)
    from rlrun.files import print_line

    print_line(json.dumps(result, indent=2))
    if "not_written" in result:
        _error(f"the result above was not written to {result['not_written']}")
        sys.exit(EXIT_FAILED)


def evaluate_checkpoint(path: Path, episodes: int, which: str, seed: int, device: str,
                        video: bool, import_env_module: bool = False) -> dict[str, Any]:
    from rlrun.algos import ALGORITHMS
    from rlrun.algos.protocol import AgentContext
    from rlrun.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, stored_obs_norm
    from rlrun.config import Device
    from rlrun.envs import make_env
    from rlrun.evaluation import Evaluator
    from rlrun.onpolicy import observation_normalizer
    from rlrun.run import load_model_state, resolve_device, set_flush_denormals

    if episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {episodes}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0 (the reset seed of the first episode), got {seed}")
    if path.is_dir():
        ckpt = path / "checkpoints" / f"{which}.pt"
        if not ckpt.exists() and which == "best":
            ckpt = path / "checkpoints" / "last.pt"
        run_dir = path
    else:
        ckpt, run_dir = path, path.parent.parent if path.parent.name == "checkpoints" else path.parent
    payload = load_checkpoint(ckpt)  # its step, when there, is a whole number (checked there)
    step = payload.get("step") or 0
    cfg = config_from_checkpoint(payload)
    if ":" in cfg.env.id and not import_env_module:  # a checkpoint is data: it must not choose code to import
        raise CheckpointError(f"{ckpt} names env.id={cfg.env.id!r}, which would import the module before the ':' "
                              f"(Gymnasium's module:EnvId form). If you trust that module, pass --import-env-module")
    set_flush_denormals(cfg.flush_denormals)  # the arithmetic the run evaluated with
    env = make_env(cfg.env)
    # The training run's total_steps and num_envs: agents check their batch sizes against them.
    ctx = AgentContext(env.observation_space, env.action_space, cfg.network, resolve_device(Device(device)),
                       seed, cfg.total_steps, int(getattr(cfg.algo, "num_envs", 1)))
    env.close()
    if cfg.algo.name not in ALGORITHMS:
        raise CheckpointError(f"{ckpt} was written by an unknown algorithm {cfg.algo.name!r}")
    # Evaluation runs no update: a run trained with CUDA graphs or a compiled update evaluates on any device.
    for option in ("cuda_graphs", "compile"):
        if getattr(cfg.algo, option, False):
            setattr(cfg.algo, option, False)
    agent = ALGORITHMS[cfg.algo.name].make_agent(cfg.algo, ctx)
    load_model_state(agent, payload["model"])
    obs_norm = observation_normalizer(agent)
    if obs_norm is not None:
        stats, _ = stored_obs_norm(ckpt, payload)
        if stats is None:
            raise CheckpointError(f"{ckpt} was trained with algo.normalize_obs=true, but neither it nor a last.pt "
                                  f"beside it holds the observation-normalisation statistics")
        if stats["mean"].shape != obs_norm.rms.mean.shape:
            raise CheckpointError(f"{ckpt}'s observation-normalisation statistics have shape {stats['mean'].shape}, "
                                  f"but {cfg.env.id} observes shape {obs_norm.rms.mean.shape}: they are damaged")
        obs_norm.load_state(stats)
    if video:
        try:
            (run_dir / "videos").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--video: cannot make {run_dir / 'videos'} ({exc.strerror or exc}); evaluate a run "
                             f"directory you can write to, or leave out --video") from None
    evaluator = Evaluator(cfg.env, episodes, seed, video_dir=run_dir / "videos" if video else None,
                          video_episodes=episodes)
    started = time.monotonic()
    try:
        result = evaluator.evaluate(agent.act, 0, video_name=f"eval-{ckpt.stem}" if video else None)
    finally:
        with contextlib.suppress(OSError):  # a recorder that could not write fails again on closing
            evaluator.close()
    report = {"checkpoint": str(ckpt), "algo": cfg.algo.name, "env_id": cfg.env.id,
              "step": step, "episodes": episodes, "return_mean": result.return_mean,
              "return_std": result.return_std, "length_mean": result.length_mean,
              "returns": list(result.returns), "wall_time_s": round(time.monotonic() - started, 3)}
    if video:
        report["videos"] = [str(path) for path in result.videos]
    if run_dir.is_dir():
        path = run_dir / f"eval_{ckpt.stem}.json"
        try:
            atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        except OSError as exc:  # printed all the same (eval_main), and said: status 1
            report["not_written"] = f"{path} ({exc.strerror or exc})"
    return report


def config_from_checkpoint(payload: dict[str, Any]) -> Config:
    """Rebuild the typed config stored in a checkpoint. Data only: nothing is instantiated from it."""
    import yaml

    from rlrun.algos import ALGORITHMS
    from rlrun.checkpoint import CheckpointError
    from rlrun.files import literal

    try:
        stored = yaml.safe_load(str(payload["config"]))
        if not isinstance(stored, dict):
            raise CheckpointError(f"the checkpoint's stored config is a {type(stored).__name__}, not a mapping")
        raw = OmegaConf.create(literal(stored))  # data: a `${…}` in it is text, never resolved here
        algo_name = raw.algo.name
        if algo_name not in ALGORITHMS:
            raise CheckpointError(f"the checkpoint names an unknown algorithm {algo_name!r}")
        schema = OmegaConf.structured(Config)
        schema.algo = OmegaConf.structured(ALGORITHMS[algo_name].config_cls)
        merged = OmegaConf.merge(schema, raw)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (OmegaConfBaseException, yaml.YAMLError, KeyError, AttributeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's stored config is not a valid rlrun config: {exc}") from None


if __name__ == "__main__":
    from rlrun.entry import rlrun

    rlrun()
