"""Multirun support: the objective a job returns to a sweeper, and the summary written when a sweep ends.

A sweep directory (Hydra's `hydra.sweep.dir`) holds one job directory per job, each with `.hydra/` and either
one run (`summary.json`, `evaluations.csv`) or, with `objective.seeds=k`, one run per seed in `seed<N>/`.
Everything here reads those files as data (plain YAML/JSON): nothing is instantiated from them.

Configurations are told apart by the overrides that differ between runs, minus `seed`: a sweep
`algo=dqn,double_dqn seed=0,1,2` has two configurations of three seeds each. `python -m rlrun.sweep DIR`
writes the summary of a sweep whose end was never reached (e.g. a cancelled SLURM array).
"""

from __future__ import annotations

import csv
import datetime
import errno
import io
import json
import math
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlrun.config import ObjectiveMetric
from rlrun.files import RUNNING_MARKER, atomic_write_text, first_line, literal, print_line

SUMMARY_CSV = "sweep_summary.csv"
# Keys that never tell configurations apart: the seed is what we average over; the rest is bookkeeping.
IGNORED_KEYS = ("seed", "resume", "log.", "hydra.", "objective.")


# -- the objective -----------------------------------------------------------------------------------------
def objective_value(summaries: list[dict[str, Any]], metric: ObjectiveMetric | str) -> float:
    """Mean over seeds of `metric` from each run's summary.json (NaN when no run has a value).

    For the time-to-threshold metrics an unsolved run counts as one step past all it ran (rollouts can overshoot
    total_steps, and a run may be solved at its final evaluation), or as the whole wall time it ran, so "never
    solved" ranks below "solved late" instead of dropping out of the mean.
    """
    metric = ObjectiveMetric(metric)
    values = []
    for summary in summaries:
        if metric == ObjectiveMetric.best_return:
            value = summary.get("best_return_mean")
        elif metric == ObjectiveMetric.final_return:
            value = summary.get("final_return_mean")
        elif metric == ObjectiveMetric.solved_at_step:
            value = summary.get("solved_at_step")
            if value is None and summary.get("total_steps") is not None:
                value = max(summary["total_steps"], summary.get("steps_done") or 0) + 1
        else:
            value = summary.get("solved_at_wall_time_s")
            value = summary.get("wall_time_s") if value is None else value
        if value is not None:
            values.append(float(value))
    return float(statistics.fmean(values)) if values else math.nan


def check_direction(metric: ObjectiveMetric | str, direction: Any) -> None:
    """A sweeper's `direction` must suit `objective.metric`: returns are maximised, times to solve minimised."""
    direction = getattr(direction, "name", direction)  # the Optuna sweeper's default is an enum
    if not isinstance(direction, str):  # no direction (grid sweeps) or a multi-objective list
        return
    metric = ObjectiveMetric(metric)
    wanted = "maximize" if metric in (ObjectiveMetric.best_return, ObjectiveMetric.final_return) else "minimize"
    if direction.lower() != wanted:
        raise ValueError(f"objective.metric={metric.value} should be {wanted}d, but hydra.sweeper.direction="
                         f"{direction}; set hydra.sweeper.direction={wanted}")


def check_stored_study(sweeper: DictConfig) -> None:
    """An Optuna study already in the sweep dir's SQLite file (a continued search) keeps the direction it was created
    with; a command asking for the other one is refused here, before Optuna fails on it."""
    storage, name = sweeper.get("storage"), sweeper.get("study_name")
    direction = getattr(sweeper.get("direction"), "name", sweeper.get("direction"))
    if not (isinstance(storage, str) and storage.startswith("sqlite:///") and name and isinstance(direction, str)):
        return
    db = Path(storage.removeprefix("sqlite:///"))
    if not db.is_file():  # opening the storage would create it: a new search has nothing to check
        return
    import optuna

    try:
        study = optuna.load_study(study_name=str(name), storage=storage)
    except KeyError:  # the file holds other studies only
        return
    stored = [d.name.lower() for d in study.directions]
    if stored != [direction.lower()]:
        raise ValueError(f"the Optuna study {name!r} in {db} was created to {' and '.join(stored)}, and this command "
                         f"asks to {direction.lower()}: a study keeps its direction. Continue it with "
                         f"hydra.sweeper.direction={stored[0]}, or start a new search in another hydra.sweep.dir")


