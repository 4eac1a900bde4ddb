"""The run object: builds envs, agent, evaluator and loggers from a typed config, and runs the loop."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rlrun.algos import ALGORITHMS, Agent, check_action_space, check_hyperparameters
from rlrun.algos.dqn import DQNConfig
from rlrun.algos.protocol import AgentContext
from rlrun.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_buffer,
    load_checkpoint,
    save_checkpoint,
)
from rlrun.config import Config, Device, TransferKind
from rlrun.envs import EnvRunner, check_env_steps, make_env, make_vec_env
from rlrun.evaluation import EvalResult, Evaluator, eval_base_seed
from rlrun.files import RUNNING_MARKER, RunDirLock, first_line, print_line, remove_stale_temp_files
from rlrun.logger import EvaluationsCsv, MetricsLogger, Progress
from rlrun.networks import check_bf16
from rlrun.offpolicy import gradient_steps_per_phase
from rlrun.onpolicy import observation_normalizer


class NonFiniteError(RuntimeError):
    """A loss or a parameter became NaN or infinite."""


class RunInterrupted(Exception):
    """The run stopped on SIGINT/SIGTERM after writing its summary and (unless a second Ctrl-C cut it short) its
    checkpoint; `summary` says which step that checkpoint holds."""

    def __init__(self, signum: int, summary: dict[str, Any], run_dir: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.summary = summary
        self.run_dir = run_dir


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's CPU allocator raises a plain RuntimeError ("can't allocate memory"), CUDA's a subclass of it."""
    return isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or "can't allocate memory" in str(exc)


def allocation_failure(exc: BaseException) -> str:
    """What an allocation failure asked for, in a few words."""
    requested = re.search(r"tried to allocate (\d+) bytes", str(exc))  # the CPU allocator's wording
    if requested:
        return f"one of its tensors needs {int(requested[1]) / 2**30:,.1f} GiB"
    return f"{type(exc).__name__}: {first_line(exc)[:200]}"


def seed_everything(seed: int) -> None:
    """The one place that seeds Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_flush_denormals(enabled: bool) -> None:
    """Subnormal floats as zero (x86 FTZ/DAZ) in CPU arithmetic, or not (`flush_denormals`).

    The flag is per thread: torch's intra-op threads take it from the thread that starts them, at the process's
    first multi-threaded op, which in `rlrun` comes after this. The same setting gives the same numbers: a run
    is reproducible either way, and resumes either way.
    """
    if not torch.set_flush_denormal(enabled) and enabled:
        warnings.warn("flush_denormals=true: this CPU cannot flush subnormal floats (torch supports it on x86 "
                      "with SSE3); they stay, and arithmetic on them stays slow", stacklevel=2)


def resolve_device(device: Device) -> torch.device:
    if device == Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == Device.cuda and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for, but torch sees no CUDA device here "
                         "(use device=cpu or device=auto)")
    return torch.device(device.value)


def model_state(agent: Agent) -> dict[str, torch.Tensor]:
    """The checkpoint's "model": every network's state dict, keys prefixed by the network's name."""
    return {f"{name}.{key}": value.detach().clone()
            for name, module in agent.modules().items() for key, value in module.state_dict().items()}


def load_model_state(agent: Agent, state: dict[str, torch.Tensor]) -> None:
    for name, module in agent.modules().items():
        prefix = f"{name}."
        sub = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        try:
            module.load_state_dict(sub)
        except RuntimeError as exc:
            # torch's first line names the module class only; the lines after it name the tensors
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            details = "; ".join(lines[1:4]) + (f"; and {len(lines) - 4} more" if len(lines) > 4 else "")
            raise CheckpointError(f"the checkpoint's network {name!r} does not fit this config: "
                                  f"{details or lines[0]} (did network.* change?)") from None


