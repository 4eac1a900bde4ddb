"""Typed schemas for every config group, registered in Hydra's ConfigStore.

Each YAML option in `conf/<group>/` starts from one of these schemas (`defaults: [<schema>]`), so a typo in a
key or a value of the wrong type fails when Hydra composes the config, not deep inside a run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# Functional form: `async` is a keyword, and OmegaConf matches an override against member *names*.
Vectorization = Enum("Vectorization", {"sync": "sync", "async": "async"}, type=str)


class Activation(str, Enum):
    relu = "relu"
    tanh = "tanh"
    elu = "elu"
    gelu = "gelu"
    silu = "silu"
    leaky_relu = "leaky_relu"


class Progress(str, Enum):
    auto = "auto"  # rich bar on a terminal, plain lines otherwise
    rich = "rich"
    plain = "plain"
    none = "none"


@dataclass
class EnvConfig:
    """A Gymnasium environment and how it is vectorised."""

    id: str = MISSING
    """Any registered Gymnasium id, e.g. LunarLander-v3."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments passed to gymnasium.make (e.g. gravity: -5)."""
    reward_threshold: float | None = None
    """Eval mean at which the env counts as solved (summary.json's solved_at_*)."""
    max_episode_steps: int | None = None
    """Override of the registered time limit; null keeps the registry's."""
    vectorization: Vectorization = Vectorization.sync
    """sync: all envs in this process; async: one subprocess per env (uses more cores)."""


@dataclass
class NetworkConfig:
    """MLP bodies; input and output sizes always come from the env's spaces."""

    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden layer widths of each body."""
    activation: Activation = Activation.relu
    """Non-linearity after each hidden layer."""


class TransferKind(str, Enum):
    none = "none"  # train from scratch
    finetune = "finetune"  # load all that fits, train everything (optionally at lr_scale × the LR)
    freeze = "freeze"  # load, freeze the bottom freeze_layers Linear layers of each body
    layerwise = "layerwise"  # load, one LR multiplier per layer (lr_scales or layer_decay)
    feature_extract = "feature_extract"  # load, freeze every body layer, train the (new) heads


class TransferCheckpoint(str, Enum):
    best = "best"
    last = "last"


@dataclass
class TransferConfig:
    """Starting from another run's weights (see conf/transfer/ and rlrun/transfer.py)."""

    kind: TransferKind = TransferKind.none
    source: str | None = None
    """A run directory (its checkpoints/<checkpoint>.pt) or a checkpoint file."""
    checkpoint: TransferCheckpoint = TransferCheckpoint.best
    """Which checkpoint of a source run directory: best.pt (best evaluation) or last.pt."""
    map: Any = None
    """Target network → source network, e.g. transfer.map={actor:q,critic:q}; networks left out use the default
    mapping (a dict; typed Any because OmegaConf cannot merge a command-line dict into an Optional[Dict] None)."""
    reinit_head: bool = False
    """Keep every head freshly initialised (a new action space, or a new task)."""
    reinit_mismatched: bool = False
    """Keep freshly initialised any tensor whose shape differs from the source's, instead of failing."""
    lr_scale: float = 1.0
    """LR multiplier for every parameter loaded from the source (new parameters keep the full LR)."""
    freeze_layers: int = 0
    """Bottom Linear layers of each loaded body that are frozen (kind=freeze; feature_extract freezes all)."""
    lr_scales: list[float] | None = None
    """kind=layerwise: LR multiplier per body layer, bottom first; one more value is the head's (else 1)."""
    layer_decay: float | None = None
    """kind=layerwise: body layer k of L gets layer_decay^(L-k) (head 1), unless lr_scales is given."""
    unfreeze_at_step: int | None = None
    """Make every frozen parameter trainable again (back into its optimizer) at this env step."""
    obs_norm: bool = True
    """Also start from the source's observation-normalisation statistics (on-policy algos with
    normalize_obs; from the checkpoint's agent state, or from last.pt beside a best.pt)."""


@dataclass
class EvalConfig:
    every_steps: int = 10_000
    """Evaluate every this many env steps; 0 = only the final evaluation."""
    episodes: int = 10
    """Episodes per evaluation (deterministic policy, separate env)."""
    video: bool = False
    """Record one episode of each periodic evaluation as videos/step<N>.mp4 in the run dir (needs moviepy)."""


@dataclass
class CheckpointConfig:
    every_steps: int = 0
    """Write checkpoints/last.pt every this many env steps; 0 = only at the end of the run."""


@dataclass
class LogConfig:
    progress: Progress = Progress.auto
    """Progress display: auto (rich on a terminal, plain lines otherwise), rich, plain, none."""
    every_steps: int = 1000
    """Write losses and rates to TensorBoard every this many env steps (0 = every iteration)."""
    plain_every_s: float = 10.0
    """Seconds between plain progress lines."""
    tensorboard: bool = True


class ObjectiveMetric(str, Enum):
    best_return = "best_return"  # maximise
    final_return = "final_return"  # maximise
    solved_at_step = "solved_at_step"  # minimise; an unsolved run counts as total_steps
    solved_at_wall_time_s = "solved_at_wall_time_s"  # minimise; an unsolved run counts as its wall time


@dataclass
class ObjectiveConfig:
    """What a job returns to a sweeper such as Optuna (issue 8; see rlrun/sweep.py)."""

    metric: ObjectiveMetric = ObjectiveMetric.best_return
    """The summary.json value returned; the sweeper's `direction` must match (maximise returns, minimise time)."""
    seeds: int = 1
    """Seeds trained in one job (seed, seed+1, …, each in <job dir>/seed<N>/); the job returns their mean."""