def optuna_search_error(sweeper: Any, exc: Exception, started: bool) -> tuple[str, bool] | None:
    """What an Optuna search that ended in `exc` from inside Optuna says (hydra_plugins/rlrun_optuna_sweeper), and
    whether it is bad input; None for any other error, which stays as it is.

    Three endings are explained: no trial finished (Optuna's `best_trial` then raises "Record does not exist." for
    a stored study, "No trials are completed yet." in memory); a continued study whose `choice(…)` values changed;
    and, before the first trial was launched (`started` False), Optuna refusing the search's settings (a reversed
    `interval`, a log range from 0, a storage it cannot open or import a driver for). `sweeper` is
    hydra-optuna-sweeper's implementation: its `study_name`, `storage` and `config` (the composed multirun config)
    are what it ran with."""
    import optuna
    import sqlalchemy.exc

    name, storage = getattr(sweeper, "study_name", None), getattr(sweeper, "storage", None)
    study = f"the Optuna search{f' {name!r}' if name else ''}"
    sweep_dir = OmegaConf.select(getattr(sweeper, "config", None) or OmegaConf.create(), "hydra.sweep.dir")
    if "does not support dynamic value space" in str(exc):
        return (f"{study} stored in {sweep_dir} was started with other values for one of its choice(…) parameters, "
                f"and a study keeps its search space ({exc}). Start the changed search in another "
                f"hydra.sweep.dir, or continue this one with the choices it was started with. The trial it had "
                f"begun is marked failed in the study.", True)
    if not started and isinstance(exc, (ValueError, ImportError, sqlalchemy.exc.SQLAlchemyError)):
        return (f"{study} could not start: Optuna refused its settings ({type(exc).__name__}: {first_line(exc)}). Check "
                f"hydra.sweeper.params and the ranges on the command line (interval(low, high) needs low <= high, "
                f"and low > 0 under tag(log, …)), and hydra.sweeper.storage (sqlite:///PATH in a writable "
                f"directory, or null).", True)
    if not isinstance(exc, ValueError) or not any(
            text in str(exc) for text in ("Record does not exist", "No trials are completed yet")):
        return None  # another error from inside the sweeper (a bad search space): Optuna's own message stays
    failed = None
    if storage is not None:
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        except Exception:  # noqa: BLE001 - an unreadable study leaves Optuna's own error in place
            return None
        if any(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials):
            return None
        failed = sum(trial.state == optuna.trial.TrialState.FAIL for trial in trials)
    count = f"all {failed} trials" if failed else "every trial"
    again = (f"; with the same hydra.sweep.dir ({sweep_dir}) it continues this study" if storage is not None
             else " (this study was in memory, hydra.sweeper.storage=null: it is gone)")
    return (f"{study} has no result: {count} failed (each one's error is printed above), so there is no best "
            f"trial. Fix what they report and run the same command again{again}.", False)


def fail_running_trials(sweeper: Any, since: datetime.datetime) -> int:
    """Mark FAIL the trials of `sweeper`'s stored study that are RUNNING and began at or after `since` (this
    search's, which it can no longer finish: a Ctrl-C, a refused search space); returns how many. Never raises:
    it runs while the search is ending for another reason."""
    storage, name = getattr(sweeper, "storage", None), getattr(sweeper, "study_name", None)
    if storage is None:
        return 0
    try:
        import optuna

        study = optuna.load_study(study_name=name, storage=storage)
        running = [trial for trial in study.get_trials(deepcopy=False)
                   if trial.state == optuna.trial.TrialState.RUNNING and trial.datetime_start is not None
                   and trial.datetime_start >= since]
        for trial in running:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        return len(running)
    except Exception:  # noqa: BLE001 - the ending it runs in says what went wrong
        return 0


