"""The simple reference detector the synthetic set is calibrated against.

Per machine id: each clip becomes the per-bin mean and std of its log-mel (256 values),
scored by Mahalanobis distance to the id's training clips (Ledoit-Wolf covariance).
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.constants import MAX_FPR
from mtad.edge_runtime.dataset import DatasetIndex
from mtad.edge_runtime.features import LogMelExtractor


def clip_summary(logmel: np.ndarray) -> np.ndarray:
    return np.concatenate([logmel.mean(axis=1), logmel.std(axis=1)])


def baseline_scores(index: DatasetIndex) -> dict[tuple[str, str], tuple[list, np.ndarray]]:
    """``{(type, id): (test clips, scores)}`` of the mean/std log-mel Mahalanobis baseline, for the
    ids with at least 2 training clips and both labels among their test clips."""
    extract = LogMelExtractor()
    feats = {c.path: clip_summary(extract(load_audio(c.path))) for c in index.clips if c.split in ("train", "test")}  # not val clips
    results = {}
    for mtype, mid in index.machines("test"):
        train = [feats[c.path] for c in index.select("train", mtype) if c.machine_id == mid]
        test = [c for c in index.select("test", mtype) if c.machine_id == mid]
        if len(train) < 2 or len({c.label for c in test}) < 2:
            continue
        lw = LedoitWolf().fit(np.stack(train))
        results[(mtype, mid)] = (test, np.sqrt(lw.mahalanobis(np.stack([feats[c.path] for c in test]))))
    return results


def baseline_aucs(index: DatasetIndex) -> dict[tuple[str, str], tuple[float, float]]:
    """``{(type, id): (auc, pauc)}`` of the mean/std log-mel Mahalanobis baseline."""
    results = {}
    for key, (test, scores) in baseline_scores(index).items():
        y = np.array([c.label for c in test])
        results[key] = (roc_auc_score(y, scores), roc_auc_score(y, scores, max_fpr=MAX_FPR))
    return results


def baseline_metrics(index: DatasetIndex) -> dict:
    """The baseline's AUC/pAUC per type and overall, shaped like ``compute_metrics`` (for comparisons)."""
    results = baseline_aucs(index)
    types = {}
    for mtype in sorted({t for t, _ in results}):
        rows = [v for (t, _), v in results.items() if t == mtype]
        types[mtype] = {"auc": float(np.mean([a for a, _ in rows])), "pauc": float(np.mean([p for _, p in rows]))}
    mean = {k: float(np.mean([v[k] for v in types.values()])) if types else None for k in ("auc", "pauc")}
    return {"types": types, "mean": mean, "machines": [{"machine": f"{t}/{i}", "auc": a, "pauc": p} for (t, i), (a, p) in sorted(results.items())]}
