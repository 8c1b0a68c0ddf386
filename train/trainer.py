"""Training loop for the multitask model and its single-task ablations."""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mtad.edge_runtime.atomic import atomic_path, atomic_write
from mtad.edge_runtime.dataset import scan_dataset
from mtad.edge_runtime.errors import ConfigError, DatasetError
from mtad.edge_runtime.features import FeatureConfig, fit_normalization
from mtad.edge_runtime.scoring import ClipEvidence, ScoringStats, conformal_rank, describe_threshold_ranges, needs_audio, needs_model
from mtad.edge_runtime.windows import clip_outputs

from . import distributed
from .batches import EpochBatches, WindowSampler
from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from .config import RunConfig, save_config, train_config_from_dict, with_classes
from .feature_cache import FeatureStore, load_features
from . import pseudo_anomalies
from .early_stopping import EarlyStopping, heldout_loss, heldout_windows
from .envelope_features import clip_envelope
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
    best_epoch: int | None = None  # with early stopping: the epoch whose weights were kept

    @property
    def stopped_note(self) -> str:
        if self.best_epoch is None:
            return ""
        return f" (early stopping: kept epoch {self.best_epoch}, best held-out loss {min(h['val_loss'] for h in self.history):.4f})"


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


def losses(model: MultitaskModel, x: torch.Tensor, target: torch.Tensor, task: str, warmup: int,
           pseudo: float = 0.0, gen: torch.Generator | None = None):
    """(total, recon, class) losses; next-frame MSE skips each window's warm-up frames.

    ``pseudo`` > 0: that fraction of the batch is added again with a pseudo-anomaly
    (:mod:`.pseudo_anomalies`, drawn from ``gen``) for the classifier only; the reconstruction
    sees clean windows."""
    zero = x.new_zeros(())
    n_clean = x.shape[0]
    x_all = x
    if task != "recon" and pseudo > 0:
        n_p = max(1, int(round(pseudo * n_clean)))
        kinds = torch.randint(0, len(pseudo_anomalies.KINDS), (n_p,), generator=gen)
        x_all = torch.cat([x, pseudo_anomalies.perturb(x[:n_p], kinds, gen)])
        target = torch.cat([F.pad(target, (0, target.shape[1] * len(pseudo_anomalies.KINDS))),
                            pseudo_anomalies.pseudo_targets(target[:n_p], kinds)])
    if task == "recon":
        pred, logits = model.reconstruct(x), None
    else:
        pred, logits, embedding = model(x_all)
        pred = pred[:n_clean]
        head = model.classifier.fc
        if hasattr(head, "margin_logits"):  # ArcFace: the margin applies in training only
            logits = head.margin_logits(embedding, target)
    recon = F.mse_loss(pred[:, :, warmup:-1].float(), x[:, :, warmup + 1 :]) if task != "classify" else zero
    cls = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean() if task != "recon" else zero
    return recon + cls, recon, cls