def train_seeds(cfg: DictConfig, job_dir: Path,
                train: Callable[[DictConfig, Path], dict[str, Any]]) -> list[tuple[dict[str, Any], Path]]:
    """Train `objective.seeds` seeds (seed, seed+1, …) one after the other, each in job_dir/seed<N>/.

    Writes job_dir/objective.json (metric, per-seed values, mean) and returns (summary, run_dir) per seed.
    With resume=auto a requeued job skips the seeds it already finished (their last.pt is at total_steps).
    """
    if int(cfg.objective.seeds) < 1:
        raise ValueError(f"objective.seeds must be at least 1, got {cfg.objective.seeds}")
    results = []
    for offset in range(int(cfg.objective.seeds)):
        seed_cfg = cfg.copy()
        seed_cfg.seed = int(cfg.seed) + offset
        run_dir = job_dir / f"seed{seed_cfg.seed}"
        results.append((train(seed_cfg, run_dir), run_dir))
    summaries = [summary for summary, _ in results]
    metric = ObjectiveMetric(cfg.objective.metric)
    report = {"metric": metric.value, "seeds": [s["seed"] for s in summaries],
              "values": [objective_value([s], metric) for s in summaries],
              "mean": objective_value(summaries, metric)}
    atomic_write_text(job_dir / "objective.json", json.dumps(report, indent=2) + "\n")
    return results


# -- reading runs ----------------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """One training run found on disk, with the settings that may tell it apart from others."""

    run_dir: Path
    job_dir: Path
    settings: dict[str, str]
    summary: dict[str, Any] | None
    config: DictConfig | None = field(default=None, repr=False)

    @property
    def seed(self) -> int | None:
        if self.summary is not None and self.summary.get("seed") is not None:
            try:
                return int(self.summary["seed"])
            except (TypeError, ValueError):  # a hand-edited summary.json: fall back to the config's seed
                pass
        if self.config is not None:
            return OmegaConf.select(self.config, "seed", default=None)
        return None


def _job_dir_of(run_dir: Path) -> Path:
    """The nearest directory at or above run_dir that holds Hydra's `.hydra/` (the seed<N>/ runs of a job)."""
    for candidate in (run_dir, *run_dir.parents[:2]):
        if (candidate / ".hydra").is_dir():
            return candidate
    return run_dir


def _is_ignored(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in IGNORED_KEYS)


def _read_yaml(path: Path, kind: type) -> Any:
    """A .hydra file's content when it is there and of `kind` (dict or list), else None; a damaged one is
    reported on stderr and left out, so one broken run does not stop a table or a plot of a whole sweep."""
    if not path.exists():
        return None
    try:
        content = yaml.safe_load(path.read_text()) or kind()
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        print(f"rlrun: ignoring {path}: not readable YAML ({type(exc).__name__})", file=sys.stderr)
        return None
    if not isinstance(content, kind):
        print(f"rlrun: ignoring {path}: a {type(content).__name__}, not a {kind.__name__}", file=sys.stderr)
        return None
    return content


def _read_settings(job_dir: Path) -> tuple[dict[str, str], DictConfig | None]:
    """Group choices (algo=dqn, env=cartpole, …) and command-line overrides of a job, as strings."""
    hydra_dir = job_dir / ".hydra"
    settings: dict[str, str] = {}
    hydra_yaml = _read_yaml(hydra_dir / "hydra.yaml", dict) or {}
    runtime = hydra_yaml.get("hydra", {}).get("runtime", {}) if isinstance(hydra_yaml.get("hydra"), dict) else {}
    choices = (runtime or {}).get("choices", {}) if isinstance(runtime, dict) else {}
    for group, option in (choices if isinstance(choices, dict) else {}).items():
        if not str(group).startswith("hydra/") and group != "tuned":
            settings[str(group)] = _canonical(option)
    for override in _read_yaml(hydra_dir / "overrides.yaml", list) or []:
        key, _, value = str(override).partition("=")
        settings[key.lstrip("+~")] = _canonical(value)
    config_yaml = _read_yaml(hydra_dir / "config.yaml", dict)
    try:
        config = OmegaConf.create(literal(config_yaml)) if config_yaml is not None else None
    except OmegaConfBaseException as exc:  # YAML that OmegaConf cannot hold: a null or date key, a date value
        print(f"rlrun: ignoring {hydra_dir / 'config.yaml'}: not a config ({type(exc).__name__})", file=sys.stderr)
        config = None
    return settings, config


