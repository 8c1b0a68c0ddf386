"""Typed training configuration: presets, YAML loading with unknown-key checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from mtad.edge_runtime.atomic import atomic_write
from mtad.edge_runtime.constants import TASKS
from mtad.edge_runtime.errors import ConfigError
from mtad.edge_runtime.scoring import COMPONENTS, COVARIANCES, DEFAULT_COMPONENTS, SCORINGS, task_components

from .model import ModelConfig

LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and scoring settings. Optimisation defaults are the paper's (batch 64, Adam,
    100 epochs, lr 1e-3); scoring defaults are mtad's (held-out, per-id, calibrated fusion)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    mixup_prob: float = 0.5
    windows_per_clip: int = 1  # random windows drawn from each clip per epoch
    task: str = "multitask"
    seed: int = 0
    device: str = "auto"
    weight_decay: float = 0.0  # decoupled (AdamW); 0 = the paper's plain Adam
    lr_schedule: str = "constant"  # or "cosine": decay to 0 over the epochs
    stats_holdout: float = 0.25  # fraction of each id's training normals kept out of training for scoring stats
    false_alarm_rate: float = 0.1  # target for the per-machine decision thresholds
    scoring: str = "fusion"  # or "paper": the paper's 2-D Mahalanobis of (recon, class) per type
    components: tuple[str, ...] = DEFAULT_COMPONENTS  # fusion components (scoring.COMPONENTS)
    pseudo_anomalies: float = 0.0  # fraction of each batch added again, perturbed, as extra classes (train/pseudo_anomalies.py)
    early_stopping: int = 0  # patience in epochs on the held-out normals' loss (0 = off: train all epochs)
    covariance: str = "factor"  # shared covariance of the distance components: factor analysis, or "ledoit-wolf" (train/stats.py)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.windows_per_clip < 1:
            raise ConfigError("epochs, batch_size, windows_per_clip must be >= 1 and lr > 0")
        if not 0 <= self.mixup_prob <= 1 or not 0 <= self.stats_holdout < 1 or not 0 < self.false_alarm_rate < 1:
            raise ConfigError("mixup_prob must be in [0, 1], stats_holdout in [0, 1), false_alarm_rate in (0, 1)")
        if self.early_stopping < 0:
            raise ConfigError(f"early_stopping is a patience in epochs (0 = off), got {self.early_stopping}")
        if not 0 <= self.pseudo_anomalies <= 1:
            raise ConfigError(f"pseudo_anomalies must be in [0, 1], got {self.pseudo_anomalies}")
        if self.weight_decay < 0 or self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"weight_decay must be >= 0 and lr_schedule one of {', '.join(LR_SCHEDULES)}")
        if self.scoring not in SCORINGS:
            raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        if self.covariance not in COVARIANCES:
            raise ConfigError(f"covariance must be one of {', '.join(COVARIANCES)}, got {self.covariance!r}")
        unknown = [c for c in self.components if c not in COMPONENTS]
        if unknown or not self.components:
            raise ConfigError(f"components must be a non-empty subset of {', '.join(COMPONENTS)}, got {', '.join(self.components) or 'none'}")

    @property
    def fusion_components(self) -> tuple[str, ...]:
        """The configured components this task's model can provide (e.g. no class score for recon)."""
        return tuple(c for c in self.components if c in task_components(self.task))


@dataclass(frozen=True)
class RunConfig:
    preset: str
    model: ModelConfig
    train: TrainConfig

    def to_dict(self) -> dict:
        train = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.train).items()}
        return {"preset": self.preset, "model": self.model.to_dict(), "train": train}


PRESETS: dict[str, tuple[dict, dict]] = {
    # The paper's sizes: ResNet-18 at full width over whole 10 s clips (313 frames).
    "paper": ({}, {}),
    # CPU demo: narrow ResNet, 2 s windows, a few epochs with several windows per clip.
    "small": (
        dict(residual_channels=32, skip_channels=64, dilations=(1, 2, 4, 8, 1, 2, 4, 8), resnet_width=16, window=64),
        dict(epochs=12, windows_per_clip=4, weight_decay=1e-4, lr_schedule="cosine", stats_holdout=0.5),
    ),
    # CI: seconds per epoch. Scores with the learned fusion, so that the tests of export, INT8,
    # TensorRT and parity run the network (the other presets' default score needs none).
    "tiny": (
        dict(residual_channels=16, skip_channels=32, dilations=(1, 2, 4), resnet_width=8, window=32),
        dict(epochs=3, windows_per_clip=1, components=("recon", "acoustic")),
    ),
}


def _check_keys(section: str, given: dict, cls) -> None:
    known = {f.name for f in fields(cls)} - {"n_classes", "n_mels"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in '{section}': {', '.join(unknown)} (known: {', '.join(sorted(known))})")


def _coerce(cls, values: dict) -> dict:
    out = {}
    types = {f.name: f.type for f in fields(cls)}
    for k, v in values.items():
        if "tuple" in str(types[k]):
            v = tuple(x.strip() for x in v.split(",") if x.strip()) if isinstance(v, str) else tuple(v)
        out[k] = v
    return out


def load_config(preset: str = "small", path: str | Path | None = None, **train_overrides) -> RunConfig:
    """Preset defaults, then the YAML file (sections ``model`` and ``train``), then CLI overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    model_kw, train_kw = (dict(d) for d in PRESETS[preset])
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping with 'model' and/or 'train' sections")
        extra = sorted(set(data) - {"model", "train", "preset"})
        if extra:
            raise ConfigError(f"{path}: unknown section(s) {', '.join(extra)} (known: model, train)")
        _check_keys("model", data.get("model") or {}, ModelConfig)
        _check_keys("train", data.get("train") or {}, TrainConfig)
        model_kw.update(_coerce(ModelConfig, data.get("model") or {}))
        train_kw.update(_coerce(TrainConfig, data.get("train") or {}))
    train_kw.update(_coerce(TrainConfig, {k: v for k, v in train_overrides.items() if v is not None}))
    try:
        model = ModelConfig(**model_kw)
        train = TrainConfig(**train_kw)
    except TypeError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    if model.window <= model.warmup + 1:
        raise ConfigError(
            f"window ({model.window} frames) must exceed the receptive field ({model.receptive_field} frames)"
        )
    return RunConfig(preset, model, train)


def train_config_from_dict(d: dict) -> TrainConfig:
    """The TrainConfig stored in a checkpoint (keys this version does not know are ignored)."""
    return TrainConfig(**_coerce(TrainConfig, {k: v for k, v in d.items() if k in TrainConfig.__dataclass_fields__}))


def with_classes(cfg: RunConfig, n_classes: int, n_mels: int) -> RunConfig:
    return replace(cfg, model=replace(cfg.model, n_classes=n_classes, n_mels=n_mels))


def save_config(cfg: RunConfig, path: Path) -> None:
    with atomic_write(path, "w") as f:
        f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

