"""Fitting the scoring statistics and decision thresholds on normals the model never trained on."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy import stats as sstats
from sklearn.covariance import LedoitWolf

from mtad.edge_runtime.errors import DatasetError
from mtad.edge_runtime.features import Normalization
from mtad.edge_runtime.scoring import (
    DEFAULT_COMPONENTS,
    MIN_CALIBRATION_CLIPS,
    MODEL_FREE,
    ClipEvidence,
    ScoringStats,
    TypeStats,
    calibration_of,
    component_weight,
    embed_centre_and_loo,
    error_vector,
    mahalanobis,
    pooled_calibration,
    prediction_threshold,
    task_components,
    uses_mse,
)

def shrunk_precision(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Ledoit-Wolf-shrunk precision of rows of ``x`` (needs >= 2 rows)."""
    if x.shape[0] < 2:
        raise ValueError("need at least 2 clips to fit a covariance")
    lw = LedoitWolf().fit(x)
    return lw.location_, lw.precision_


def shared_gaussian(vectors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-id centres and one Ledoit-Wolf precision shared by the ids (within-id scatter).

    ``vectors`` maps machine -> rows ``(n_i, d)``; every id needs >= 1 row, all together >= 2.
    """
    centres = {m: v.mean(axis=0) for m, v in vectors.items()}
    deviations = np.concatenate([v - centres[m] for m, v in vectors.items()])
    if deviations.shape[0] < 2:
        raise ValueError("need at least 2 clips to fit a covariance")
    return centres, LedoitWolf(assume_centered=True).fit(deviations).precision_


def gamma_threshold(scores: np.ndarray, false_alarm_rate: float) -> float:
    """Quantile ``1 - false_alarm_rate`` of a gamma distribution fitted to ``scores``."""
    scores = np.asarray(scores, np.float64)
    if scores.size < 3 or np.ptp(scores) == 0:
        return float(np.quantile(scores, 1 - false_alarm_rate)) if scores.size else float("inf")
    shape, loc, scale = sstats.gamma.fit(scores)
    return float(sstats.gamma.ppf(1 - false_alarm_rate, shape, loc=loc, scale=scale))


def _loo_distances(vectors: dict[str, np.ndarray], held: dict[str, list[int]], fixed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Distance of each held row to a shared Gaussian fitted without that row (leave one out).

    ``vectors[m]`` are the held rows of id m; ``fixed[m]`` extra rows always in the fit.
    """
    out: dict[str, np.ndarray] = {}
    for m in vectors:
        dists = []
        for i in held[m]:
            fit = {k: np.concatenate([np.delete(v, i, axis=0) if k == m else v, fixed.get(k, v[:0])]) for k, v in vectors.items()}
            centres, precision = shared_gaussian(fit)
            dists.append(mahalanobis(vectors[m][i], centres[m], precision))
        out[m] = np.array(dists)
    return out


def fit_scoring_stats(
    task: str,
    class_map: list[str],
    norms: dict[str, Normalization],
    held: list[tuple[str, ClipEvidence]],
    false_alarm_rate: float = 0.1,
    scoring: str = "fusion",
    components: tuple[str, ...] = DEFAULT_COMPONENTS,
    extra_normals: list[tuple[str, ClipEvidence]] = (),
) -> tuple[ScoringStats, dict[str, list[float]]]:
    """Fit statistics and thresholds from ``held``: ``(machine, evidence)`` of normals the model
    never trained on. ``extra_normals`` (``(machine, evidence)`` of the clips the model did train
    on, without model outputs) join the fit of the model-free components (``spectral``, ``envelope``,
    ``acoustic``) only.

    Returns the stats and each machine's held-out final scores, computed out of sample
    (leave-one-out), which set the thresholds.
    """
    types = {t: TypeStats(norm=n) for t, n in norms.items()}
    if scoring == "paper":
        return _fit_paper(task, class_map, types, held, false_alarm_rate)
    allowed = task_components(task)
    bad = [c for c in components if c not in allowed]
    if bad or not components:
        raise DatasetError(f"score component(s) {', '.join(bad) or '(none)'} not available for a {task} model (choose from {', '.join(allowed)})")
    st = ScoringStats(task, class_map, types, false_alarm_rate=false_alarm_rate, scoring="fusion", components=tuple(components),
                      weights=tuple(component_weight(c) for c in components))
    by_machine: dict[str, list[ClipEvidence]] = defaultdict(list)
    for m, ev in held:
        by_machine[m].append(ev)
    few = {m: len(v) for m, v in by_machine.items() if len(v) < MIN_CALIBRATION_CLIPS}
    if few:
        raise DatasetError(
            f"too few held-out normals to calibrate scores and thresholds: {', '.join(f'{m} has {n}' for m, n in sorted(few.items()))} "
            f"(need >= {MIN_CALIBRATION_CLIPS} per id); add training clips or raise --stats-holdout"
        )
    extra: dict[str, list[ClipEvidence]] = defaultdict(list)
    for m, ev in extra_normals:
        if m in by_machine:
            extra[m].append(ev)
    raw: dict[str, dict[str, np.ndarray]] = {}  # component -> machine -> out-of-sample raw scores of held clips
    for comp in components:
        if comp == "class":
            raw[comp] = {m: np.array([st.component_score("class", m, ev) for ev in evs]) for m, evs in by_machine.items()}
            continue
        if comp == "embed":  # cosine distance to the id's mean direction, leave-one-out for calibration
            raw[comp] = {}
            for m, evs in by_machine.items():
                st.centres[f"embed|{m}"], raw[comp][m] = embed_centre_and_loo(np.stack([st.component_vector("embed", ev) for ev in evs]))
            continue
        raw[comp] = {}
        for t in sorted({m.split("/")[0] for m in by_machine}):
            machines = [m for m in by_machine if m.split("/")[0] == t]
            vecs = {m: np.stack([st.component_vector(comp, ev) for ev in by_machine[m]]) for m in machines}
            fixed = {m: np.stack([st.component_vector(comp, ev) for ev in extra[m]]) for m in machines if comp in MODEL_FREE and extra[m]}
            full = {m: np.concatenate([vecs[m], fixed[m]]) if m in fixed else vecs[m] for m in machines}
            centres, precision = shared_gaussian(full)
            st.precisions[f"{comp}|{t}"] = precision
            for m in machines:
                st.centres[f"{comp}|{m}"] = centres[m]
            raw[comp].update(_loo_distances(vecs, {m: range(len(vecs[m])) for m in machines}, fixed))
    for comp, per_machine in raw.items():
        if comp in ("class", "embed"):  # not distances under a shared covariance: per id
            st.calibration.update({f"{comp}|{m}": calibration_of(v) for m, v in per_machine.items()})
        else:
            st.calibration.update({f"{comp}|{m}": cal for m, cal in pooled_calibration(per_machine).items()})
    finals = {m: [st.fuse(m, {c: raw[c][m][i] for c in components}) for i in range(len(evs))] for m, evs in by_machine.items()}
    st.thresholds = {m: prediction_threshold(np.array(v), false_alarm_rate) for m, v in finals.items()}
    return st, finals


def _fit_paper(task, class_map, types, held, false_alarm_rate):
    """The paper's per-type statistics; thresholds from a gamma fit (DCASE2021 baseline style)."""
    st = ScoringStats(task, class_map, types, false_alarm_rate=false_alarm_rate, scoring="paper")
    by_type: dict[str, list] = defaultdict(list)
    for machine, ev in held:
        by_type[machine.split("/")[0]].append((machine, ev.residual, ev.logits))
    if task != "classify":
        for t, items in by_type.items():
            if not uses_mse(t):
                types[t].recon_mean, types[t].recon_precision = shrunk_precision(np.stack([error_vector(r) for _, r, _ in items]))
    pairs = {t: [(m, *st.score_pair(m, r, lg)) for m, r, lg in items] for t, items in by_type.items()}
    if task == "multitask":
        for t, rows in pairs.items():
            types[t].final_mean, types[t].final_precision = shrunk_precision(np.array([[rec, cls] for _, rec, cls in rows]))
    finals: dict[str, list[float]] = defaultdict(list)
    for rows in pairs.values():
        for m, rec, cls in rows:
            finals[m].append(st.final_score(m, rec, cls))
    st.thresholds = {m: gamma_threshold(np.array(v), false_alarm_rate) for m, v in finals.items()}
    return st, dict(finals)