def _canonical(value: Any) -> str:
    """One spelling per value: `False`/`false` → false, `[64,64]` → [64, 64], 1e-3 → 0.001."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            return value
    if isinstance(value, bool | int | float | list | dict) or value is None:
        return json.dumps(value)
    return str(value)


def find_runs(paths: Iterable[Path], marker: str = "summary.json") -> list[RunRecord]:
    """Every run under `paths` (a run dir, a job dir, a sweep dir, …): directories holding `marker`."""
    records: dict[Path, RunRecord] = {}
    settings_cache: dict[Path, tuple[dict[str, str], DictConfig | None]] = {}
    for root in paths:
        root = Path(root)
        found = [root / marker] if (root / marker).exists() else sorted(root.rglob(marker))
        for marker_path in found:
            run_dir = marker_path.parent.resolve()
            if run_dir in records:
                continue
            job_dir = _job_dir_of(run_dir)
            if job_dir not in settings_cache:
                settings_cache[job_dir] = _read_settings(job_dir)
            settings, config = settings_cache[job_dir]
            summary = None
            if (run_dir / "summary.json").exists():
                try:
                    summary = json.loads((run_dir / "summary.json").read_text())
                except (json.JSONDecodeError, UnicodeDecodeError):
                    summary = None
                if not isinstance(summary, dict):  # damaged: the run is drawn from its evaluations.csv alone
                    summary = None
            records[run_dir] = RunRecord(run_dir, job_dir, dict(settings), summary, config)
    return list(records.values())


def differing_keys(records: list[RunRecord]) -> list[str]:
    """Setting keys (in first-seen order) whose value is not the same for every run, seed excluded."""
    keys: list[str] = []
    for record in records:
        keys.extend(k for k in record.settings if k not in keys and not _is_ignored(k))
    differing = []
    for key in keys:
        values = {_setting(record, key) for record in records}
        if len(values) > 1:
            differing.append(key)
    return differing


def _setting(record: RunRecord, key: str) -> str | None:
    """A run's value for `key`: its override/choice, else the value in its composed config."""
    if key in record.settings:
        return record.settings[key]
    if record.config is not None:
        value = OmegaConf.select(record.config, key, default=None)
        if value is not None:
            return _canonical(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)
    return None


def _short(value: str | None) -> str | None:
    """0.0006466422717414558 → 0.0006466 in labels (the CSV's own columns keep every digit)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value
    return f"{number:.4g}" if "." in str(value) and len(str(value)) > 7 else value


def group_runs(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """Configuration label → its runs (one per seed), labels like `algo=dqn env=cartpole`."""
    keys = differing_keys(records)
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        label = " ".join(f"{key}={_short(_setting(record, key))}" for key in keys) or "all runs"
        groups.setdefault(label, []).append(record)
    for runs in groups.values():
        runs.sort(key=lambda r: (r.seed is None, r.seed or 0, str(r.run_dir)))
    return groups


# -- the summary table ---------------------------------------------------------------------------------------------
def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), (statistics.pstdev(present) if len(present) > 1 else 0.0)


COLUMNS = ("configuration", "runs", "seeds", "final_return_mean", "final_return_std", "best_return_mean",
           "best_return_std", "solved_runs", "solved_at_step_mean", "solved_at_step_std",
           "solved_at_wall_time_s_mean", "solved_at_wall_time_s_std", "steps_per_second_mean", "statuses")


def summarize(paths: Iterable[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per configuration (mean ± std over seeds); also returns the keys that differ."""
    records = [r for r in find_runs(paths) if r.summary is not None]
    keys = differing_keys(records)
    rows = []
    for label, runs in group_runs(records).items():
        summaries = [r.summary for r in runs]
        row: dict[str, Any] = {"configuration": label, "runs": len(runs),
                               "seeds": " ".join(str(r.seed) for r in runs)}
        for name in ("final_return", "best_return"):
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std([s.get(f"{name}_mean") for s in summaries])
        solved = [s for s in summaries if s.get("solved_at_step") is not None]
        row["solved_runs"] = len(solved)
        # Time to threshold over the runs that reached it; solved_runs says how many that is.
        for name in ("solved_at_step", "solved_at_wall_time_s"):
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std([s.get(name) for s in solved])
        row["steps_per_second_mean"] = _mean_std([s.get("steps_per_second") for s in summaries])[0]
        row["statuses"] = " ".join(sorted({str(s.get("status")) for s in summaries}))
        for key in keys:
            row[key] = _setting(runs[0], key)
        rows.append(row)
    return rows, keys