@dataclass
class Config:
    """The whole run. Top-level keys are part of the public contract (PRODUCT.md)."""

    algo: Any = MISSING
    env: EnvConfig = MISSING
    network: NetworkConfig = MISSING
    transfer: TransferConfig = MISSING
    seed: int = 0
    device: Device = Device.auto
    total_steps: int = 100_000
    """Environment steps (summed over vectorised envs)."""
    resume: str | None = None
    """null, a run directory, a checkpoint file, or `auto`."""
    stop_at_return: float | None = None
    """Stop once an evaluation mean reaches this; null = never."""
    torch_threads: int = 1
    """torch intra-op threads; small MLPs are fastest with 1; 0 = torch's default (the core count)."""
    flush_denormals: bool = True
    """Treat subnormal floats as zero on the CPU (x86 FTZ/DAZ, `torch.set_flush_denormal`). Adam's first moment of
    a dead ReLU unit decays into the subnormals and stays at the smallest one (0.9 × 1.4e-45 rounds back up), and
    arithmetic on subnormals is slow: 26-53 % of the DQN/TD3 first moments at zoo settings, Adam's step 3-4× slower."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore (called before composition)."""
    from rlrun.algos import ALGORITHMS

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="env", name="base_env", node=EnvConfig)
    cs.store(group="network", name="base_network", node=NetworkConfig)
    cs.store(group="transfer", name="base_transfer", node=TransferConfig)
    for name, spec in ALGORITHMS.items():
        cs.store(group="algo", name=f"base_{name}", node=spec.config_cls)


def unknown_keys(cfg: Any) -> dict[str, str | None]:
    """Dotted names in a composed config that no schema declares, each with the closest declared name (None when
    nothing is close): at the same level first, then the same name elsewhere, then a close spelling anywhere.

    Hydra refuses `algo.lerning_rate=…` (the schemas are structs), but its own hint, `+algo.lerning_rate=…`,
    adds the key, and the typed config would then drop it without a word: a setting the user believes in and
    the run ignores. Not counted: keys inside free-form mappings (`env.kwargs`, `transfer.map`), Hydra's own
    `hydra` node, and helper keys that an interpolation elsewhere reads (`+lr=0.01 algo.learning_rate=${lr}`).
    """
    from dataclasses import is_dataclass
    from difflib import get_close_matches

    from omegaconf import DictConfig, OmegaConf

    from rlrun.algos import ALGORITHMS

    schema = OmegaConf.structured(Config)
    algo_name = OmegaConf.select(cfg, "algo.name", default=None)
    if algo_name in ALGORITHMS:
        schema.algo = OmegaConf.structured(ALGORITHMS[algo_name].config_cls)

    declared_names: list[str] = []  # every name a schema declares, and the keys the free-form mappings hold
    unknown: dict[str, list[str]] = {}  # unknown name → the names declared beside it

    def walk(node: Any, declared: Any, prefix: str) -> None:
        if not isinstance(declared, DictConfig):
            return
        given = list(node.keys()) if isinstance(node, DictConfig) else []
        if not is_dataclass(OmegaConf.get_type(declared)):  # a free-form mapping: anything goes
            declared_names.extend(f"{prefix}{key}" for key in given)
            return
        siblings = [str(name) for name in declared.keys()]
        for name in siblings:
            declared_names.append(f"{prefix}{name}")
            child = declared._get_node(name)
            child_type = getattr(child._metadata, "ref_type", None)
            if OmegaConf.is_missing(declared, name) and is_dataclass(child_type):
                child = OmegaConf.structured(child_type)  # env, network, transfer: declared MISSING
            walk(node._get_node(name) if name in given else None, child, f"{prefix}{name}.")
        for key in given:
            if str(key) not in siblings and not (prefix == "" and key == "hydra"):
                unknown[f"{prefix}{key}"] = siblings

    walk(cfg, schema, "")
    interpolations = " ".join(_interpolation_texts(OmegaConf.to_container(cfg, resolve=False)))
    found: dict[str, str | None] = {}
    for name, siblings in unknown.items():
        if re.search(r"\$\{[^}]*(?<![\w.])" + re.escape(name) + r"(?![\w])", interpolations):
            continue  # a helper key: its value reaches a real setting
        prefix, _, leaf = name.rpartition(".")
        same_level = get_close_matches(leaf, siblings, n=1, cutoff=0.7)
        elsewhere = [known for known in declared_names if known.rpartition(".")[2] == leaf]
        anywhere = get_close_matches(name, declared_names, n=1, cutoff=0.75)
        found[name] = (f"{prefix}.{same_level[0]}" if prefix else same_level[0]) if same_level else \
            (elsewhere or anywhere or [None])[0]
    return found


def _interpolation_texts(value: Any) -> list[str]:
    """Every string under `value` (a plain container) that holds an interpolation."""
    if isinstance(value, dict):
        return [text for item in value.values() for text in _interpolation_texts(item)]
    if isinstance(value, list):
        return [text for item in value for text in _interpolation_texts(item)]
    return [value] if isinstance(value, str) and "${" in value else []


def compose(overrides: list[str] | None = None):
    """Compose the config as `rlrun overrides…` would (for tests and scripts; no run directory)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rlrun import CONF_DIR

    if not GlobalHydra.instance().is_initialized():
        register_configs()
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3")
    return hydra_compose(config_name="config", overrides=list(overrides or []))
