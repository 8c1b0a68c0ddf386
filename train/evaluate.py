"""Evaluation: score test clips with a trained run and report AUC/pAUC like the paper."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score, roc_curve

from mtad.edge_runtime.atomic import atomic_write
from mtad.edge_runtime.constants import MAX_FPR
from mtad.edge_runtime.dataset import DatasetIndex, scan_dataset
from mtad.edge_runtime.errors import BundleError, ConfigError, DatasetError
from mtad.edge_runtime.features import FeatureConfig
from mtad.edge_runtime.scoring import COVARIANCES, FALSE_ALARM_CHECK_COVERAGE, ScoringStats, false_alarm_rate_range

from .checkpoint import load_checkpoint, model_from_checkpoint, norms_from_checkpoint
from .feature_cache import load_features
from .model import ModelConfig
from .reference import TorchRunner
from .trainer import STATS, compute_outputs, fit_run_stats, read_threshold_clips, record_threshold_clips, split_holdout



@dataclass
class LoadedRun:
    run_dir: Path
    ckpt: dict
    model_cfg: ModelConfig
    stats: ScoringStats | None
    threshold_clips: dict[str, int] = field(default_factory=dict)  # out-of-sample normals behind each threshold

    @property
    def task(self) -> str:
        return self.ckpt["config"]["train"]["task"]

    def runner(self, device: str = "cpu") -> TorchRunner:
        return TorchRunner(model_from_checkpoint(self.ckpt), device)


def load_run(run_dir: str | Path, require_stats: bool = True) -> LoadedRun:
    """Checkpoint and scoring statistics of a run (statistics may be absent when refitting)."""
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    if FeatureConfig.from_dict(ckpt["feature_config"]) != FeatureConfig():
        raise ConfigError(f"{run_dir}: trained with other feature settings than this mtad version uses")
    if not require_stats:  # a refit replaces them; stale statistics from an older mtad must not stop it
        return LoadedRun(run_dir, ckpt, ModelConfig.from_dict(ckpt["config"]["model"]), None, read_threshold_clips(run_dir))
    if not (run_dir / STATS).exists():
        raise ConfigError(f"{run_dir}: no {STATS}; run mtad-eval --refit to fit scoring statistics")
    try:
        stats = ScoringStats.load(run_dir / STATS, n_mels=FeatureConfig().n_mels)
    except BundleError as exc:
        raise ConfigError(f"{exc} (statistics from another mtad version?); run mtad-eval --refit to fit them again") from None
    return LoadedRun(run_dir, ckpt, ModelConfig.from_dict(ckpt["config"]["model"]), stats, read_threshold_clips(run_dir))


@dataclass
class ClipScore:
    path: str
    machine: str
    label: int
    score: float
    threshold: float
    components: dict[str, float] = field(default_factory=dict)  # raw component scores

    @property
    def anomaly(self) -> bool:
        return self.score > self.threshold

    @property
    def key(self) -> str:
        """Clip identity for parity comparisons (edge_runtime.parity.compare)."""
        return self.path


def previous_covariance(run: LoadedRun) -> str:
    """The covariance rule the run's statistics were made with: as its ``stats.npz`` records it
    (a refit may have changed it), else its config; runs older than the setting used Ledoit-Wolf."""
    from mtad.edge_runtime.bundle_schema import read_stats_arrays

    try:
        recorded = str(read_stats_arrays(run.run_dir / STATS).get("covariance", ""))
    except BundleError:  # missing or unreadable: the refit replaces it
        recorded = None
    return recorded if recorded in COVARIANCES else run.ckpt["config"]["train"].get("covariance", "ledoit-wolf")


def refit_stats(run: LoadedRun, data: str | Path, holdout: float | None = None, scoring: str | None = None,
                components: tuple[str, ...] | None = None, progress: bool = True, log=print, covariance: str | None = None) -> ScoringStats:
    """Refit the scoring statistics and thresholds on DATA's training normals and save them.

    By default the run's own held-out split is used again (same fraction and seed, so the
    same clips), with its covariance rule (:func:`previous_covariance`). ``holdout`` other than
    the run's fraction would put training clips into the fit, so it is refused unless it is 0
    (an explicit, warned in-sample fit).
    """
    from dataclasses import replace

    from .config import train_config_from_dict

    tcfg = train_config_from_dict(run.ckpt["config"]["train"])
    if holdout is not None and holdout not in (0, tcfg.stats_holdout):
        raise ConfigError(f"--stats-holdout {holdout}: this run held out {tcfg.stats_holdout} of the training normals; "
                          f"another fraction would fit statistics on clips the model trained on (0 does so explicitly)")
    tcfg = replace(tcfg, stats_holdout=tcfg.stats_holdout if holdout is None else holdout,
                   scoring=scoring or tcfg.scoring, components=tuple(components or tcfg.components),
                   covariance=covariance or previous_covariance(run))
    index = scan_dataset(data)
    store = load_features(index.select("train", label=0), progress=progress)
    train_idx, stats_idx = split_holdout(store, tcfg.stats_holdout, tcfg.seed)
    stats, threshold_clips = fit_run_stats(run.runner(), store, train_idx, stats_idx, norms_from_checkpoint(run.ckpt), run.model_cfg, tcfg,
                                           run.ckpt["class_map"], progress, log)
    stats.save(run.run_dir / STATS)
    record_threshold_clips(run.run_dir, threshold_clips)
    run.stats, run.threshold_clips = stats, threshold_clips
    return stats


def score_outputs(stats: ScoringStats, clips, outputs) -> list[ClipScore]:
    """ClipScores of ``(machine, evidence)`` outputs of ``clips`` under ``stats``."""
    scores = []
    for c, (machine, ev) in zip(clips, outputs):
        parts = stats.score_parts(machine, ev)
        scores.append(ClipScore(str(c.path), machine, c.label, parts.score, stats.threshold(machine), parts.components))
    return scores


def score_split(run: LoadedRun, index: DatasetIndex, runner=None, split: str = "test", progress: bool = True) -> tuple[list[ClipScore], dict[str, str]]:
    """Scores of every clip of ``split`` whose machine the run knows; unreadable clips are
    returned separately (path -> reason) and never scored."""
    known = set(run.stats.machines)
    clips = [c for c in index.select(split) if c.machine in known]
    if not clips:
        raise DatasetError(f"{index.root}: no {split} clips of the machines this run was trained on ({', '.join(sorted(known))})")
    store = load_features(clips, progress=progress)
    runner = runner or run.runner()
    outputs = compute_outputs(runner, store, list(range(len(store))), {t: s.norm for t, s in run.stats.types.items()}, run.model_cfg, progress, desc=f"scoring {split}",
                              envelope=run.stats.needs_envelope)
    return score_outputs(run.stats, store.clips, outputs), dict(store.failed)


def compute_metrics(scores: list[ClipScore], failed: dict[str, str] | None = None, threshold_clips: dict[str, int] | None = None,
                    false_alarm_rate: float | None = None) -> dict:
    """The JSON report: per machine AUC/pAUC and decision quality, per type and overall means.

    The overall mean is the mean of the per-type means (each machine type weighs the same). With
    ``threshold_clips`` (out-of-sample normals behind each id's threshold) and the target
    ``false_alarm_rate``, each machine also gets the range its measured rate falls in by chance
    (:func:`false_alarm_rate_range`) and whether it does: a rate beyond it means the test normals
    do not sound like the normals that set the threshold.
    """
    by_machine: dict[str, list[ClipScore]] = defaultdict(list)
    for s in scores:
        by_machine[s.machine].append(s)
    machines = []
    for machine in sorted(by_machine):
        rows = by_machine[machine]
        y = np.array([r.label for r in rows])
        s = np.array([r.score for r in rows])
        mtype, mid = machine.split("/")
        entry = {"machine_type": mtype, "machine_id": mid, "n_normal": int((y == 0).sum()), "n_anomaly": int((y == 1).sum())}
        if len(set(y.tolist())) == 2:
            entry["auc"] = float(roc_auc_score(y, s))
            entry["pauc"] = float(roc_auc_score(y, s, max_fpr=MAX_FPR))
        else:
            entry["auc"] = entry["pauc"] = None
        pred = np.array([r.anomaly for r in rows]).astype(int)
        p, r, f1, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
        counts = {"tp": int(((pred == 1) & (y == 1)).sum()), "fp": int(((pred == 1) & (y == 0)).sum()),
                  "tn": int(((pred == 0) & (y == 0)).sum()), "fn": int(((pred == 0) & (y == 1)).sum())}
        far = counts["fp"] / (counts["fp"] + counts["tn"]) if counts["fp"] + counts["tn"] else None
        entry.update(precision=float(p), recall=float(r), f1=float(f1), threshold=float(rows[0].threshold), false_alarm_rate=far, **counts)
        n_cal = (threshold_clips or {}).get(machine)
        chance = false_alarm_rate_range(n_cal, entry["n_normal"], false_alarm_rate) if n_cal and false_alarm_rate and far is not None else None
        if chance is not None:
            entry.update(threshold_clips=n_cal, false_alarm_chance_range=list(chance),
                         false_alarm_explained=bool(chance[0] - 1e-9 <= far <= chance[1] + 1e-9))
        if rows[0].components:
            entry["component_auc"] = {c: float(roc_auc_score(y, [q.components[c] for q in rows])) for c in rows[0].components
                                      if len(set(y.tolist())) == 2 and all(np.isfinite(q.components[c]) for q in rows)}
        machines.append(entry)
    types = {}
    for mtype in sorted({m["machine_type"] for m in machines}):
        ms = [m for m in machines if m["machine_type"] == mtype and m["auc"] is not None]
        if ms:
            types[mtype] = {"auc": float(np.mean([m["auc"] for m in ms])), "pauc": float(np.mean([m["pauc"] for m in ms])), "f1": float(np.mean([m["f1"] for m in ms]))}
    mean = {k: float(np.mean([t[k] for t in types.values()])) if types else None for k in ("auc", "pauc")}
    fars = [m["false_alarm_rate"] for m in machines if m["false_alarm_rate"] is not None]
    mean["false_alarm_rate"] = float(np.mean(fars)) if fars else None
    checked = [m for m in machines if "false_alarm_explained" in m]
    mean["false_alarm_unexplained"] = [f"{m['machine_type']}/{m['machine_id']}" for m in checked if not m["false_alarm_explained"]] if checked else None
    excluded = [{"path": p, "reason": why} for p, why in sorted((failed or {}).items())]
    return {"machines": machines, "types": types, "mean": mean, "n_scored": len(scores), "n_excluded": len(excluded), "excluded": excluded}


def format_tables(metrics: dict, title: str = "", target_false_alarm_rate: float | None = None) -> str:
    """Plain-text tables shaped like the paper's Table 1 (per type) and Table 2 (per id)."""
    lines = [title] if title else []
    lines.append(f"{'type':<12} {'AUC':>6} {'pAUC':>6} {'F1':>6}")
    for t, v in metrics["types"].items():
        lines.append(f"{t:<12} {v['auc']:>6.3f} {v['pauc']:>6.3f} {v['f1']:>6.3f}")
    if metrics["mean"]["auc"] is not None:
        lines.append(f"{'mean':<12} {metrics['mean']['auc']:>6.3f} {metrics['mean']['pauc']:>6.3f}")
    lines.append("")
    comps = sorted({c for m in metrics["machines"] for c in m.get("component_auc", {})})
    lines.append(f"{'machine':<20} {'AUC':>6} {'pAUC':>6} {'prec':>6} {'recall':>6} {'F1':>6} {'FAR':>6} {'normal':>6} {'anom.':>6}"
                 + "".join(f" {'AUC ' + c:>13}" for c in comps))
    for m in metrics["machines"]:
        auc = f"{m['auc']:>6.3f} {m['pauc']:>6.3f}" if m["auc"] is not None else f"{'-':>6} {'-':>6}"
        far = f"{m['false_alarm_rate']:>6.3f}" if m.get("false_alarm_rate") is not None else f"{'-':>6}"
        lines.append(f"{m['machine_type'] + '/' + m['machine_id']:<20} {auc} {m['precision']:>6.3f} {m['recall']:>6.3f} {m['f1']:>6.3f} {far} {m['n_normal']:>6} {m['n_anomaly']:>6}"
                     + "".join(f" {m.get('component_auc', {}).get(c, float('nan')):>13.3f}" for c in comps))
    if metrics["mean"].get("false_alarm_rate") is not None:
        target = f" (target {target_false_alarm_rate:g})" if target_false_alarm_rate is not None else ""
        lines.append(f"false-alarm rate at the thresholds{target}: mean {metrics['mean']['false_alarm_rate']:.3f} over machines")
    checked = [m for m in metrics["machines"] if "false_alarm_explained" in m]
    for m in checked:
        if not m["false_alarm_explained"]:
            lo, hi = m["false_alarm_chance_range"]
            lines.append(f"{m['machine_type']}/{m['machine_id']}: false-alarm rate {m['false_alarm_rate']:.2f} on {m['n_normal']} normals is beyond the "
                         f"{lo:.2f}-{hi:.2f} that chance gives a threshold from {m['threshold_clips']} normals "
                         f"({100 * FALSE_ALARM_CHECK_COVERAGE:g} %): these normals do not sound like the ones that set it "
                         f"(another recording setup, gain or machine state?)")
    if checked and all(m["false_alarm_explained"] for m in checked):
        lines.append(f"every machine's false-alarm rate is within what chance gives its threshold's clip count "
                     f"({100 * FALSE_ALARM_CHECK_COVERAGE:g} % range)")
    if metrics["n_excluded"]:
        lines.append(f"\nexcluded {metrics['n_excluded']} unreadable clip(s) (not scored):")
        lines += [f"  {e['path']}: {e['reason']}" for e in metrics["excluded"][:10]]
    return "\n".join(lines)


def format_comparison(named: list[tuple[str, dict]]) -> str:
    """Runs side by side per type, AUC/pAUC (the paper's Table 1 layout)."""
    types = sorted({t for _, m in named for t in m["types"]})
    head = f"{'type':<12} " + " ".join(f"{name[:17]:>17}" for name, _ in named)
    lines = [head]
    for t in types + ["mean"]:
        cells = []
        for _, m in named:
            v = m["mean"] if t == "mean" else m["types"].get(t)
            cells.append(f"{v['auc']:.3f}/{v['pauc']:.3f}".rjust(17) if v and v.get("auc") is not None else "-".rjust(17))
        lines.append(f"{t:<12} " + " ".join(cells))
    return "\n".join(lines)


def write_json(metrics: dict, path: Path) -> None:
    with atomic_write(path, "w") as f:
        f.write(json.dumps(metrics, indent=2))


def write_plots(scores: list[ClipScore], metrics: dict, out_dir: Path) -> list[Path]:
    """ROC curve per machine type and normal-vs-anomaly score histograms per machine (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    types = sorted({s.machine.split("/")[0] for s in scores})
    fig, axes = plt.subplots(1, len(types), figsize=(3.2 * len(types), 3.2), squeeze=False)
    for ax, t in zip(axes[0], types):
        for machine in sorted({s.machine for s in scores if s.machine.startswith(t + "/")}):
            rows = [s for s in scores if s.machine == machine]
            y = [r.label for r in rows]
            if len(set(y)) < 2:
                continue
            fpr, tpr, _ = roc_curve(y, [r.score for r in rows])
            auc = next(m["auc"] for m in metrics["machines"] if f"{m['machine_type']}/{m['machine_id']}" == machine)
            ax.plot(fpr, tpr, label=f"{machine.split('/')[1]} ({auc:.2f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.axvspan(0, MAX_FPR, color="grey", alpha=0.15)
        ax.set_title(t)
        ax.set_xlabel("false-positive rate")
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("true-positive rate")
    fig.tight_layout()
    path = out_dir / "roc.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    machines = sorted({s.machine for s in scores})
    cols = 4
    rows_n = (len(machines) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.4 * rows_n), squeeze=False)
    for ax, machine in zip(axes.flat, machines):
        rows = [s for s in scores if s.machine == machine]
        normal = [r.score for r in rows if r.label == 0]
        anomaly = [r.score for r in rows if r.label == 1]
        bins = np.histogram_bin_edges(normal + anomaly, bins=20)
        ax.hist(normal, bins=bins, alpha=0.6, label="normal")
        ax.hist(anomaly, bins=bins, alpha=0.6, label="anomaly")
        ax.axvline(rows[0].threshold, color="k", ls="--", lw=1, label="threshold")
        ax.set_title(machine, fontsize=9)
    for ax in list(axes.flat)[len(machines):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "score_histograms.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


def evaluate(run_dir: str | Path, data: str | Path, progress: bool = True) -> tuple[dict, list[ClipScore]]:
    run = load_run(run_dir)
    scores, failed = score_split(run, scan_dataset(data), progress=progress)
    return compute_metrics(scores, failed, run.threshold_clips, run.stats.false_alarm_rate), scores

