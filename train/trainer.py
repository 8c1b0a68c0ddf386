"""Training loop for the multitask model and its single-task ablations."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mtad.edge_runtime.dataset import scan_dataset
from mtad.edge_runtime.errors import ConfigError, DatasetError
from mtad.edge_runtime.features import FeatureConfig, fit_normalization
from mtad.edge_runtime.scoring import ClipEvidence, ScoringStats
from mtad.edge_runtime.windows import clip_outputs

from .batches import WindowSampler
from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from .config import RunConfig, save_config, with_classes
from .feature_cache import FeatureStore, load_features
from .model import MultitaskModel
from .reference import TorchRunner
from .stats import MIN_CALIBRATION_CLIPS, fit_scoring_stats

STATS = "stats.npz"
SPLIT = "stats_split.json"  # which training normals were held out for the scoring statistics
LOG = "train_log.csv"
LOSS_PNG = "loss_curve.png"


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    stats: ScoringStats
    n_train_clips: int
    n_stats_clips: int
    skipped: dict[str, str]
    seconds: float


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but torch sees no CUDA GPU (use --device auto or cpu)")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


def split_holdout(store: FeatureStore, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Per machine, a seeded ``fraction`` of training clips (at least MIN_CALIBRATION_CLIPS) kept
    out of training for the scoring statistics. ``fraction`` 0 returns the training set twice
    (an in-sample fit, which the callers warn about)."""
    if fraction <= 0:
        idx = list(range(len(store)))
        return idx, idx
    rng = np.random.default_rng(seed)
    train, held = [], []
    for machine in sorted({c.machine for c in store.clips}):
        idx = [i for i, c in enumerate(store.clips) if c.machine == machine]
        n_held = max(MIN_CALIBRATION_CLIPS, int(round(fraction * len(idx))))
        if n_held >= len(idx):
            raise DatasetError(
                f"{machine}: {len(idx)} training clips are too few to hold out {n_held} for scoring statistics "
                f"and train on the rest (need >= {n_held + 1}); add clips, or pass --stats-holdout 0 to fit in-sample"
            )
        perm = rng.permutation(idx)
        held += sorted(perm[:n_held].tolist())
        train += sorted(perm[n_held:].tolist())
    return sorted(train), sorted(held)


def learning_rate(tcfg, epoch: int) -> float:
    """The epoch's learning rate: constant, or cosine decay from ``lr`` towards 0."""
    if tcfg.lr_schedule == "cosine":
        return tcfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / tcfg.epochs))
    return tcfg.lr


def losses(model: MultitaskModel, x: torch.Tensor, target: torch.Tensor, task: str, warmup: int):
    """(total, recon, class) losses; next-frame MSE skips each window's warm-up frames."""
    zero = x.new_zeros(())
    if task == "recon":
        pred, logits = model.reconstruct(x), None
    else:
        pred, logits, embedding = model(x)
        head = model.classifier.fc
        if hasattr(head, "margin_logits"):  # ArcFace: the margin applies in training only
            logits = head.margin_logits(embedding, target)
    recon = F.mse_loss(pred[:, :, warmup:-1].float(), x[:, :, warmup + 1 :]) if task != "classify" else zero
    cls = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean() if task != "recon" else zero
    return recon + cls, recon, cls


def _write_log(run_dir: Path, history: list[dict]) -> None:
    tmp = run_dir / (LOG + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)
    os.replace(tmp, run_dir / LOG)


