"""Checkpoints: plain tensors and Python primitives only, loadable with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch

from mtad.edge_runtime.atomic import atomic_path
from mtad.edge_runtime.errors import ConfigError
from mtad.edge_runtime.features import FeatureConfig, Normalization

from .config import RunConfig
from .model import ModelConfig, MultitaskModel

CHECKPOINT = "checkpoint.pt"
FORMAT = "mtad-checkpoint/1"


def save_checkpoint(path: Path, *, model, optimizer, cfg: RunConfig, feature_cfg: FeatureConfig, class_map, norms, epoch, history, extra: dict | None = None) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    payload = {
        "format": FORMAT,
        "epoch": epoch,
        "model_state": model.state_dict(),
        "optimizer_state": optimizer.state_dict() if optimizer is not None else {},
        "config": cfg.to_dict(),
        "feature_config": feature_cfg.to_dict(),
        "class_map": list(class_map),
        "normalization": {t: {"mean": torch.from_numpy(n.mean.copy()), "std": torch.from_numpy(n.std.copy())} for t, n in norms.items()},
        "history": history,
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise ConfigError(f"{path}: no checkpoint (train a run first with mtad-train)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable mtad checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ConfigError(f"{path}: not an mtad checkpoint of format {FORMAT}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> MultitaskModel:
    """Rebuild the model from the dimensions stored in the checkpoint itself."""
    model = MultitaskModel(ModelConfig.from_dict(ckpt["config"]["model"]))
    model.load_state_dict(ckpt["model_state"])
    return model.eval()


def norms_from_checkpoint(ckpt: dict) -> dict[str, Normalization]:
    return {t: Normalization(v["mean"].numpy(), v["std"].numpy()) for t, v in ckpt["normalization"].items()}