def _tensorise(obj: Any) -> Any:
    """NumPy arrays → tensors, recursively: torch.load(weights_only=True) reads tensors, not ndarrays."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, dict):
        return {key: _tensorise(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_tensorise(value) for value in obj]
    return obj


def _numpyise(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {key: _numpyise(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_numpyise(value) for value in obj]
    return obj


def rng_states() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        # PPO's and SAC's sampling draws from the CUDA generators when the run is on a GPU
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": json.dumps({**np_state, "state": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                                     for k, v in np_state["state"].items()}}),
        "python": json.dumps(random.getstate()),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    cuda_states = states.get("torch_cuda") or []  # absent in checkpoints from before it was saved
    if cuda_states:
        if torch.cuda.is_available() and torch.cuda.device_count() >= len(cuda_states):
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            warnings.warn("this checkpoint comes from a GPU run; without CUDA here its CUDA random state cannot "
                          "be restored, so the resumed run continues correctly but not bit-for-bit", stacklevel=2)
    np_state = json.loads(states["numpy"])
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    version, internal, gauss = json.loads(states["python"])
    random.setstate((version, tuple(internal), gauss))


@dataclass
class RunState:
    """Counters of the loop itself (saved in every checkpoint)."""

    eval_index: int = 0
    last_eval_step: int = -1
    final_return_mean: float | None = None
    best_return_mean: float | None = None
    solved_at_step: int | None = None
    solved_at_wall_time_s: float | None = None
    elapsed_before_s: float = 0.0
    next_eval: int = 0
    next_checkpoint: int = 0
    stopped_at_step: int | None = None


def find_resume_checkpoint(resume: str | None, run_dir: Path) -> Path | None:
    """`resume` → the checkpoint to continue from, or None for a fresh start."""
    if resume is None:
        return None
    if resume == "auto":
        candidate = run_dir / "checkpoints" / "last.pt"
        if not candidate.exists():
            return None
        try:
            load_checkpoint(candidate)
        except CheckpointError as exc:
            raise CheckpointError(f"resume=auto found {candidate} but cannot use it: {exc}") from None
        return candidate
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.exists():
        raise CheckpointError(f"resume={resume}: no checkpoint at {path}")
    return path


def check_not_a_transfer_run(checkpoint: Path) -> None:
    """A transfer run's optimizers have its frozen set and param groups: resuming it needs its transfer options."""
    from rlrun.transfer import read_report

    report = read_report(checkpoint.parent.parent)
    if report is not None:
        raise CheckpointError(f"{checkpoint} belongs to a transfer={report['kind']} run (from {report['source']}); "
                              f"resume it with the same transfer=… options it was started with")


# A resume re-homes the replay buffer (ReplayBuffer.load_arrays); the CUDA-graph update is the same update, and
# a compiled one (algo.compile) the same update up to float rounding.
RESUME_MAY_CHANGE = ("algo.buffer_size:", "algo.cuda_graphs:", "algo.compile:",
                     "transfer.source:")  # a resumed transfer run rebuilds from its transfer_report.json