def plot_losses(run_dir: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("loss", "total"), ("recon_loss", "next-frame MSE"), ("class_loss", "id cross-entropy")):
        if any(h[key] for h in history):
            ax.plot(ep, [h[key] for h in history], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = run_dir / (LOSS_PNG + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, run_dir / LOSS_PNG)


def compute_outputs(runner, store: FeatureStore, indices: list[int], norms, model_cfg, progress=False, desc="scoring") -> list[tuple[str, ClipEvidence]]:
    """``(machine, evidence)`` for each clip, through the shared windowing code."""
    out = []
    for i in tqdm(indices, desc=desc, unit="clip", disable=None if progress else True):
        c = store.clips[i]
        logmel = np.asarray(store.get(i))
        residual, logits, embedding = clip_outputs(norms[c.machine_type].apply(logmel), runner.infer, model_cfg.window, model_cfg.warmup)
        out.append((c.machine, ClipEvidence(residual, logits, logmel, embedding)))
    return out


def stats_inputs(runner, store: FeatureStore, train_idx: list[int], stats_idx: list[int], norms, model_cfg, progress=False):
    """What the scoring statistics are fitted on: model outputs of the held-out normals, and the
    raw log-mel of the clips the model trained on (for the model-free spectral component)."""
    held = compute_outputs(runner, store, stats_idx, norms, model_cfg, progress, desc="fitting scoring stats")
    held_set = set(stats_idx)
    extra = [(store.clips[i].machine, np.asarray(store.get(i))) for i in train_idx if i not in held_set]
    return held, extra


def fit_run_stats(runner, store: FeatureStore, train_idx: list[int], stats_idx: list[int], norms, model_cfg, tcfg, class_map, progress=False, log=print) -> ScoringStats:
    """Scoring statistics and thresholds of a run, fitted on :func:`stats_inputs`."""
    if set(train_idx) & set(stats_idx):
        log("warning: --stats-holdout 0: scoring statistics and thresholds are fitted on the clips the model trained on "
            "(in-sample); expect more false alarms than the target rate")
    held, extra = stats_inputs(runner, store, train_idx, stats_idx, norms, model_cfg, progress)
    stats, _ = fit_scoring_stats(tcfg.task, class_map, norms, held, tcfg.false_alarm_rate, tcfg.scoring, tcfg.fusion_components, extra)
    return stats


def write_split(run_dir: Path, store: FeatureStore, stats_idx: list[int], fraction: float, seed: int) -> None:
    """Record which training clips the statistics came from (names relative to the data root)."""
    import json

    held = defaultdict(list)
    for i in stats_idx:
        held[store.clips[i].machine].append(Path(store.clips[i].path).name)
    tmp = run_dir / (SPLIT + ".tmp")
    tmp.write_text(json.dumps({"stats_holdout": fraction, "seed": seed, "held_out": dict(sorted(held.items()))}, indent=1))
    os.replace(tmp, run_dir / SPLIT)


def train_run(data: str | Path, out: str | Path, cfg: RunConfig, resume: bool = False, progress: bool = True, cache_dir: Path | None = None, log=print) -> TrainResult:
    """Train on the normal training clips under ``data`` and write the run to ``out``."""
    t_start = time.time()
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not ckpt_path.exists():
        raise ConfigError(f"--resume: {out} holds no checkpoint to resume")
    device = resolve_device(cfg.train.device)

    index = scan_dataset(data)
    clips = index.select("train", label=0)
    if not clips:
        raise DatasetError(f"{data}: no normal training clips (<type>/train/normal_id_XX_*.wav)")
    feature_cfg = FeatureConfig()
    store = load_features(clips, feature_cfg, cache_dir, progress)
    if store.failed:
        log(f"warning: {len(store.failed)} training clip(s) could not be read and are left out, e.g. {next(iter(store.failed.values()))}")
    if len(store) == 0:
        raise DatasetError(f"{data}: none of the {len(clips)} training clips could be read")
    train_idx, stats_idx = split_holdout(store, cfg.train.stats_holdout, cfg.train.seed)
    class_map = sorted({c.machine for c in store.clips})
    class_of = {m: k for k, m in enumerate(class_map)}
    norms = {
        t: fit_normalization([np.asarray(store.get(i)) for i in train_idx if store.clips[i].machine_type == t])
        for t in sorted({c.machine_type for c in store.clips})
    }
    cfg = with_classes(cfg, len(class_map), feature_cfg.n_mels)
    mcfg, tcfg = cfg.model, cfg.train

    torch.manual_seed(tcfg.seed)
    model = MultitaskModel(mcfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    history: list[dict] = []
    start_epoch = 0
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        stored = dict(ckpt["config"])
        want = cfg.to_dict()
        stored_train = {k: v for k, v in stored["train"].items() if k != "epochs"}
        want_train = {k: v for k, v in want["train"].items() if k != "epochs"}
        if stored["model"] != want["model"] or stored_train != want_train or ckpt["class_map"] != class_map:
            raise ConfigError(f"--resume: {out} was trained with another configuration or data; only --epochs may change")
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"])
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    sampler = WindowSampler(store, train_idx, class_of, norms, mcfg.window)
    use_amp = device == "cuda"
    n_batches = math.ceil(len(sampler.indices) * tcfg.windows_per_clip / tcfg.batch_size)
    for epoch in range(start_epoch, tcfg.epochs):
        model.train()
        for group in optimizer.param_groups:  # a pure function of the epoch, so --resume continues it exactly
            group["lr"] = learning_rate(tcfg, epoch)
        rng = np.random.default_rng([tcfg.seed, epoch])
        t0 = time.time()
        sums = np.zeros(3)
        bar = tqdm(total=n_batches, desc=f"epoch {epoch + 1}/{tcfg.epochs}", unit="batch", disable=None if progress else True, leave=False)
        n = 0
        for batch in sampler.epoch(rng, tcfg.windows_per_clip, tcfg.batch_size, tcfg.mixup_prob):
            x = torch.from_numpy(batch.x).to(device)
            target = torch.from_numpy(batch.target).to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                total, rec, cls = losses(model, x, target, tcfg.task, mcfg.warmup)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            sums += [total.item(), rec.item(), cls.item()]
            n += 1
            bar.set_postfix(loss=f"{sums[0] / n:.4f}", recon=f"{sums[1] / n:.4f}", cls=f"{sums[2] / n:.4f}")
            bar.update()
        bar.close()
        mean = sums / max(n, 1)
        history.append({"epoch": epoch + 1, "loss": float(mean[0]), "recon_loss": float(mean[1]), "class_loss": float(mean[2]), "seconds": round(time.time() - t0, 2)})
        save_checkpoint(ckpt_path, model=model, optimizer=optimizer, cfg=cfg, feature_cfg=feature_cfg, class_map=class_map, norms=norms, epoch=epoch + 1, history=history)
        _write_log(out, history)
        if progress:
            log(f"epoch {epoch + 1}/{tcfg.epochs}: loss {mean[0]:.4f} (recon {mean[1]:.4f}, class {mean[2]:.4f}) in {history[-1]['seconds']:.1f}s")
    plot_losses(out, history)

    stats = fit_run_stats(TorchRunner(model, device), store, train_idx, stats_idx, norms, mcfg, tcfg, class_map, progress, log)
    stats.save(out / STATS)
    write_split(out, store, stats_idx, tcfg.stats_holdout, tcfg.seed)
    return TrainResult(out, history, stats, len(train_idx), len(stats_idx), store.failed, time.time() - t_start)

