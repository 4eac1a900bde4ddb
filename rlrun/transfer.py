"""Transfer learning as a config group: load another run's weights, freeze layers, per-layer learning rates.

What to transfer: the bodies (the lower layers, generic feature detectors) and, when the action space is the
same, the heads. How: freeze them (`kind=freeze`, `feature_extract`), fine-tune them (`finetune`, with an
optional `lr_scale`), or in general give each layer its own learning rate (`layerwise`: `lr_scales` or a
geometric `layer_decay`, as in ULMFiT's discriminative fine-tuning, Howard & Ruder 2018).

Names are those of a checkpoint's `"model"`: `<network>.<path>.body.<2k>.weight` for hidden layer k of a body
(rlrun/networks.py::MLP) and `<network>.<path>.head.weight`. A target network is fed by one source network
(`transfer.map`, else the default: the same name, then a network of the same role, see `DEFAULT_SOURCES`);
inside it the names after the network prefix must match (a DQN's `q.body.0.weight` feeds a PPO's
`actor.body.0.weight` and `critic.body.0.weight`).

Frozen means `requires_grad=False` *and* out of every optimizer's param groups, so neither gradients nor
weight decay nor Adam's moments touch it (agents skip parameters without a gradient when they clip, and the
off-policy actor's backward asks only for trainable ones). Agents build their own optimizers; `regroup_optimizer` rebuilds
each one's param groups in place, one group per LR multiplier, with `group["lr_scale"]` that the agents' LR
annealing respects (`group["lr"] = lr * group.get("lr_scale", 1.0)`). The structure is a pure function of
the config, the agent and the step, so a resumed run rebuilds it identically before loading the optimizer
state (which restores each group's `lr` and `lr_scale`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from rlrun.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, stored_obs_norm
from rlrun.config import TransferConfig, TransferKind
from rlrun.onpolicy import observation_normalizer

REPORT_FILE = "transfer_report.json"

# Target network → source networks tried in order (the first the source checkpoint has wins).
DEFAULT_SOURCES: dict[str, tuple[str, ...]] = {
    "actor": ("actor", "q", "critic"),
    "critic": ("critic", "q", "actor"),
    "q": ("q", "actor", "critic"),
}
TARGET_SUFFIX = "_target"  # q_target, actor_target, critic_target: fed like their online network

_BODY = re.compile(r"^(?P<body>(?:.*\.)?body)\.(?P<index>\d+)\.[^.]+$")
_HEAD = re.compile(r"^(?:.*\.)?head\.[^.]+$")


class TransferError(ValueError):
    """The transfer config cannot be applied (a source that does not fit, a bad option): the CLI prints it."""


@dataclass
class LayerInfo:
    """Where one parameter sits: network, body (with layer k of L), or head, or neither."""

    network: str
    body: str | None = None
    layer: int | None = None
    depth: int | None = None
    head: bool = False


def resolve_source(cfg: TransferConfig) -> Path:
    if not cfg.source:
        raise TransferError(f"transfer={cfg.kind.value} needs transfer.source=<run dir or checkpoint file>")
    path = Path(cfg.source).expanduser()
    if not path.is_dir():
        return path
    wanted = path / "checkpoints" / f"{cfg.checkpoint.value}.pt"
    if wanted.exists():
        return wanted
    others = sorted(p.name for p in (path / "checkpoints").glob("*.pt")) if (path / "checkpoints").is_dir() else []
    if others:
        other = Path(others[0]).stem
        raise TransferError(f"transfer.source={cfg.source} has no checkpoints/{wanted.name} (it has "
                            f"{', '.join(others)}); transfer.checkpoint={other} starts from its {other}.pt")
    runs = sorted(p.parent.parent for p in path.glob("*/**/checkpoints/*.pt"))
    if runs:
        raise TransferError(f"transfer.source={cfg.source} is not a run directory (it has no checkpoints/) but holds "
                            f"runs, a sweep's for instance: point it at one of them, e.g. "
                            f"transfer.source={runs[0]}")
    return wanted  # load_checkpoint says it does not exist


def load_source(cfg: TransferConfig) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The source checkpoint's model tensors, read with weights_only=True (rlrun.checkpoint)."""
    path = resolve_source(cfg)
    try:
        payload = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"transfer.source={cfg.source}: {exc}") from None
    model = payload["model"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(f"transfer.source={cfg.source}: {path}'s \"model\" is not a dict of tensors")
    return path, model, {"algo": payload.get("algo"), "env_id": payload.get("env_id"), "step": payload.get("step"),
                         "agent_state": payload.get("agent_state"), "obs_norm": payload.get("obs_norm")}


def network_of(name: str) -> str:
    return name.split(".", 1)[0]


def layer_info(agent_modules: dict[str, torch.nn.Module]) -> dict[str, LayerInfo]:
    """Every parameter and buffer name → its LayerInfo (layer k counts the body's Linear layers, bottom 0)."""
    names = [f"{net}.{key}" for net, module in agent_modules.items() for key in module.state_dict()]
    bodies: dict[str, set[int]] = {}
    for name in names:
        match = _BODY.match(name)
        if match:
            bodies.setdefault(match["body"], set()).add(int(match["index"]))
    ranks = {body: {index: rank for rank, index in enumerate(sorted(indices))} for body, indices in bodies.items()}
    info = {}
    for name in names:
        match = _BODY.match(name)
        if match:
            rank = ranks[match["body"]]
            info[name] = LayerInfo(network_of(name), match["body"], rank[int(match["index"])], len(rank))
        else:
            info[name] = LayerInfo(network_of(name), head=bool(_HEAD.match(name)))
    return info


def network_mapping(target_networks: list[str], source_networks: set[str],
                    explicit: dict[str, str] | None) -> dict[str, str | None]:
    """Target network → the source network feeding it (None: nothing feeds it)."""
    explicit = dict(explicit or {})
    unknown = [t for t in explicit if t not in target_networks]
    if unknown:
        raise TransferError(f"transfer.map names target networks {unknown} this algorithm does not have "
                            f"(it has {target_networks})")
    bad = {t: s for t, s in explicit.items() if s not in source_networks}
    if bad:
        raise TransferError(f"transfer.map={bad}: the source has no such network (it has {sorted(source_networks)})")
    mapping: dict[str, str | None] = {}
    for target in target_networks:
        if target in explicit:
            mapping[target] = explicit[target]
            continue
        online = target[:-len(TARGET_SUFFIX)] if target.endswith(TARGET_SUFFIX) else None
        if online is not None and online in explicit:
            mapping[target] = explicit[online]
            continue
        candidates = (target,) + DEFAULT_SOURCES.get(online or target, ()) + ((online,) if online else ())
        mapping[target] = next((c for c in candidates if c in source_networks), None)
    return mapping


def find_optimizers(agent: Any) -> dict[str, torch.optim.Optimizer]:
    """The agent's optimizers, by attribute name (agents build their own; rlrun finds them here)."""
    return {name: value for name, value in vars(agent).items() if isinstance(value, torch.optim.Optimizer)}


def regroup_optimizer(optimizer: torch.optim.Optimizer, scales: dict[torch.nn.Parameter, float | None],
                      groups: list[dict[str, Any]] | None = None) -> None:
    """Rebuild `optimizer.param_groups` in place: one group per (original group, LR multiplier).

    `scales[p]` is p's LR multiplier, None = frozen (left out of the optimizer); parameters not in `scales`
    keep multiplier 1. Each group stores `lr_scale` and `lr = base lr × lr_scale`; its other hyperparameters
    are the original group's. `groups` (default: the current ones) are the groups to start from: pass the
    optimizer's original groups to bring frozen parameters back. Call it before the optimizer has state (a fresh agent) or before
    `load_state_dict` of a state saved from the same structure.
    """
    old_groups = optimizer.param_groups if groups is None else groups
    optimizer.param_groups = []
    optimizer.state.clear()
    for group in old_groups:
        base_lr = group["lr"] / group.get("lr_scale", 1.0)
        by_scale: dict[float, list[torch.nn.Parameter]] = {}
        for param in group["params"]:
            scale = scales.get(param, 1.0)
            if scale is not None:
                by_scale.setdefault(float(scale), []).append(param)
        for scale, params in by_scale.items():
            hyper = {key: value for key, value in group.items() if key not in ("params", "lr", "lr_scale")}
            optimizer.add_param_group({**hyper, "params": params, "lr": base_lr * scale, "lr_scale": scale})


@dataclass
class TransferReport:
    source: str
    source_algo: str | None
    source_env_id: str | None
    source_step: int | None
    kind: str
    mapping: dict[str, str | None]
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    shape_mismatch: list[dict[str, Any]] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    unused_source: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    unfreeze_at_step: int | None = None
    obs_norm_from: str | None = None
    obs_norm_skipped: str | None = None
    """Why the source's observation-normalisation statistics were not loaded, where it had some."""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def text(self) -> str:
        lines = [f"transfer={self.kind} from {self.source} ({self.source_algo} on {self.source_env_id}, "
                 f"step {self.source_step}); networks: "
                 + ", ".join(f"{t}←{s}" for t, s in self.mapping.items()),
                 f"  loaded {len(self.loaded)}, missing {len(self.missing)}, shape mismatch "
                 f"{len(self.shape_mismatch)}, re-initialised {len(self.reinitialised)}, frozen {len(self.frozen)}"
                 + (f"; observation normalisation from {self.obs_norm_from}" if self.obs_norm_from else "")
                 + (f"; observation normalisation NOT loaded: {self.obs_norm_skipped}" if self.obs_norm_skipped
                    else "")]
        for label, names in (("missing", self.missing), ("re-initialised", self.reinitialised),
                             ("frozen", self.frozen)):
            if names:
                lines.append(f"  {label}: {', '.join(names)}")
        for item in self.shape_mismatch:
            lines.append(f"  shape mismatch (kept fresh): {item['name']} {item['target_shape']} vs source "
                         f"{item['source']} {item['source_shape']}")
        for group in self.param_groups:
            lines.append(f"  {group['optimizer']} group {group['group']}: lr {group['lr']:.3g} "
                         f"(×{group['lr_scale']:g}) {len(group['params'])} tensors")
        return "\n".join(lines)


class Transfer:
    """Applies a TransferConfig to a freshly built agent (`load`) and keeps its structure (`apply`, `on_step`)."""

    def __init__(self, cfg: TransferConfig, agent: Any):
        self.cfg = cfg
        self.agent = agent
        self.modules: dict[str, torch.nn.Module] = agent.modules()
        self.info = layer_info(self.modules)
        self.optimizers = find_optimizers(agent)
        self.params: dict[str, torch.nn.Parameter] = {
            f"{net}.{key}": param for net, module in self.modules.items() for key, param in module.named_parameters()}
        self.original_groups = {name: [dict(group, params=list(group["params"])) for group in opt.param_groups]
                                for name, opt in self.optimizers.items()}
        self.optimized = {id(p) for opt in self.optimizers.values() for g in opt.param_groups for p in g["params"]}
        self.unfrozen = False
        self._check_options()

    def _check_options(self) -> None:
        cfg = self.cfg
        if cfg.kind == TransferKind.none:
            raise TransferError("transfer=none does not load anything")
        if cfg.map is not None and not (isinstance(cfg.map, dict)
                                        and all(isinstance(v, str) for v in cfg.map.values())):
            raise TransferError(f"transfer.map must map target networks to source networks, e.g. "
                                f"transfer.map={{actor:q,critic:q}}; got {cfg.map!r}")
        if not (math.isfinite(cfg.lr_scale) and cfg.lr_scale > 0):
            raise TransferError(f"transfer.lr_scale must be a positive number, got {cfg.lr_scale}")
        if cfg.freeze_layers < 0:
            raise TransferError(f"transfer.freeze_layers must be >= 0, got {cfg.freeze_layers}")
        if cfg.kind == TransferKind.freeze and cfg.freeze_layers == 0:
            raise TransferError("transfer=freeze needs transfer.freeze_layers >= 1")
        if cfg.kind == TransferKind.layerwise and cfg.lr_scales is None and cfg.layer_decay is None:
            raise TransferError("transfer=layerwise needs transfer.lr_scales=[…] or transfer.layer_decay")
        if cfg.kind != TransferKind.layerwise and (cfg.lr_scales is not None or cfg.layer_decay is not None):
            raise TransferError("transfer.lr_scales / transfer.layer_decay only apply with transfer=layerwise")
        if cfg.lr_scales is not None and not all(math.isfinite(s) and s >= 0 for s in cfg.lr_scales):
            raise TransferError(f"transfer.lr_scales must be >= 0 (0 freezes the layer), got {list(cfg.lr_scales)}")
        if cfg.layer_decay is not None and not 0 < cfg.layer_decay <= 1:
            raise TransferError(f"transfer.layer_decay must be in (0, 1], got {cfg.layer_decay}")
        if cfg.unfreeze_at_step is not None and cfg.unfreeze_at_step < 0:
            raise TransferError(f"transfer.unfreeze_at_step must be >= 0, got {cfg.unfreeze_at_step}")

    # -- which parameters are fed, frozen, scaled -------------------------------------------------------
    def mapping(self, source_networks: set[str]) -> dict[str, str | None]:
        return network_mapping(list(self.modules), source_networks,
                               dict(self.cfg.map) if self.cfg.map else None)

    def _fed_networks(self) -> set[str]:
        return {t for t, s in (self.network_map or {}).items() if s is not None}

    def layer_scale(self, name: str) -> float | None:
        """The multiplier from the layer position (None = frozen), before lr_scale."""
        info = self.info[name]
        cfg = self.cfg
        if info.network not in self._fed_networks():
            return 1.0
        if info.body is not None:
            if cfg.kind == TransferKind.feature_extract or info.layer < cfg.freeze_layers:
                return None
            if cfg.kind == TransferKind.layerwise:
                if cfg.lr_scales is not None:
                    scales = list(cfg.lr_scales)
                    if len(scales) not in (info.depth, info.depth + 1):
                        raise TransferError(f"transfer.lr_scales has {len(scales)} values; {info.body} has "
                                            f"{info.depth} layers (give {info.depth}, or {info.depth + 1} with "
                                            f"the head's last)")
                    return None if scales[info.layer] == 0 else float(scales[info.layer])
                return float(cfg.layer_decay ** (info.depth - info.layer))
            return 1.0
        if info.head and cfg.kind == TransferKind.layerwise and cfg.lr_scales is not None:
            depths = {i.depth for i in self.info.values() if i.network == info.network and i.depth is not None}
            if any(len(cfg.lr_scales) == d + 1 for d in depths):
                return None if cfg.lr_scales[-1] == 0 else float(cfg.lr_scales[-1])
        return 1.0

    def scales(self, fresh: bool = False) -> dict[str, float | None]:
        """Trainable parameter name → LR multiplier (None = frozen). `fresh`: a new transfer run, whose options are
        checked against what this algorithm can honour (a run started before a check resumes as it was)."""
        out = {}
        for name, param in self.params.items():
            # only what came from the source is frozen or layer-scaled: a tensor kept freshly initialised
            # (shape mismatch, reinit_head, missing in the source) trains like any new layer
            scale = self.layer_scale(name) if name in self.loaded_names else 1.0
            if scale is None and self.unfrozen:
                scale = 1.0
            if scale is not None and name in self.loaded_names:
                scale *= self.cfg.lr_scale
            if id(param) not in self.optimized:
                # target networks follow their online network; anything else trained without a torch
                # optimizer (TRPO's natural-gradient actor) cannot be frozen or given its own LR here
                if fresh and scale != 1.0 and not self.info[name].network.endswith(TARGET_SUFFIX):
                    raise TransferError(f"{name} is not trained by a torch optimizer in this algorithm, so "
                                        f"transfer={self.cfg.kind.value} cannot freeze it or scale its LR "
                                        f"(transfer=finetune with transfer.lr_scale=1 still loads it)")
                continue
            out[name] = scale
        return out

    # -- applying --------------------------------------------------------------------------------------
    def load(self, progress: Callable[[str], None] | None = None) -> TransferReport:
        """Copy the source's weights into the agent, then `apply(0)`; `save_report` writes the report."""
        path, source, meta = load_source(self.cfg)
        self.network_map = self.mapping({network_of(k) for k in source})
        fed = self._fed_networks()
        if not fed:
            raise TransferError(f"transfer.source {path} has networks {sorted({network_of(k) for k in source})}; "
                                f"none feeds this algorithm's {list(self.modules)} (set transfer.map)")
        # Checked for a fresh transfer only: a run started before this check resumes with the settings it has.
        for info in self.info.values():
            if info.body is not None and info.network in fed and self.cfg.freeze_layers > info.depth:
                raise TransferError(f"transfer.freeze_layers={self.cfg.freeze_layers}, but {info.body} has "
                                    f"{info.depth} hidden layers: give at most {info.depth} (all of them; "
                                    f"transfer=feature_extract also freezes the body)")
        report = TransferReport(str(path), meta["algo"], meta["env_id"], meta["step"], self.cfg.kind.value,
                                self.network_map, unfreeze_at_step=self.cfg.unfreeze_at_step)
        used: set[str] = set()
        errors = []
        with torch.no_grad():
            for net, module in self.modules.items():
                src_net = self.network_map[net]
                state = module.state_dict(keep_vars=True)
                for key, tensor in state.items():
                    name = f"{net}.{key}"
                    if src_net is None:
                        report.missing.append(name)
                        continue
                    if self.cfg.reinit_head and self.info[name].head:
                        report.reinitialised.append(name)
                        continue
                    src_name = f"{src_net}.{key}"
                    if src_name not in source:
                        report.missing.append(name)
                        continue
                    used.add(src_name)
                    if tuple(source[src_name].shape) != tuple(tensor.shape):
                        report.shape_mismatch.append({"name": name, "target_shape": list(tensor.shape),
                                                      "source": src_name,
                                                      "source_shape": list(source[src_name].shape)})
                        if self.cfg.reinit_mismatched or self.info[name].head and self.cfg.reinit_head:
                            report.reinitialised.append(name)
                        else:
                            errors.append(f"{name} {tuple(tensor.shape)} ← {src_name} "
                                          f"{tuple(source[src_name].shape)}")
                        continue
                    tensor.copy_(source[src_name].to(tensor.device, tensor.dtype))
                    report.loaded.append(name)
        if errors:
            head_only = all(self.info[m["name"]].head for m in report.shape_mismatch)
            hint = ("transfer.reinit_head=true keeps the heads freshly initialised (a new action space)"
                    if head_only else "transfer.reinit_mismatched=true keeps those tensors freshly initialised; "
                    "network.hidden must match the source's to transfer the bodies")
            raise TransferError(f"transfer.source {path} does not fit this network: shape mismatch in "
                                f"{'; '.join(errors)}. {hint}")
        if not report.loaded:
            raise TransferError(f"nothing in {path} fits this network (mapping {self.network_map})")
        report.unused_source = sorted(set(source) - used)
        obs_norm = observation_normalizer(self.agent)
        if self.cfg.obs_norm:
            try:
                stats, origin = stored_obs_norm(path, meta)
            except CheckpointError:
                if obs_norm is not None:
                    raise
                stats = None  # this run would not use them: a damaged last.pt beside the source is not its concern
            if stats is not None and obs_norm is None:  # its weights were trained on normalised inputs
                report.obs_norm_skipped = (f"{origin} holds the source's statistics, but this run does not normalise "
                                           f"its observations: the loaded weights see raw ones (an on-policy "
                                           f"algo.normalize_obs=true takes them)")
            elif stats is not None and tuple(stats["mean"].shape) == tuple(obs_norm.rms.mean.shape):
                obs_norm.load_state(stats)
                report.obs_norm_from = origin
            elif stats is not None:  # another observation space: this run starts its own statistics
                report.obs_norm_skipped = (f"{origin} holds statistics of shape {tuple(stats['mean'].shape)}, this "
                                           f"env observes shape {tuple(obs_norm.rms.mean.shape)}")
        self.loaded_names = set(report.loaded)
        self.apply(0, fresh=True)
        report.frozen = self.frozen_names()
        report.param_groups = self.param_groups()
        self.report = report
        if progress is not None:
            progress(report.text())
        return report

    def resume(self, checkpoint_run_dir: Path, step: int) -> None:
        """A resumed run: the same frozen set and param groups as the run that wrote the checkpoint at `step`,
        rebuilt from its transfer_report.json (the source itself is not needed any more)."""
        report = read_report(checkpoint_run_dir)
        path = Path(checkpoint_run_dir) / REPORT_FILE
        if report is None:
            raise CheckpointError(f"cannot resume a transfer={self.cfg.kind.value} run from {checkpoint_run_dir}: "
                                  f"its {REPORT_FILE} is missing (it says which tensors came from the source)")
        if set(report["mapping"]) != set(self.modules) or not set(report["loaded"]) <= set(self.params):
            raise CheckpointError(f"{path} does not describe this {type(self.agent).__name__}'s networks "
                                  f"{sorted(self.modules)} (its mapping names {sorted(report['mapping'])}, and "
                                  f"{len(set(report['loaded']) - set(self.params))} of its loaded tensors are not "
                                  f"theirs): it is damaged, or it is another algorithm's")
        self.network_map = report["mapping"]
        self.loaded_names = set(report["loaded"])
        self.apply(step)
        self.report = TransferReport(**report)

    def save_report(self, run_dir: Path) -> None:
        """Write the report into `run_dir`, once the run has been set up: a run refused before then leaves none."""
        save_report(self.report, run_dir)

    def apply(self, step: int, fresh: bool = False) -> None:
        self.unfrozen = self.cfg.unfreeze_at_step is not None and step >= self.cfg.unfreeze_at_step
        scales = self.scales(fresh)
        if fresh and scales and all(scale is None for scale in scales.values()):
            # PPO's and A2C's losses would then need no gradient (a torch error at the first update); DQN's
            # optimizer would be left empty and train nothing. Checked for a fresh transfer only, like the others.
            raise TransferError(f"transfer={self.cfg.kind.value} freezes every layer that this algorithm trains "
                                f"({len(scales)} tensors), so the run would learn nothing"
                                f"{' until transfer.unfreeze_at_step' if self.cfg.unfreeze_at_step else ''}: "
                                f"leave at least one layer trainable (a non-zero transfer.lr_scales entry, or "
                                f"fewer transfer.freeze_layers)")
        for name, scale in scales.items():
            self.params[name].requires_grad_(scale is not None)
        by_param = {self.params[name]: scale for name, scale in scales.items()}
        for opt_name, optimizer in self.optimizers.items():
            regroup_optimizer(optimizer, by_param, self.original_groups[opt_name])

    def on_step(self, step: int, progress: Callable[[str], None] | None = None) -> None:
        """Called after every iteration: unfreezes at transfer.unfreeze_at_step (optimizer moments kept)."""
        if self.unfrozen or self.cfg.unfreeze_at_step is None or step < self.cfg.unfreeze_at_step:
            return
        frozen = self.frozen_names()
        saved = {id(p): state for opt in self.optimizers.values() for p, state in opt.state.items()}
        self.apply(step)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if id(param) in saved:
                        optimizer.state[param] = saved[id(param)]
        if progress is not None and frozen:
            progress(f"step {step:,}: transfer.unfreeze_at_step={self.cfg.unfreeze_at_step}: "
                     f"{len(frozen)} tensors trainable again")

    def frozen_names(self) -> list[str]:
        return [name for name, param in self.params.items() if id(param) in self.optimized
                and not param.requires_grad]

    def param_groups(self) -> list[dict[str, Any]]:
        names = {id(p): n for n, p in self.params.items()}
        return [{"optimizer": opt_name, "group": i, "lr": group["lr"], "lr_scale": group.get("lr_scale", 1.0),
                 "params": [names.get(id(p), "?") for p in group["params"]]}
                for opt_name, opt in self.optimizers.items() for i, group in enumerate(opt.param_groups)]


def save_report(report: TransferReport, run_dir: Path) -> None:
    atomic_write_text(Path(run_dir) / REPORT_FILE, json.dumps(report.to_dict(), indent=2) + "\n")


def read_report(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's transfer report (None where it has none), checked: a resume rebuilds the frozen layers and
    learning-rate groups from it, and it is a file in someone's run directory, data that may be damaged."""
    path = Path(run_dir) / REPORT_FILE
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}); it is damaged") from None
    if not (isinstance(report, dict) and _report_fields_valid(report)):
        raise CheckpointError(f"{path} is damaged: it is not the transfer report rlrun writes (source, kind, a "
                              f"mapping of network names, the list of loaded tensors, …)")
    return report


def _report_fields_valid(report: dict[str, Any]) -> bool:
    """Every field TransferReport requires is there, no unknown one, and those a resume reads have their types."""
    known = {f.name for f in fields(TransferReport)}
    required = {f.name for f in fields(TransferReport) if f.default is MISSING and f.default_factory is MISSING}
    if not required <= set(report) <= known:
        return False
    mapping, loaded = report["mapping"], report.get("loaded")  # loaded: a resume needs it, though it has a default
    return (isinstance(report["source"], str) and isinstance(report["kind"], str)
            and all(report[key] is None or isinstance(report[key], str) for key in ("source_algo", "source_env_id"))
            and (report["source_step"] is None or isinstance(report["source_step"], int))
            and isinstance(mapping, dict)
            and all(isinstance(t, str) and (s is None or isinstance(s, str)) for t, s in mapping.items())
            and isinstance(loaded, list) and all(isinstance(name, str) for name in loaded))