def _write_log(run_dir: Path, history: list[dict]) -> None:
    with atomic_write(run_dir / LOG, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


def plot_losses(run_dir: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, label in (("loss", "total"), ("recon_loss", "next-frame MSE"), ("class_loss", "id cross-entropy"), ("val_loss", "total, held-out normals")):
        if any(h.get(key) for h in history):
            ax.plot(ep, [h[key] for h in history], marker="o", ms=3, label=label, ls="--" if key == "val_loss" else "-")
    if any("val_loss" in h for h in history):
        best = min(history, key=lambda h: h["val_loss"])["epoch"]
        ax.axvline(best, color="k", lw=1, alpha=0.5, label=f"kept: epoch {best}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(run_dir / LOSS_PNG) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def compute_outputs(runner, store: FeatureStore, indices: list[int], norms, model_cfg, progress=False, desc="scoring",
                    envelope: bool = True) -> list[tuple[str, ClipEvidence]]:
    """``(machine, evidence)`` for each clip, through the shared windowing code; ``envelope``:
    also read each clip's audio for its envelope statistics."""
    out = []
    for i in tqdm(indices, desc=desc, unit="clip", disable=None if progress else True):
        c = store.clips[i]
        logmel = np.asarray(store.get(i))
        residual, logits, embedding = clip_outputs(norms[c.machine_type].apply(logmel), runner.infer, model_cfg.window, model_cfg.warmup)
        out.append((c.machine, ClipEvidence(residual, logits, logmel, embedding, envelope=clip_envelope(c.path) if envelope else None)))
    return out


def stats_inputs(runner, store: FeatureStore, train_idx: list[int], stats_idx: list[int], norms, model_cfg, progress=False,
                 envelope: bool = True):
    """What the scoring statistics are fitted on: model outputs of the held-out normals, and the
    audio statistics of the clips the model trained on (for the model-free components)."""
    held = compute_outputs(runner, store, stats_idx, norms, model_cfg, progress, desc="fitting scoring stats", envelope=envelope)
    held_set = set(stats_idx)
    extra = [(store.clips[i].machine, ClipEvidence(None, None, np.asarray(store.get(i)), envelope=clip_envelope(store.clips[i].path) if envelope else None))
             for i in train_idx if i not in held_set]
    return held, extra


def fit_run_stats(runner, store: FeatureStore, train_idx: list[int], stats_idx: list[int], norms, model_cfg, tcfg, class_map, progress=False,
                  log=print) -> tuple[ScoringStats, dict[str, int]]:
    """Scoring statistics and thresholds of a run, fitted on :func:`stats_inputs`, and how many
    out-of-sample normal scores set each id's threshold (none for in-sample fits and the paper's
    gamma-fit thresholds, which promise no rate)."""
    in_sample = bool(set(train_idx) & set(stats_idx)) and needs_model(tcfg.scoring, tcfg.fusion_components)
    if in_sample:
        # a model-free score is out of sample on every training normal anyway (fit_scoring_stats)
        log("warning: --stats-holdout 0: scoring statistics and thresholds are fitted on the clips the model trained on "
            "(in-sample); expect more false alarms than the target rate")
    held, extra = stats_inputs(runner, store, train_idx, stats_idx, norms, model_cfg, progress,
                               envelope=tcfg.scoring == "fusion" and needs_audio(tcfg.fusion_components))
    stats, finals = fit_scoring_stats(tcfg.task, class_map, norms, held, tcfg.false_alarm_rate, tcfg.scoring, tcfg.fusion_components, extra,
                                      tcfg.covariance)
    few = sorted(m for m, v in finals.items() if conformal_rank(len(v), tcfg.false_alarm_rate) is None)
    if few and tcfg.scoring != "paper":
        log(f"note: {len(few)} id(s) ({', '.join(few[:3])}{', ...' if len(few) > 3 else ''}) have too few held-out normals for a "
            f"distribution-free threshold at false-alarm rate {tcfg.false_alarm_rate}; their thresholds assume Gaussian scores")
    if not stats.needs_model:
        log(f"note: the score ({', '.join(tcfg.fusion_components)}) is model-free: every training normal calibrates it, and the network "
            "trained here scores only in the learned fusion (mtad-eval --refit --components recon,acoustic)")
    counts = {} if tcfg.scoring == "paper" or in_sample else {m: len(v) for m, v in finals.items()}
    if counts:
        log(describe_threshold_ranges(counts, tcfg.false_alarm_rate))
    return stats, counts


def write_split(run_dir: Path, store: FeatureStore, stats_idx: list[int], fraction: float, seed: int,
                threshold_clips: dict[str, int] | None = None) -> None:
    """Record which training clips the statistics came from (names relative to the data root),
    and how many out-of-sample normal scores set each threshold (:func:`fit_run_stats`)."""
    held = defaultdict(list)
    for i in stats_idx:
        held[store.clips[i].machine].append(Path(store.clips[i].path).name)
    with atomic_write(run_dir / SPLIT, "w") as f:
        f.write(json.dumps({"stats_holdout": fraction, "seed": seed, "held_out": dict(sorted(held.items())),
                            "threshold_clips": dict(sorted((threshold_clips or {}).items()))}, indent=1))


def record_threshold_clips(run_dir: Path, threshold_clips: dict[str, int]) -> None:
    """Replace the split record's threshold clip counts (a refit may score other components)."""
    path = run_dir / SPLIT
    try:
        split = json.loads(path.read_text())
        split = split if isinstance(split, dict) else {}
    except (OSError, ValueError):  # missing or damaged: keep the counts at least
        split = {}
    split["threshold_clips"] = dict(sorted(threshold_clips.items()))
    with atomic_write(path, "w") as f:
        f.write(json.dumps(split, indent=1))


def read_threshold_clips(run_dir: Path) -> dict[str, int]:
    """How many out-of-sample normals set each id's threshold, as the run recorded it (empty for
    runs made before mtad recorded it, in-sample fits and the paper's scoring)."""
    path = run_dir / SPLIT
    try:
        counts = json.loads(path.read_text()).get("threshold_clips") or {}
        return {str(m): int(n) for m, n in counts.items()}
    except (OSError, ValueError, AttributeError, TypeError):  # missing or damaged: the report just says less
        return {}


class _LossModule(torch.nn.Module):
    """The model and its loss as one module, so DistributedDataParallel sees every parameter the
    loss uses (the reconstruction-only path and the ArcFace margin live outside ``forward``)."""

    def __init__(self, model: MultitaskModel, task: str, warmup: int, pseudo: float = 0.0, seed: int = 0):
        super().__init__()
        self.model, self.task, self.warmup, self.pseudo = model, task, warmup, pseudo
        self.gen = torch.Generator().manual_seed(seed)  # pseudo-anomaly draws (CPU generator, any device)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.stack(losses(self.model, x, target, self.task, self.warmup, self.pseudo, self.gen))  # (3,): total, recon, class


def train_run(data: str | Path, out: str | Path, cfg: RunConfig, resume: bool = False, progress: bool = True, cache_dir: Path | None = None, log=print,
              workers: int = 1, loader_workers: int = 0, channels_last: bool = False, compile: bool = False,
              timeout: float = distributed.DEFAULT_TIMEOUT_S) -> TrainResult:
    """Train on the normal training clips under ``data`` and write the run to ``out``.

    Under ``torchrun`` every rank calls this: each trains on its share of every global batch of
    ``cfg.train.batch_size`` windows, rank 0 alone writes the run; the other ranks return a
    result whose ``stats`` is None. ``workers`` processes build the feature cache,
    ``loader_workers`` DataLoader workers assemble batches (neither changes the results);
    ``channels_last``/``compile`` are speed switches for the GPU. ``timeout``: seconds a rank
    waits for the others before every rank stops with an error.
    """
    if loader_workers < 0:
        raise ConfigError(f"--loader-workers must be >= 0, got {loader_workers}")
    if timeout <= 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {timeout}")
    ctx = distributed.setup(resolve_device(cfg.train.device), timeout)
    if cfg.train.batch_size < ctx.world:
        distributed.shutdown(ctx)
        raise ConfigError(f"batch_size {cfg.train.batch_size} is the global batch: it must be at least the {ctx.world} ranks")
    broken = False
    try:
        return _train_run(data, out, cfg, resume, progress and ctx.is_main, cache_dir, log if ctx.is_main else (lambda m: None),
                          ctx, workers, loader_workers, channels_last, compile)
    except distributed.LostRankError:
        broken = True
        raise
    finally:
        distributed.shutdown(ctx, broken=broken)


def _train_run(data, out, cfg: RunConfig, resume, progress, cache_dir, log, ctx: distributed.Context, workers, loader_workers, channels_last, compile) -> TrainResult:
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
    store = load_features(clips, feature_cfg, cache_dir, progress, workers)  # one rank per node builds, under a file lock
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
    cfg = with_classes(cfg, pseudo_anomalies.n_classes(len(class_map), cfg.train.pseudo_anomalies), feature_cfg.n_mels)
    mcfg, tcfg = cfg.model, cfg.train

    torch.manual_seed(tcfg.seed)
    model = MultitaskModel(mcfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    history: list[dict] = []
    start_epoch = 0
    stopper_state = None
    if resume:
        ckpt = load_checkpoint(ckpt_path)
        stored = dict(ckpt["config"])
        want = cfg.to_dict()
        # a setting added since that run was made (e.g. covariance) takes its default rather than refusing the resume
        stored_cfg = replace(cfg, train=train_config_from_dict(stored["train"])).to_dict()
        stored_train = {k: v for k, v in stored_cfg["train"].items() if k != "epochs"}
        want_train = {k: v for k, v in want["train"].items() if k != "epochs"}
        if stored["model"] != want["model"] or stored_train != want_train or ckpt["class_map"] != class_map:
            raise ConfigError(f"--resume: {out} was trained with another configuration or data; only --epochs may change")
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"])
        stopper_state = ckpt.get("early_stopping")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    if channels_last:
        model.classifier.to(memory_format=torch.channels_last)
    train_model = loss_module = _LossModule(model, tcfg.task, mcfg.warmup, tcfg.pseudo_anomalies)
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        if device == "cuda":  # BatchNorm statistics over the global batch, as in one process (shares model's tensors)
            train_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(train_model)
        train_model = DistributedDataParallel(train_model, device_ids=[ctx.local_rank] if device == "cuda" else None,
                                              find_unused_parameters=True)  # some outputs (the last block's residual, the unused head of an ablation) take no part in the loss
    if compile:
        train_model = torch.compile(train_model)

    sampler = WindowSampler(store, train_idx, class_of, norms, mcfg.window)
    use_amp = device == "cuda"
    stopper = None
    if tcfg.early_stopping:
        if set(train_idx) & set(stats_idx):
            raise ConfigError("early stopping watches the held-out normals' loss: it needs --stats-holdout > 0")
        stopper = EarlyStopping.from_dict(stopper_state) if stopper_state else EarlyStopping(tcfg.early_stopping)
        val_x, val_target = heldout_windows(store, stats_idx, class_of, norms, mcfg.window, mcfg.warmup, mcfg.n_classes)
        if stopper.best_epoch and start_epoch - stopper.best_epoch >= stopper.patience:
            start_epoch = tcfg.epochs  # the run had already stopped: nothing to resume
    stop = False
    for epoch in range(start_epoch, tcfg.epochs):
        train_model.train()
        for group in optimizer.param_groups:  # a pure function of the epoch, so --resume continues it exactly
            group["lr"] = learning_rate(tcfg, epoch)
        plan = sampler.plan(np.random.default_rng([tcfg.seed, epoch]), tcfg.windows_per_clip, tcfg.mixup_prob)  # same on every rank
        loss_module.gen.manual_seed(int(np.random.default_rng([tcfg.seed, epoch, ctx.rank]).integers(2**62)))  # --resume-exact
        batches = EpochBatches(sampler, plan, tcfg.batch_size, ctx.rank, ctx.world)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=loader_workers, pin_memory=device == "cuda")
        t0 = time.time()
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{tcfg.epochs}", unit="batch", disable=None if progress else True, leave=False)
        with distributed.comm_errors(ctx, f"epoch {epoch + 1}"):
            for n, (x, target, weight) in enumerate(loader, 1):
                x = x.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                    parts = train_model(x, target)
                optimizer.zero_grad(set_to_none=True)
                (parts[0] * weight).backward()  # weight: this rank's share of the global batch (1 in one process)
                optimizer.step()
                sums += parts.detach().double() * weight
                if n % 10 == 0 or n == len(batches):  # reading the loss waits for the GPU: not every step
                    m = (sums / n).tolist()
                    bar.set_postfix(loss=f"{m[0]:.4f}", recon=f"{m[1]:.4f}", cls=f"{m[2]:.4f}")
                bar.update()
        bar.close()
        totals = distributed.sum_over_ranks(ctx, sums.tolist() + [len(batches)])
        mean = np.array(totals[:3]) / max(totals[3], 1)  # mean over global batches of the global batch's mean loss
        history.append({"epoch": epoch + 1, "loss": float(mean[0]), "recon_loss": float(mean[1]), "class_loss": float(mean[2]), "seconds": round(time.time() - t0, 2)})
        if not np.isfinite(mean).all():  # every rank holds the same mean, so all stop here together, keeping the last good checkpoint
            raise ConfigError(f"training diverged: the loss is {mean[0]} in epoch {epoch + 1}; lower the learning rate or check the data")
        if stopper is not None:  # every rank evaluates the same held-out windows with the same weights
            history[-1]["val_loss"] = heldout_loss(lambda x, t: losses(model, x, t, tcfg.task, mcfg.warmup), model, val_x, val_target, device)
            stop = stopper.update(epoch + 1, history[-1]["val_loss"], model)
        write_failed = None
        if ctx.is_main:
            try:
                save_checkpoint(ckpt_path, model=model, optimizer=optimizer, cfg=cfg, feature_cfg=feature_cfg, class_map=class_map, norms=norms, epoch=epoch + 1, history=history,
                                extra={"early_stopping": stopper.to_dict()} if stopper else None)
                _write_log(out, history)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
                write_failed = exc
        if distributed.agree(ctx, write_failed is not None):
            if write_failed is not None:
                raise write_failed
            raise distributed.DistributedError(f"rank {ctx.rank}: rank 0 could not write the checkpoint, so every rank stops")
        if progress:
            val = f", held-out {history[-1]['val_loss']:.4f}" if stopper else ""
            log(f"epoch {epoch + 1}/{tcfg.epochs}: loss {mean[0]:.4f} (recon {mean[1]:.4f}, class {mean[2]:.4f}{val}) in {history[-1]['seconds']:.1f}s")
        if distributed.agree(ctx, stop):
            log(f"early stopping: no better held-out loss for {stopper.patience} epochs; keeping epoch {stopper.best_epoch}")
            break
    if stopper is not None and stopper.best_state:  # the scoring statistics, the export and --resume all see the kept weights
        model.load_state_dict(stopper.best_state)
        if ctx.is_main:
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, cfg=cfg, feature_cfg=feature_cfg, class_map=class_map, norms=norms, epoch=len(history),
                            history=history, extra={"early_stopping": stopper.to_dict()})
    if not ctx.is_main:  # rank 0 alone plots and fits the scoring statistics; the others are done
        # (no barrier: a collective held while rank 0 scores clips would be cut off by --timeout)
        return TrainResult(out, history, None, len(train_idx), len(stats_idx), store.failed, time.time() - t_start, stopper.best_epoch if stopper else None)
    plot_losses(out, history)

    stats, threshold_clips = fit_run_stats(TorchRunner(model, device), store, train_idx, stats_idx, norms, mcfg, tcfg, class_map, progress, log)
    stats.save(out / STATS)
    write_split(out, store, stats_idx, tcfg.stats_holdout, tcfg.seed, threshold_clips)
    return TrainResult(out, history, stats, len(train_idx), len(stats_idx), store.failed, time.time() - t_start, stopper.best_epoch if stopper else None)

