"""Typed training configuration: presets, YAML loading with unknown-key checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import yaml

from mtad.edge_runtime.errors import ConfigError

from .model import ModelConfig

TASKS = ("multitask", "recon", "classify")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults are the paper's (batch 64, Adam, 100 epochs, lr 1e-3)."""

    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    mixup_prob: float = 0.5
    windows_per_clip: int = 1  # random windows drawn from each clip per epoch
    task: str = "multitask"
    seed: int = 0
    device: str = "auto"
    stats_holdout: float = 0.0  # fraction of training normals kept out of training for scoring stats
    false_alarm_rate: float = 0.1  # target for the per-machine decision thresholds

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.windows_per_clip < 1:
            raise ConfigError("epochs, batch_size, windows_per_clip must be >= 1 and lr > 0")
        if not 0 <= self.mixup_prob <= 1 or not 0 <= self.stats_holdout < 1 or not 0 < self.false_alarm_rate < 1:
            raise ConfigError("mixup_prob must be in [0, 1], stats_holdout in [0, 1), false_alarm_rate in (0, 1)")


@dataclass(frozen=True)
class RunConfig:
    preset: str
    model: ModelConfig
    train: TrainConfig

    def to_dict(self) -> dict:
        return {"preset": self.preset, "model": self.model.to_dict(), "train": asdict(self.train)}


PRESETS: dict[str, tuple[dict, dict]] = {
    # The paper's sizes: ResNet-18 at full width over whole 10 s clips (313 frames).
    "paper": ({}, {}),
    # CPU demo: narrow ResNet, 2 s windows, a few epochs with several windows per clip.
    "small": (
        dict(residual_channels=32, skip_channels=64, dilations=(1, 2, 4, 8, 1, 2, 4, 8), resnet_width=16, window=64),
        dict(epochs=12, windows_per_clip=4),
    ),
    # CI: seconds per epoch.
    "tiny": (
        dict(residual_channels=16, skip_channels=32, dilations=(1, 2, 4), resnet_width=8, window=32),
        dict(epochs=3, windows_per_clip=1),
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
            v = tuple(v)
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
        train_kw.update(data.get("train") or {})
    train_kw.update({k: v for k, v in train_overrides.items() if v is not None})
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


def with_classes(cfg: RunConfig, n_classes: int, n_mels: int) -> RunConfig:
    return replace(cfg, model=replace(cfg.model, n_classes=n_classes, n_mels=n_mels))


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