def check_budget(cfg: Config) -> list[str]:
    """Refuse a run that would train nothing: total_steps at most `learning_starts` (it would end, "completed",
    before its first gradient step) or `gradient_steps=0`. Returns warnings where total_steps is below one
    iteration (a rollout, or `train_freq` vector steps), which the algorithm collects whole (total_steps=1 ran PPO's
    2,048 steps without a word), and where the run ends before a periodic update first happens: TD3's delayed actor
    and target update, SAC's target update, DQN's target copy."""
    algo = cfg.algo
    learning_starts = getattr(algo, "learning_starts", None)
    if learning_starts is not None and cfg.total_steps <= learning_starts:
        raise ValueError(f"total_steps={cfg.total_steps} ≤ algo.learning_starts={learning_starts}: the run would end "
                         f"before its first gradient step. Give more total_steps, or a smaller algo.learning_starts")
    gradient_steps = getattr(algo, "gradient_steps", None)
    if gradient_steps == 0:
        raise ValueError("algo.gradient_steps=0 trains nothing: give a positive number, or -1 (one per env step "
                         "collected)")
    notes: list[str] = []
    num_envs = int(getattr(algo, "num_envs", 1))
    per_step = int(getattr(algo, "num_steps", getattr(algo, "train_freq", 1)))
    what = "num_steps" if hasattr(algo, "num_steps") else "train_freq"
    if cfg.total_steps < num_envs * per_step:
        notes.append(f"total_steps={cfg.total_steps:,} is less than one iteration of {algo.name}, algo.num_envs × "
                     f"algo.{what} = {num_envs} × {per_step} = {num_envs * per_step:,} env steps, which it collects "
                     f"whole: this run takes {num_envs * per_step:,}")
    if isinstance(algo, DQNConfig):  # its target_update_interval counts env steps
        if cfg.total_steps < algo.target_update_interval:
            notes.append(f"the target network is updated every algo.target_update_interval="
                         f"{algo.target_update_interval:,} env steps, but total_steps={cfg.total_steps:,}: it stays "
                         f"at its initial weights")
    elif learning_starts is not None and gradient_steps is not None:  # TD3's and SAC's count gradient steps
        phases = -(-(cfg.total_steps - learning_starts) // (num_envs * per_step))
        updates = phases * gradient_steps_per_phase(gradient_steps, per_step, num_envs)
        for key, moves in (("policy_delay", "the actor and the target networks move"),
                           ("target_update_interval", "the target critics move")):
            every = getattr(algo, key, None)
            if every is not None and updates < every:
                notes.append(f"{moves} once every algo.{key}={every} gradient steps, but this run takes about "
                             f"{updates:,} (total_steps={cfg.total_steps:,}): they never move")
    return notes


def refuse_to_overwrite(run_dir: Path, continuing: Path | None = None) -> None:
    """A fresh run, or another run's checkpoint continued here, would truncate evaluations.csv and replace the
    checkpoints of a run already in `run_dir`."""
    earlier = [name for name in ("summary.json", "checkpoints/last.pt", "checkpoints/best.pt")
               if (run_dir / name).exists()]
    if not earlier:
        return
    if continuing is None:
        raise ValueError(f"{run_dir} already holds a run ({', '.join(earlier)}); a fresh run there would overwrite "
                         f"it. Continue it with resume={run_dir} (or resume=auto), or choose another "
                         f"hydra.run.dir.")
    raise ValueError(f"{run_dir} already holds a run ({', '.join(earlier)}); continuing {continuing} there would "
                     f"overwrite it. Choose another (new) hydra.run.dir, or resume=auto to continue the run that "
                     f"is there.")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested YAML mapping as {"algo.learning_rate": 0.001, …}; empty mappings leave no entry."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    flat: dict[str, Any] = {}
    for key, child in node.items():
        flat.update(_flatten(child, f"{prefix}{key}."))
    return flat


def config_changes(saved_yaml: str, current_yaml: str, keys: tuple[str, ...],
                   added: tuple[str, ...] = ()) -> list[str]:
    """`name: saved → current` for each setting under `keys` ("seed", "env.id", "algo") that differs between
    two resolved configs (a checkpoint's and this run's). Settings under `added` that the saved config lacks
    (written by a version without them) are not counted as changes, nor are keys that no schema declares (a
    `+key` that a version before 2026-11-26 accepted, and ignored)."""
    saved_tree, current_tree = yaml.safe_load(saved_yaml) or {}, yaml.safe_load(current_yaml) or {}
    saved, current = _flatten(saved_tree), _flatten(current_tree)
    undeclared = tuple(_undeclared(saved_tree) | _undeclared(current_tree))

    def under(name: str, prefixes: tuple[str, ...]) -> bool:
        return any(name == key or name.startswith(f"{key}.") for key in prefixes)

    names = sorted(name for name in saved.keys() | current.keys()
                   if under(name, keys) and (name in saved or not under(name, added)) and not under(name, undeclared))
    return [f"{name}: {saved.get(name)} → {current.get(name)}" for name in names
            if not _same_value(saved.get(name), current.get(name))]


def _undeclared(tree: Any) -> set[str]:
    """The keys of a plain config tree that no schema declares (none when it is not a config at all)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from rlrun.config import unknown_keys

    if not isinstance(tree, dict):
        return set()
    try:
        return set(unknown_keys(OmegaConf.create(tree)))
    except (OmegaConfBaseException, ValueError, TypeError):
        return set()


def _same_value(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


class Run:
    """One training run: `Run(cfg, run_dir, config_yaml).train()` returns the summary dict."""

    def __init__(self, cfg: Config, run_dir: Path, config_yaml: str):
        # One process at a time trains in a run dir (RunDirLock); taken before anything there is read or written.
        self._lock = RunDirLock(run_dir)
        self._lock.acquire()
        try:
            removed = remove_stale_temp_files(Path(run_dir))
            if removed and cfg.log.progress.value != "none":
                print_line(f"removed {len(removed)} temporary file(s) of a process killed while writing: "
                           f"{', '.join(path.name for path in removed)}")
            self._build(cfg, run_dir, config_yaml)
        except BaseException:  # refused or failed while being built: its envs (worker processes) must not linger
            for part in ("runner", "evaluator", "logger", "progress"):
                try:
                    if getattr(self, part, None) is not None:
                        getattr(self, part).close()
                except Exception:  # noqa: BLE001  (the error that stopped the build is the one to report)
                    pass
            self._lock.release(refused=True)  # a refused run leaves the directory as it was
            raise

    def _build(self, cfg: Config, run_dir: Path, config_yaml: str) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.config_yaml = config_yaml
        self.algo_name = cfg.algo.name
        if self.algo_name not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algo_name!r}; known: {', '.join(ALGORITHMS)}")
        check_hyperparameters(cfg.algo)
        if cfg.total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {cfg.total_steps}")
        if cfg.stop_at_return is not None and math.isnan(cfg.stop_at_return):
            raise ValueError("stop_at_return=nan would never stop the run: give a number, or null for never")
        if cfg.eval.every_steps < 0 or cfg.checkpoint.every_steps < 0:
            raise ValueError("eval.every_steps and checkpoint.every_steps must be >= 0 (0 = off)")
        if cfg.log.every_steps < 0:
            raise ValueError(f"log.every_steps must be >= 0 (0 = every iteration), got {cfg.log.every_steps}")
        # More threads than cores only oversubscribes them, but tens of thousands made libgomp fail (a segfault).
        most_threads = max(64, 8 * (os.cpu_count() or 1))
        if not 0 <= cfg.torch_threads <= most_threads:
            raise ValueError(f"torch_threads must be between 0 (torch's default) and {most_threads} (8 × this "
                             f"machine's {os.cpu_count() or 1} logical CPUs, at least 64), got {cfg.torch_threads}")
        if not 0 <= cfg.seed < 2**63:  # torch takes up to 2^64 − 1, and the envs get seed + i
            raise ValueError(f"seed must be in [0, 2^63), got {cfg.seed}")
        if any(width <= 0 for width in cfg.network.hidden):
            raise ValueError(f"network.hidden must list positive layer widths, got {list(cfg.network.hidden)}")
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        set_flush_denormals(cfg.flush_denormals)
        self.device = resolve_device(cfg.device)
        if getattr(cfg.algo, "bf16", False):
            check_bf16(self.device)
        if getattr(cfg.algo, "cuda_graphs", False) and cfg.transfer.kind != TransferKind.none:
            raise ValueError("algo.cuda_graphs=true cannot be combined with transfer learning (a captured update "
                             "would not see layers frozen or unfrozen, or regrouped learning rates); leave it off")
        self.resume_from = find_resume_checkpoint(cfg.resume, self.run_dir)
        leftovers = [name for name in ("evaluations.csv", "checkpoints/best.pt") if (self.run_dir / name).exists()]
        if cfg.resume == "auto" and self.resume_from is None and leftovers and cfg.log.progress.value != "none":
            print_line(f"resume=auto: {self.run_dir} has no checkpoints/last.pt to continue from (the run there stopped "
                       f"before its first checkpoint; it holds {', '.join(leftovers)}): starting from step 0")
        if cfg.resume is None:
            refuse_to_overwrite(self.run_dir)
        elif self.resume_from is not None and not self._resumes_in_place():
            refuse_to_overwrite(self.run_dir, continuing=self.resume_from)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.state = RunState()
        self._stop_signal: int | None = None
        self.stop_file: Path | None = None
        """A file whose appearance stops the run as its signal would (a parallel sweep's stop marker, set by
        rlrun/cli.py for multirun jobs: rlrun/sweep.py GracefulSweepStop). It holds the signal's name."""
        self.stop_with_parent: int | None = None
        """The pid of a parallel sweep's process that runs this job in a worker: if it dies (a SIGKILL), the run stops
        as on SIGTERM instead of training on, orphaned, in a worker that blocks signals (rlrun/sweep.py)."""
        self._next_stop_check = 0.0
        self.resume_changes: list[str] = []  # RESUME_MAY_CHANGE settings a resume changed (reported)
        self._best_payload: dict[str, Any] | None = None  # what best.pt holds (a copy also goes into last.pt)
        # A continuation into a new directory writes the best.pt it carries over with its first last.pt: written at
        # start, a run that died before its first checkpoint left a best.pt that refused the same command again.
        self._best_pending = False

        seed_everything(cfg.seed)
        probe = make_env(cfg.env)
        check_action_space(self.algo_name, probe.action_space, cfg.env.id)
        check_env_steps(probe, cfg.env)
        if cfg.env.reward_threshold is None and probe.spec is not None:  # any id: the registry's threshold
            cfg.env.reward_threshold = probe.spec.reward_threshold
        probe.close()
        num_envs = int(getattr(cfg.algo, "num_envs", 1))
        if num_envs <= 0:
            raise ValueError(f"algo.num_envs must be positive, got {num_envs}")
        self.runner = EnvRunner(make_vec_env(cfg.env, num_envs), seed=cfg.seed)
        ctx = AgentContext(self.runner.single_observation_space, self.runner.single_action_space,
                           cfg.network, self.device, cfg.seed, cfg.total_steps, num_envs)
        try:
            self.agent: Agent = ALGORITHMS[self.algo_name].make_agent(cfg.algo, ctx)
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            sizes = f"network.hidden={list(cfg.network.hidden)}" + (
                f", algo.buffer_size={cfg.algo.buffer_size}" if hasattr(cfg.algo, "buffer_size") else "")
            raise ValueError(f"the agent does not fit in memory ({sizes}): {allocation_failure(exc)}. Use smaller "
                             f"networks or a smaller buffer.") from None
        self.evaluator = Evaluator(cfg.env, cfg.eval.episodes, eval_base_seed(cfg.seed),
                                   video_dir=self.run_dir / "videos" if cfg.eval.video else None)

        # transfer learning (rlrun/transfer.py): a fresh run loads the source; a resumed one has its weights
        # and only rebuilds the same frozen set and optimizer param groups before loading its state
        self.transfer = None
        if (cfg.transfer.kind == TransferKind.none and cfg.transfer.source is not None
                and cfg.log.progress.value != "none"):  # allowed: `-m transfer=none,finetune transfer.source=…`
            print_line(f"transfer=none: transfer.source={cfg.transfer.source} is not loaded (a run from scratch; "
                       f"transfer=finetune, freeze, layerwise or feature_extract start from it)")
        if cfg.transfer.kind != TransferKind.none:
            from rlrun.transfer import Transfer
            self.transfer = Transfer(cfg.transfer, self.agent)
        resume_payload = None
        if self.resume_from is not None:
            resume_payload = load_checkpoint(self.resume_from)
            if self.transfer is not None:
                self.transfer.resume(self.resume_from.parent.parent, int(resume_payload["step"]))
            else:
                check_not_a_transfer_run(self.resume_from)
            try:
                self._restore(resume_payload)
            except (KeyError, TypeError, IndexError, AttributeError, ValueError) as exc:  # readable, not a whole run state
                raise CheckpointError(f"{self.resume_from} does not hold a whole rlrun run state ({type(exc).__name__}: "
                                      f"{exc}); it is damaged or was not written by rlrun's training loop") from None
        else:
            self.state.next_eval = cfg.eval.every_steps
            self.state.next_checkpoint = cfg.checkpoint.every_steps
            if self.transfer is not None:
                self.transfer.load(print_line if cfg.log.progress.value != "none" else None)

        budget_warnings = check_budget(cfg)  # after the other checks: theirs say more about a wrong setting
        if cfg.log.progress.value != "none":
            for warning in budget_warnings:
                print_line(warning)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        csv_length = None
        if resume_payload is not None:
            csv_length = int(resume_payload["run_state"]["csv_length"])
            source_csv = self.resume_from.parent.parent / "evaluations.csv"
            target_csv = self.run_dir / "evaluations.csv"
            if not self._resumes_in_place() and source_csv.exists():  # another run's checkpoint: carry its rows
                shutil.copyfile(source_csv, target_csv)
            self._restore_best(resume_payload)
        self.csv = EvaluationsCsv(self.run_dir / "evaluations.csv", resume_length=csv_length)
        start_step = self.runner.global_step
        self.logger = MetricsLogger(self.run_dir, cfg.log.tensorboard, cfg.log.every_steps,
                                    purge_step=start_step + 1 if resume_payload is not None else None)
        if resume_payload is not None:
            self.logger.load_state(resume_payload["run_state"]["logger"])
        self.progress = Progress(cfg.log.progress.value, cfg.total_steps, start_step, cfg.log.plain_every_s,
                                 f"{self.algo_name} {cfg.env.id} seed={cfg.seed}")
        self._session_start = time.monotonic()
        self._session_start_step = start_step
        self._session_evaluations = 0
        # The step this run directory's last.pt holds (None before its first): what resume=auto continues from.
        self._checkpoint_step = start_step if self._resumes_in_place() else None
        if resume_payload is not None:
            self.progress.message(f"resumed from {self.resume_from} at step {start_step:,}"
                                  + (f", with changed settings: {'; '.join(self.resume_changes)}"
                                     if self.resume_changes else ""))
        if self.csv.damage is not None:
            self.progress.message(self.csv.damage)
        # Written now that nothing refused the run: a refused one leaves the directory as it was. Without transfer, a
        # report here is a refused or killed transfer run's that no checkpoint goes with (one that does was refused
        # above), and it would make this run's checkpoints look like a transfer run's to a later resume.
        if self.transfer is not None:
            self.transfer.save_report(self.run_dir)
        else:
            from rlrun.transfer import REPORT_FILE
            (self.run_dir / REPORT_FILE).unlink(missing_ok=True)

    def _resumes_in_place(self) -> bool:
        """Whether the checkpoint being resumed is this run directory's own (resume=auto or resume=RUN_DIR)."""
        return self.resume_from is not None and self.resume_from.parent.parent.resolve() == self.run_dir.resolve()

    def _restore_best(self, payload: dict[str, Any]) -> None:
        """best.pt as the resumed checkpoint knows it. A run killed after an evaluation that wrote a new best.pt but
        before its next checkpoint left a best.pt from past that checkpoint: its evaluation row is dropped on resume
        and `best_return_mean` is the checkpoint's. So `last.pt` holds the best evaluation's weights too ("best",
        since 2026-11-26; {} before any evaluation), and they are written back as best.pt. A checkpoint from
        before that keeps the best.pt that is not from past it (carried over from another run's directory), and
        this run's checkpoints hold that one from then on."""
        best_pt = self.ckpt_dir / "best.pt"
        if "best" in payload:
            best = payload["best"]
            if not isinstance(best, dict) or (best and not isinstance(best.get("model"), dict)):
                raise CheckpointError(f"{self.resume_from} is damaged: its copy of the best evaluation's weights "
                                      f"(\"best\") is not a checkpoint payload")
            self._best_payload = best or None
            if not self._resumes_in_place():
                self._best_pending = self._best_payload is not None
            elif self._best_payload is not None:
                save_checkpoint(best_pt, self._best_payload)
            else:
                best_pt.unlink(missing_ok=True)  # from an evaluation after the checkpoint, which did not count
            return
        kept = self._best_at_or_before(self.resume_from.parent / "best.pt", int(payload["step"]))
        if kept is None:
            return  # `_payload` then leaves "best" out of this run's checkpoints until an evaluation writes one
        self._best_pending = not self._resumes_in_place()
        self._best_payload = kept

    @staticmethod
    def _best_at_or_before(best: Path, step: int) -> dict[str, Any] | None:
        """`best`'s payload when it exists, is readable and was saved at or before `step`, else None (a run killed
        after a later best.pt has one from past its last checkpoint: its return is not in the restored counters,
        and its evaluation row was dropped)."""
        try:
            payload = load_checkpoint(best)  # its step, when there, is a whole number (checked there)
            if payload.get("step") is None or payload["step"] > step:
                return None
        except CheckpointError:
            return None
        return {key: value for key, value in payload.items() if key != "format"}

    def _already_stopped(self) -> bool:
        """A resumed run that stop_at_return had stopped stays stopped (as a completed one stays complete), so the
        same command can be requeued; raising or dropping stop_at_return continues it."""
        state, threshold = self.state, self.cfg.stop_at_return
        return (threshold is not None and state.stopped_at_step == self.runner.global_step
                and state.final_return_mean is not None and state.final_return_mean >= threshold)

    # -- the loop --------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.state.elapsed_before_s + time.monotonic() - self._session_start

    def train(self) -> dict[str, Any]:
        cfg, runner, agent = self.cfg, self.runner, self.agent
        status, error = ("stopped" if self._already_stopped() else "completed"), None
        previous_handlers = self._install_signal_handlers()
        running = self._mark_running()
        try:
            while status != "stopped" and runner.global_step < cfg.total_steps:
                metrics = agent.train_iteration(runner)
                step = runner.global_step
                if self.transfer is not None:
                    self.transfer.on_step(step, self.progress.message)
                check_finite(metrics, agent)
                self._log_episodes()
                self.logger.update(metrics)
                if self.logger.due(step):
                    self.logger.flush_latest(step, {"charts/sps": self.progress.steps_per_second(step)})
                if cfg.eval.every_steps > 0 and step >= self.state.next_eval:
                    self.state.next_eval = (step // cfg.eval.every_steps + 1) * cfg.eval.every_steps
                    result = self.evaluate(step)
                    if cfg.stop_at_return is not None and result.return_mean >= cfg.stop_at_return:
                        status = "stopped"
                        self.state.stopped_at_step = step
                        self.progress.message(f"eval mean {result.return_mean:.1f} ≥ stop_at_return="
                                              f"{cfg.stop_at_return}: stopping at step {step:,}")
                if cfg.checkpoint.every_steps > 0 and step >= self.state.next_checkpoint:
                    self.state.next_checkpoint = ((step // cfg.checkpoint.every_steps + 1)
                                                  * cfg.checkpoint.every_steps)
                    self.save()
                self.progress.update(step)
                if status == "stopped":
                    break
                if self._stop_signal is None and self.stop_file is not None:
                    self._check_stop_file()
                if self._stop_signal is not None:
                    status = "interrupted"
                    break
            if status != "interrupted" and self.logger.pending():
                self.logger.flush_latest(runner.global_step,
                                         {"charts/sps": self.progress.steps_per_second(runner.global_step)})
            if status != "interrupted" and self.state.last_eval_step != runner.global_step:
                self.evaluate(runner.global_step)
            if not self._idle_session():  # a requeued finished run: its last.pt already holds this state
                self.save()
        except NonFiniteError as exc:
            kept = (f"its last good checkpoint (step {self._checkpoint_step:,}) is kept"
                    if self._checkpoint_step is not None else "no checkpoint had been written yet")
            status, error = "failed", f"{exc}; {kept}"
        except KeyboardInterrupt:
            status, error = "interrupted", "KeyboardInterrupt"
        except Exception as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._restore_signal_handlers(previous_handlers)
            self.progress.update(runner.global_step, force=True)
            self.progress.close()
            summary = self.write_summary(status, error)
            if running is not None:
                running.unlink(missing_ok=True)
            self.close()
        if status == "interrupted" and self._stop_signal is not None:
            raise RunInterrupted(self._stop_signal, summary, self.run_dir)
        if status == "failed":
            raise NonFiniteError(error)
        return summary

    def _idle_session(self) -> bool:
        """A session resumed in place that neither stepped nor evaluated (the same command requeued after the run
        had completed or stopped): it must leave what the run wrote as it was. (A checkpoint continued into a new
        directory always writes that directory's own last.pt and summary.)"""
        return (self._resumes_in_place() and self.runner.global_step == self._session_start_step
                and self._session_evaluations == 0)

    def _log_episodes(self) -> None:
        finished = self.runner.pop_finished()
        for episode_return, length, step in zip(finished.returns, finished.lengths, finished.steps):
            self.logger.log_episode(episode_return, length, step)
        if finished.returns:
            self.progress.last_episode_return = finished.returns[-1]

    def evaluate(self, step: int) -> EvalResult:
        result = self.evaluator.evaluate(self.agent.act, self.state.eval_index,
                                         video_name=f"step{step:08d}" if self.cfg.eval.video else None)
        self._session_evaluations += 1
        state = self.state
        state.eval_index += 1
        state.last_eval_step = step
        state.final_return_mean = result.return_mean
        wall = self.elapsed()
        self.csv.append(step, wall, result.return_mean, result.return_std, result.length_mean)
        self.logger.log({"eval/return_mean": result.return_mean, "eval/return_std": result.return_std,
                         "eval/length_mean": result.length_mean}, step)
        threshold = self.cfg.env.reward_threshold
        if state.solved_at_step is None and threshold is not None and result.return_mean >= threshold:
            state.solved_at_step, state.solved_at_wall_time_s = step, wall
        if state.best_return_mean is None or result.return_mean > state.best_return_mean:
            state.best_return_mean = result.return_mean
            self._best_payload = self._payload(step, full=False)  # last.pt carries it too (_restore_best)
            save_checkpoint(self.ckpt_dir / "best.pt", self._best_payload)
            self._best_pending = False
        self.progress.last_eval_return = result.return_mean
        self.progress.message(f"step {step:,}: eval return {result.return_mean:.1f} ± {result.return_std:.1f}"
                              f" (length {result.length_mean:.0f})")
        return result

    # -- checkpoints -------------------------------------------------------------------------------------
    def _payload(self, step: int, full: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": model_state(self.agent), "algo": self.algo_name, "env_id": self.cfg.env.id,
            "step": step, "config": self.config_yaml,
        }
        obs_norm = observation_normalizer(self.agent)
        if obs_norm is not None:  # the policy acts on normalised observations: best.pt needs them too
            payload["obs_norm"] = _tensorise(obs_norm.state())
        if full:
            run_state = {key: value for key, value in vars(self.state).items()}
            run_state.update(elapsed_before_s=self.elapsed(), csv_length=self.csv.length(),
                             logger=self.logger.state(), rng=rng_states())
            payload.update(agent_state=_tensorise(self.agent.training_state()),
                           runner_state=_tensorise(self.runner.state()), run_state=run_state)
            if self._best_payload is not None or self.state.best_return_mean is None:
                payload["best"] = self._best_payload or {}  # else unknown (see _restore_best): left out
        return payload

    def save(self) -> None:
        step = self.runner.global_step
        check_parameters_finite(self.agent)
        if self._best_pending:  # the best.pt a continuation carries over, with its first last.pt
            save_checkpoint(self.ckpt_dir / "best.pt", self._best_payload)
            self._best_pending = False
        save_checkpoint(self.ckpt_dir / "last.pt", self._payload(step, full=True), self.agent.buffer_arrays(),
                        step=step, committed=lambda: setattr(self, "_checkpoint_step", step))

    def _restore(self, payload: dict[str, Any]) -> None:
        if payload.get("algo") != self.algo_name or payload.get("env_id") != self.cfg.env.id:
            raise CheckpointError(f"cannot resume: {self.resume_from} is {payload.get('algo')} on "
                                  f"{payload.get('env_id')}, this run is {self.algo_name} on {self.cfg.env.id}")
        if "run_state" not in payload:
            raise CheckpointError(f"cannot resume from {self.resume_from}: it holds weights only "
                                  f"(best.pt); resume from last.pt or the run directory")
        saved_config = str(payload.get("config") or "")
        if saved_config:
            try:
                changes = config_changes(saved_config, self.config_yaml,
                                         ("seed", "env.id", "env.kwargs", "env.max_episode_steps", "algo", "network",
                                          "transfer"), added=("network", "transfer"))
            except yaml.YAMLError:
                raise CheckpointError(f"{self.resume_from}'s stored config is not valid YAML") from None
            self.resume_changes = [change for change in changes if change.startswith(RESUME_MAY_CHANGE)]
            fixed = [change for change in changes if change not in self.resume_changes]
            if fixed:
                raise CheckpointError(
                    f"cannot resume {self.resume_from} with another {'; '.join(fixed)}: its saved episodes, random "
                    f"streams and optimizer state belong to the settings it was started with. Resume with those; "
                    f"to go on with new ones, start a run with transfer=finetune transfer.source=<that run>")
        saved_envs = len(payload["runner_state"]["env_headers"])
        if saved_envs != self.runner.num_envs:
            raise CheckpointError(f"cannot resume: {self.resume_from} ran {saved_envs} envs, this run has "
                                  f"{self.runner.num_envs}; resume with algo.num_envs={saved_envs}")
        load_model_state(self.agent, payload["model"])
        self.agent.load_training_state(payload["agent_state"])
        buffer = load_buffer(self.resume_from, payload)
        if buffer is not None:
            try:
                self.agent.load_buffer_arrays(buffer)
            except ValueError as exc:
                raise CheckpointError(f"replay buffer {payload.get('buffer_file')} next to {self.resume_from}: "
                                      f"{exc}") from None
        self.runner.load_state(_numpyise(payload["runner_state"]))
        run_state = payload["run_state"]
        for key, default in vars(RunState()).items():  # a field added later reads as its default
            setattr(self.state, key, run_state.get(key, default))
        set_rng_states(run_state["rng"])

    # -- signals, summary ----------------------------------------------------------------------------------
    def _request_stop(self, signum: int) -> None:
        self._stop_signal = signum
        self.progress.message(f"{signal.Signals(signum).name}: checkpointing and stopping…")

    def _mark_running(self) -> Path | None:
        """RUNNING_MARKER in the run dir of a sweep's job (one with a stop_file), None elsewhere or if unwritable."""
        if self.stop_file is None:
            return None
        path = self.run_dir / RUNNING_MARKER
        try:
            path.write_text(f"{os.getpid()}\n")
        except OSError:
            return None
        return path

    def _check_stop_file(self) -> None:
        """Stop as on the signal named in `stop_file`, once it exists (looked for at most once a second)."""
        now = time.monotonic()
        if now < self._next_stop_check:
            return
        self._next_stop_check = now + 1.0
        if self.stop_with_parent is not None and os.getppid() != self.stop_with_parent:
            self._request_stop(signal.SIGTERM)
            return
        try:
            name = self.stop_file.read_text().strip()
        except OSError:
            return
        self._request_stop(getattr(signal.Signals, name, signal.SIGINT))

    def _install_signal_handlers(self) -> dict[int, Any]:
        def handler(signum, _frame):
            if self._stop_signal is not None:  # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._request_stop(signum)

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread (e.g. some launchers): leave signals alone
                pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def write_summary(self, status: str, error: str | None) -> dict[str, Any]:
        steps = self.runner.global_step
        kept = self._kept_summary(status, steps)
        if kept is not None:
            return kept
        wall = self.elapsed()
        session_steps = steps - self._session_start_step
        session_wall = time.monotonic() - self._session_start
        summary = {
            "algo": self.algo_name, "env_id": self.cfg.env.id, "seed": self.cfg.seed,
            "total_steps": self.cfg.total_steps, "steps_done": steps, "wall_time_s": round(wall, 3),
            "steps_per_second": round(session_steps / session_wall, 1) if session_steps and session_wall > 0 else None,
            "final_return_mean": self.state.final_return_mean,
            "best_return_mean": self.state.best_return_mean,
            "solved_at_step": self.state.solved_at_step,
            "solved_at_wall_time_s": (round(self.state.solved_at_wall_time_s, 3)
                                      if self.state.solved_at_wall_time_s is not None else None),
            "status": status, "reward_threshold": self.cfg.env.reward_threshold,
            "device": str(self.device), "resumed_from": str(self.resume_from) if self.resume_from else None,
            "error": error, "checkpoint_step": self._checkpoint_step,
        }
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    def _kept_summary(self, status: str, steps: int) -> dict[str, Any] | None:
        """The run directory's summary.json, when an idle session finds the run as that summary describes it
        (completed or stopped at this step): rewriting it would only replace the run's throughput with the idle
        session's and its wall time with a longer one."""
        path = self.run_dir / "summary.json"
        if not (self._idle_session() and status in ("completed", "stopped") and path.exists()):
            return None
        try:
            kept = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(kept, dict) and kept.get("status") == status and kept.get("steps_done") == steps:
            return kept
        return None

    def close(self) -> None:
        self.logger.close()
        self.evaluator.close()
        self.runner.close()
        self._lock.release()


DIAGNOSTICS = ("losses/explained_variance",)
"""Logged beside the losses but trained on by nothing: NaN there (returns that do not vary) is no reason to stop."""


def check_finite(metrics: dict[str, Any], agent: Agent) -> None:
    """Stop on a NaN/inf loss: training past it only destroys the last good weights."""
    tensors = [value for key, value in metrics.items() if key.startswith("losses/") and key not in DIAGNOSTICS]
    if not tensors:
        return
    # One device for the stack (the losses' own; Python floats join them there), then one host sync.
    device = next((v.device for v in tensors if isinstance(v, torch.Tensor)), None)
    values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).reshape(()) for v in tensors])
    if not bool(torch.isfinite(values).all()):
        bad = [key for key, value in metrics.items() if key.startswith("losses/") and key not in DIAGNOSTICS
               and not math.isfinite(float(value))]
        raise NonFiniteError(f"non-finite loss ({', '.join(bad)}); the run stopped")


def check_parameters_finite(agent: Agent) -> None:
    for name, module in agent.modules().items():
        for key, param in module.state_dict().items():
            if param.is_floating_point() and not bool(torch.isfinite(param).all()):
                raise NonFiniteError(f"parameter {name}.{key} is NaN or infinite; the run stopped")
