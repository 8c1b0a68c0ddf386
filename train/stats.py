"""Fitting the scoring statistics and decision thresholds on training normals."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import stats as sstats
from sklearn.covariance import LedoitWolf

from mtad.edge_runtime.features import Normalization
from mtad.edge_runtime.scoring import ScoringStats, TypeStats, error_vector, uses_mse


def shrunk_precision(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Ledoit-Wolf-shrunk precision of rows of ``x`` (needs >= 2 rows)."""
    if x.shape[0] < 2:
        raise ValueError("need at least 2 clips to fit a covariance")
    lw = LedoitWolf().fit(x)
    return lw.location_, lw.precision_


def gamma_threshold(scores: np.ndarray, false_alarm_rate: float) -> float:
    """Quantile ``1 - false_alarm_rate`` of a gamma distribution fitted to ``scores``."""
    scores = np.asarray(scores, np.float64)
    if scores.size < 3 or np.ptp(scores) == 0:
        return float(np.quantile(scores, 1 - false_alarm_rate)) if scores.size else float("inf")
    shape, loc, scale = sstats.gamma.fit(scores)
    return float(sstats.gamma.ppf(1 - false_alarm_rate, shape, loc=loc, scale=scale))


def fit_scoring_stats(
    task: str,
    class_map: list[str],
    norms: dict[str, Normalization],
    outputs: list[tuple[str, np.ndarray, np.ndarray]],
    false_alarm_rate: float = 0.1,
) -> tuple[ScoringStats, dict[str, list[float]]]:
    """Fit statistics from ``(machine, residual, logits)`` of training normals.

    Returns the stats and the final scores of those clips per machine (for checks).
    """
    types = {t: TypeStats(norm=n) for t, n in norms.items()}
    st = ScoringStats(task, class_map, types, false_alarm_rate=false_alarm_rate)
    by_type: dict[str, list] = defaultdict(list)
    for machine, residual, logits in outputs:
        by_type[machine.split("/")[0]].append((machine, residual, logits))
    # 1) reconstruction statistics (Mahalanobis types)
    if task != "classify":
        for t, items in by_type.items():
            if not uses_mse(t):
                types[t].recon_mean, types[t].recon_precision = shrunk_precision(np.stack([error_vector(r) for _, r, _ in items]))
    # 2) the (recon, class) pairs and the final statistics
    pairs = {t: [(m, *st.score_pair(m, r, l)) for m, r, l in items] for t, items in by_type.items()}
    if task == "multitask":
        for t, rows in pairs.items():
            types[t].final_mean, types[t].final_precision = shrunk_precision(np.array([[rec, cls] for _, rec, cls in rows]))
    # 3) final scores and per-machine thresholds
    finals: dict[str, list[float]] = defaultdict(list)
    for rows in pairs.values():
        for m, rec, cls in rows:
            finals[m].append(st.final_score(m, rec, cls))
    st.thresholds = {m: gamma_threshold(np.array(v), false_alarm_rate) for m, v in finals.items()}
    return st, dict(finals)