def write_summary_csv(rows: list[dict[str, Any]], keys: list[str], path: Path) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=[*COLUMNS, *keys], extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else (round(v, 3) if isinstance(v, float) else v))
                         for k, v in row.items()})
    atomic_write_text(path, text.getvalue())


def _pm(mean: float | None, std: float | None, digits: int = 1) -> str:
    if mean is None:
        return "—"
    return f"{mean:,.{digits}f} ± {std:,.{digits}f}"


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:  # a log file: do not squeeze the table into 80 columns
        console = Console(highlight=False, width=200)
    table = Table(title=title)
    for name, justify in (("configuration", "left"), ("seeds", "right"), ("final return", "right"),
                          ("best return", "right"), ("solved", "right"), ("solved at step", "right"),
                          ("solved at (s)", "right"), ("steps/s", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        sps = row["steps_per_second_mean"]
        table.add_row(row["configuration"], str(row["runs"]),
                      _pm(row["final_return_mean"], row["final_return_std"]),
                      _pm(row["best_return_mean"], row["best_return_std"]),
                      f"{row['solved_runs']}/{row['runs']}",
                      _pm(row["solved_at_step_mean"], row["solved_at_step_std"], 0),
                      _pm(row["solved_at_wall_time_s_mean"], row["solved_at_wall_time_s_std"], 0),
                      "—" if sps is None else f"{sps:,.0f}")
    with console.capture() as captured:  # rendered here and printed through print_line: rich itself would exit(1)
        console.print(table)               # on a closed stdout pipe
    print_line(captured.get().rstrip("\n"))


def summarize_sweep(sweep_dir: Path, quiet: bool = False) -> Path | None:
    """Write sweep_dir/sweep_summary.csv and print the table; None when the sweep holds no finished run."""
    rows, keys = summarize([sweep_dir])
    if not rows:
        return None
    path = sweep_dir / SUMMARY_CSV
    write_summary_csv(rows, keys, path)
    if not quiet:
        print_table(rows, f"sweep {sweep_dir}")
        print_line(f"Sweep summary: {path}")
    return path


def check_launcher(config: DictConfig) -> None:
    """Settings of the sweeper, the launcher and the objective that every job, or Hydra itself, would only refuse
    later, each of them with a traceback from inside the plugin or the same error once per job."""
    n_trials = config.hydra.sweeper.get("n_trials")
    if isinstance(n_trials, int) and n_trials < 1:
        raise ValueError(f"hydra.sweeper.n_trials must be at least 1, got {n_trials}")
    seeds = OmegaConf.select(config, "objective.seeds")
    if isinstance(seeds, int) and seeds < 1:
        raise ValueError(f"objective.seeds must be at least 1, got {seeds}")
    launcher = str(config.hydra.launcher.get("_target_", ""))
    if "joblib" in launcher:
        if config.hydra.launcher.get("n_jobs") == 0:
            raise ValueError("hydra.launcher.n_jobs=0 runs nothing: give the number of parallel jobs, or -1 for one "
                             "per core")
        # Hydra's joblib launcher sets backend=loky itself, whatever is given: settings that ask for threads or
        # another backend were ignored (prefer=threads), or failed inside joblib with a traceback (require=sharedmem).
        ignored = [f"{key}={value}" for key, value, accepted in (
            ("backend", config.hydra.launcher.get("backend"), (None, "loky")),
            ("prefer", config.hydra.launcher.get("prefer"), (None, "processes")),
            ("require", config.hydra.launcher.get("require"), (None,))) if value not in accepted]
        if ignored:
            raise ValueError(f"hydra.launcher.{', '.join(ignored)}: Hydra's joblib launcher always runs its jobs in "
                             f"loky worker processes (it sets the backend itself); leave the key out, or use the "
                             f"basic launcher to run the jobs one after another in this process")
    if launcher.endswith("SlurmLauncher") and shutil.which("srun") is None:
        raise ValueError("hydra/launcher=slurm submits jobs with SLURM, but this machine has no `srun` on its PATH: "
                         "run the sweep from a SLURM login node, or use hydra/launcher=joblib (parallel jobs here) "
                         "or the basic launcher")


def make_output_dir(path: Path, key: str) -> None:
    """mkdir -p `path`, or one line naming `key` and exit status 2 where it cannot be made."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from rlrun.cli import EXIT_BAD_INPUT, _error

        hint = ("a file is in the way: give a path that is not an existing file, nor under one"
                if exc.errno in (errno.EEXIST, errno.ENOTDIR) else "give a path in a writable location")
        _error(f"cannot make the directory {key}={path}: {exc.strerror or exc}; {hint}.")
        sys.exit(EXIT_BAD_INPUT)


STOP_MARKER = ".interrupted"
"""A file in the sweep dir, holding a signal's name, while a parallel sweep stops (GracefulSweepStop): jobs that start
after it do not train, and running ones stop as on that signal (Run.stop_file)."""


def runs_in_progress(sweep_dir: Path, since: float) -> list[Path]:
    """Run dirs of the sweep (jobs, or a job's seed dirs) that hold RUNNING_MARKER, written at `since` or later by a
    process still alive: each training session of a sweep's job writes it (with its pid) before its first step and
    removes it once summary.json is written. One older than `since` was left by a run of an earlier sweep that was
    killed; one whose process is gone, by a job killed meanwhile (a worker SIGKILLed, or killed by joblib, which kills
    every worker when one dies). No job of this sweep will finish either."""
    running = []
    for marker in (*sweep_dir.glob(f"*/{RUNNING_MARKER}"), *sweep_dir.glob(f"*/*/{RUNNING_MARKER}")):
        try:
            if marker.stat().st_mtime < since - 1.0:  # file times come from a coarser clock than time.time()
                continue
            pid = int(marker.read_text().strip() or 0)
        except (OSError, ValueError):  # removed meanwhile (that run has finished), or not rlrun's
            continue
        if pid > 0 and not _alive(pid):
            continue
        running.append(marker.parent)
    return running


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this host; POSIX only: on Windows os.kill would end it)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True  # someone else's process (PermissionError), or a number os.kill cannot take
    return True


def job_sweep_dir(hydra_cfg: DictConfig) -> Path:
    """A job's sweep dir, from its `hydra` config: its own dir that many levels up as the subdir has parts
    (re-resolving hydra.sweep.dir in a launcher's worker process could give another `${now:}` time)."""
    job_dir = Path(str(hydra_cfg.runtime.output_dir))
    depth = len(Path(str(hydra_cfg.sweep.subdir)).parts)
    return job_dir.parents[depth - 1] if 0 < depth <= len(job_dir.parents) else job_dir.parent


class GracefulSweepStop:
    """SIGINT or SIGTERM in the parent of a parallel (joblib) sweep: let the running jobs finish stopping, then stop.

    A terminal's Ctrl-C reaches the sweep's process and its workers alike. Each running job then checkpoints and
    writes summary.json (status interrupted), which takes a moment; but joblib, on the KeyboardInterrupt in the
    parent, kills its workers at once, and those jobs used to be left without either (their last checkpoint was
    the one before, or none); a SIGTERM ended the parent at once and left its workers behind. This handler runs in
    the parent instead: it writes STOP_MARKER with the signal's name (jobs that start now end at once, untrained;
    running jobs that did not get the signal themselves, as when only this process was signalled, stop as on it
    within a second: Run.stop_file), waits until every run this sweep began has written its summary (at most
    `timeout_s`; a second signal stops the wait), then raises KeyboardInterrupt, on which joblib stops its workers;
    rlrun/entry.py then exits with 128 + `signum`.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, sweep_dir: Path, timeout_s: float = 120.0):
        self.sweep_dir = sweep_dir
        self.timeout_s = timeout_s
        self.since = time.time()
        """When the sweep began: runs untouched since are not its own."""
        self.signum: int | None = None
        """The signal that stopped the sweep, once one has."""
        self.unfinished: list[Path] = []
        """Runs that had not written summary.json when the wait ended."""
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        try:
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self.handler)
        except ValueError:  # not the main thread: Hydra's own handling stays
            self.uninstall()
            return
        os.environ[SWEEP_PID_VARIABLE] = str(os.getpid())  # the workers stop their jobs if this process dies
        spawn_workers_deaf()

    def uninstall(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)
        self.previous = {}
        clear_stop_marker(self.sweep_dir)

    def handler(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second signal interrupts the wait
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            (self.sweep_dir / STOP_MARKER).write_text(signal.Signals(signum).name)
        except OSError:
            pass
        deadline = time.monotonic() + self.timeout_s
        running = runs_in_progress(self.sweep_dir, self.since)
        if running:
            print(f"rlrun: {signal.Signals(signum).name}: waiting for {len(running)} running job(s) to checkpoint "
                  f"and write summary.json (a second signal stops at once)", file=sys.stderr, flush=True)
        watched = list(running)
        try:
            while running and time.monotonic() < deadline:
                time.sleep(0.2)
                running = runs_in_progress(self.sweep_dir, self.since)
        finally:  # still marked: cut short (its process killed), or not done in time
            self.unfinished = [run for run in watched if (run / RUNNING_MARKER).exists()]
        raise KeyboardInterrupt


SWEEP_PID_VARIABLE = "RLRUN_SWEEP_PID"
"""Set by a parallel sweep's process (GracefulSweepStop.install) to its pid; its workers inherit it."""


def sweep_worker_parent() -> int | None:
    """In a worker process of a parallel sweep, the sweep's pid (its parent now); None elsewhere (a job run in the
    sweep's own process, another launcher)."""
    pid = os.environ.get(SWEEP_PID_VARIABLE, "")
    return int(pid) if pid.isdigit() and int(pid) == os.getppid() else None


def spawn_workers_deaf() -> None:
    """Make the loky worker processes that joblib starts from now on block SIGINT and SIGTERM.

    A terminal's Ctrl-C reaches every process of its group. A worker without a job dies of it (KeyboardInterrupt in
    its wait for work), and loky then kills every other worker at once: the running jobs were lost mid-checkpoint
    whenever a worker was idle (the end of a sweep, an Optuna search whose sweeper runs fewer trials at a time than
    the launcher has workers). Workers that block the signals live on; their running jobs stop through the sweep's
    stop marker instead, which GracefulSweepStop writes when the sweep's own process gets the signal (Run.stop_file:
    within a second). The signal mask is inherited across fork and exec, so it is set around loky's spawning of
    workers, after its resource trackers have started (starting one unblocks these signals in the calling thread).
    Without loky's internals as expected (another joblib version), workers are left as they are.
    """
    try:
        from joblib.externals.loky import process_executor
        from joblib.externals.loky.backend import resource_tracker as loky_tracker
    except ImportError:
        return
    from multiprocessing import resource_tracker

    executor = process_executor.ProcessPoolExecutor
    spawn = getattr(executor, "_adjust_process_count", None)
    if spawn is None or getattr(spawn, "rlrun_deaf", False):
        return

    def spawn_deaf(self: Any) -> None:
        loky_tracker.ensure_running()
        resource_tracker.ensure_running()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, GracefulSweepStop.SIGNALS)
        try:
            spawn(self)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    spawn_deaf.rlrun_deaf = True  # type: ignore[attr-defined]
    executor._adjust_process_count = spawn_deaf


def clear_stop_marker(sweep_dir: Path) -> None:
    """Remove a sweep's STOP_MARKER (at a sweep's end, and at its start: one that a killed sweep left behind)."""
    try:
        (sweep_dir / STOP_MARKER).unlink(missing_ok=True)
    except OSError:  # the sweep dir is gone or unwritable: no job will read the marker there either
        pass


class SweepCallback(Callback):
    """Registered under hydra.callbacks in conf/config.yaml for every run and multirun.

    A run's start makes its run dir (`make_output_dir`: one line where it cannot be made). A multirun's start
    creates the sweep dir, because the Optuna sweeper opens its SQLite study there
    (`storage: sqlite:///${hydra.sweep.dir}/optuna.db`) before any job has made the directory.
    After every job it rewrites sweep_summary.csv (atomically, quietly), because a failed job makes Hydra's
    basic sweeper raise before the end; at the end it writes it once more and prints the table.
    """

    running_sweep_dir: Path | None = None
    """The sweep dir once a multirun began in this process (one per process): read again at its end, and by
    rlrun/entry.py to say what a Ctrl-C interrupted."""
    graceful_stop: GracefulSweepStop | None = None
    """A parallel sweep's Ctrl-C handler in its own process (read by rlrun/entry.py too)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra makes the run dir before rlrun's code runs, and a path it cannot make (an existing file, a
        # directory under a file) would end in its traceback: made here first, or refused in one line. The dir may
        # read Hydra's own config (`${hydra:job.name}`), which Hydra sets only later, as its run_job does.
        HydraConfig.instance().set_config(config)
        make_output_dir(Path(str(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Before the sweeper opens its study: a wrong direction would otherwise be stored with it, and only its
        # first trial would say so (every trial failing, then Optuna's own traceback for a study without a result).
        # An unknown `+key` is the same in every job: refused once here, not once per trial.
        from rlrun.cli import check_known_keys

        try:
            check_known_keys(config)
            check_direction(OmegaConf.select(config, "objective.metric"), config.hydra.sweeper.get("direction"))
            check_stored_study(config.hydra.sweeper)
            check_launcher(config)
        except ValueError as exc:
            from rlrun.cli import EXIT_BAD_INPUT, _error

            _error(str(exc))
            sys.exit(EXIT_BAD_INPUT)
        # Resolved once here; the sweeper and the launcher read the same cached `${now:…}` value.
        sweep_dir = Path(str(config.hydra.sweep.dir))
        make_output_dir(sweep_dir, "hydra.sweep.dir")
        SweepCallback.running_sweep_dir = sweep_dir
        clear_stop_marker(sweep_dir)
        if "joblib" in str(config.hydra.launcher.get("_target_", "")):
            SweepCallback.graceful_stop = GracefulSweepStop(sweep_dir)
            SweepCallback.graceful_stop.install()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = job_sweep_dir(config.hydra)
        if sweep_dir.is_dir():
            summarize_sweep(sweep_dir, quiet=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if SweepCallback.graceful_stop is not None:
            SweepCallback.graceful_stop.uninstall()
        sweep_dir = SweepCallback.running_sweep_dir or Path(str(config.hydra.sweep.dir))
        if sweep_dir.is_dir() and summarize_sweep(sweep_dir) is None:
            print_line(f"Sweep summary: no finished run under {sweep_dir}")


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m rlrun.sweep SWEEP_DIR…  (writes SWEEP_DIR/sweep_summary.csv)")
        sys.exit(0 if args else 2)
    status = 0
    for arg in args:
        if summarize_sweep(Path(arg)) is None:
            print(f"rlrun.sweep: no run with a summary.json under {arg}", file=sys.stderr)
            status = 2
    sys.exit(status)


if __name__ == "__main__":
    main()
