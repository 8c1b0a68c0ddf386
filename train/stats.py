"""Fitting the scoring statistics and decision thresholds on normals the model never trained on."""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy import stats as sstats
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import FactorAnalysis
from sklearn.exceptions import ConvergenceWarning

from mtad.edge_runtime.errors import DatasetError
from mtad.edge_runtime.features import Normalization
from mtad.edge_runtime.scoring import (
    COVARIANCES,
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


FACTORS = 16  # the factor model's fewest shared directions (the default set's 120 deviations a type get this many)
ROWS_PER_FACTOR = 4  # fewer within-id deviations than FACTORS * this: Ledoit-Wolf instead
DEVIATIONS_PER_FACTOR = 8  # with more deviations, one factor per this many (at most a quarter of the dimensions)
MAX_FACTORS = 64
CROSS_FIT_FOLDS = 32  # more held-out clips in a type than this: cross-fitting in this many folds, not leave-one-out
# Smallest residual variance of the factor model, relative to the mean variance: a number that is
# constant over every training clip (a band the microphone never fills) would otherwise get a
# precision near 1e12. The smallest ratio on the synthetic sets is 1e-5 to 3e-5, so it does not bind there.
NOISE_FLOOR = 1e-6


@dataclass
class SharedGaussian:
    """Per-id centres and one precision shared by the ids of a type (their within-id scatter)."""

    centres: dict[str, np.ndarray]
    precision: np.ndarray
    noise_variance: np.ndarray | None = None  # the factor model's diagonal; starts refits without one row
    factors: int | None = None  # the factor model's shared directions; None for Ledoit-Wolf


def covariance_rule(n_rows: int, dim: int, covariance: str = "factor") -> str:
    """The rule a fit of ``n_rows`` within-id deviations in ``dim`` dimensions uses: ``factor``
    where asked and there are at least ``FACTORS * ROWS_PER_FACTOR`` rows and more than
    ``2 * FACTORS`` dimensions, else ``ledoit-wolf``."""
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
    enough = n_rows >= FACTORS * ROWS_PER_FACTOR and dim > 2 * FACTORS
    return "factor" if covariance == "factor" and enough else "ledoit-wolf"


def n_factors(n_rows: int, dim: int) -> int:
    """Shared directions of a factor model fitted on ``n_rows`` deviations in ``dim`` dimensions:
    ``FACTORS``, more as the clips allow (one per ``DEVIATIONS_PER_FACTOR`` deviations, at most
    ``dim // 4`` and ``MAX_FACTORS``). On a synthetic seed with 100 and 200 training clips per id
    it matched or beat a fixed 16 for every statistic (acoustic 0.785 against 0.779, 0.793
    against 0.783); the default set's 120 deviations a type get 16."""
    return max(FACTORS, min(n_rows // DEVIATIONS_PER_FACTOR, dim // 4, MAX_FACTORS))


def within_id_precision(deviations: np.ndarray, rule: str, warm: np.ndarray | None = None,
                        factors: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Precision of within-id deviations ``(n, d)`` by ``rule`` (see :func:`covariance_rule`), and
    the factor model's residual variances (None for Ledoit-Wolf).

    ``factor``: ``factors`` shared directions (default :func:`n_factors`) plus one residual
    variance per feature (``sklearn.decomposition.FactorAnalysis``); ``ledoit-wolf``: shrinkage
    toward a scaled identity. The clip statistics have a few strong shared directions (background level and
    colour move every band together) and many weak, mostly spurious correlations. A shrinkage
    treats them all alike: with 120 rows in 244 dimensions (schema 8) Ledoit-Wolf picks an intensity near
    0.02, which keeps the spurious correlations and leaves the directions the rows do not span
    with almost no variance, so noise there dominates the distance. The factor model keeps the
    strong directions whole and gives every feature its own residual variance. ``warm``: residual
    variances of a fit on nearly the same rows, to start from (held-out refits; their distances
    differ from cold refits' by 0.1 % on the default set, correlation 0.9999).
    """
    if deviations.shape[0] < 2:
        raise ValueError("need at least 2 clips to fit a covariance")
    if rule not in COVARIANCES:
        raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, got {rule!r}")
    if rule == "ledoit-wolf":
        return LedoitWolf(assume_centered=True).fit(deviations).precision_, None
    k = factors or n_factors(*deviations.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol 1e-2 on the log-likelihood; a few more iterations change nothing
        fa = FactorAnalysis(k, svd_method="lapack", noise_variance_init=warm).fit(deviations)
    floor = NOISE_FLOOR * max(float(deviations.var(axis=0).mean()), np.finfo(np.float64).tiny)
    fa.noise_variance_ = np.maximum(fa.noise_variance_, floor)
    return fa.get_precision(), fa.noise_variance_


def shared_gaussian(vectors: dict[str, np.ndarray], rule: str = "ledoit-wolf", warm: np.ndarray | None = None,
                    factors: int | None = None) -> SharedGaussian:
    """Per-id centres and one precision shared by the ids (:func:`within_id_precision` of the
    within-id scatter by ``rule``; ``factors`` as there). ``vectors`` maps machine -> rows
    ``(n_i, d)``; every id needs >= 1 row, all together >= 2.
    """
    centres = {m: v.mean(axis=0) for m, v in vectors.items()}
    deviations = np.concatenate([v - centres[m] for m, v in vectors.items()])
    if rule == "factor":
        factors = factors or n_factors(*deviations.shape)
    precision, noise = within_id_precision(deviations, rule, warm, factors)
    return SharedGaussian(centres, precision, noise, factors if rule == "factor" else None)


def gamma_threshold(scores: np.ndarray, false_alarm_rate: float) -> float:
    """Quantile ``1 - false_alarm_rate`` of a gamma distribution fitted to ``scores``."""
    scores = np.asarray(scores, np.float64)
    if scores.size < 3 or np.ptp(scores) == 0:
        return float(np.quantile(scores, 1 - false_alarm_rate)) if scores.size else float("inf")
    shape, loc, scale = sstats.gamma.fit(scores)
    return float(sstats.gamma.ppf(1 - false_alarm_rate, shape, loc=loc, scale=scale))


def heldout_distances(vectors: dict[str, np.ndarray], fixed: dict[str, np.ndarray], rule: str = "ledoit-wolf",
                      warm: np.ndarray | None = None, factors: int | None = None) -> dict[str, np.ndarray]:
    """Distance of each held row to a shared Gaussian fitted without it, so that it is the
    distance of an unseen normal: leave one out, or with more than ``CROSS_FIT_FOLDS`` held rows
    in the type, that many folds (each row scored by the fit without its fold): at DCASE size (900
    held clips of 3600 in a type) one factor refit per clip takes about 7 minutes a type, the 32
    folds 17 s.

    ``vectors[m]`` are the held rows of id m; ``fixed[m]`` extra rows always in the fit; ``rule``:
    the covariance rule of the full fit (:func:`covariance_rule`) and ``factors`` its number of
    factors, kept for every refit so that the held-out scores come from the estimator that scores
    new clips; ``warm``: the full fit's residual variances, where a factor model starts each refit.
    """
    thin = [m for m, v in vectors.items() if len(v) < 2 and not len(fixed.get(m, ()))]
    if thin:
        raise ValueError(f"{', '.join(thin)}: a held-out row needs another row of its id to fit a centre without it")
    rows = [(m, i) for m, v in vectors.items() for i in range(len(v))]
    folds = min(len(rows), CROSS_FIT_FOLDS)  # consecutive rows fall in different folds: no id loses all its rows at once
    out = {m: np.empty(len(v)) for m, v in vectors.items()}
    for f in range(folds):
        left_out = {m: [i for mm, i in rows[f::folds] if mm == m] for m in vectors}
        fit = {m: np.concatenate([np.delete(v, left_out[m], axis=0), fixed.get(m, v[:0])]) for m, v in vectors.items()}
        g = shared_gaussian(fit, rule, warm, factors)
        for m, idx in left_out.items():
            for i in idx:
                out[m][i] = mahalanobis(vectors[m][i], g.centres[m], g.precision)
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
    covariance: str = "factor",
) -> tuple[ScoringStats, dict[str, list[float]]]:
    """Fit statistics and thresholds from ``held``: ``(machine, evidence)`` of normals the model
    never trained on. ``extra_normals`` (``(machine, evidence)`` of the clips the model did train
    on, without model outputs) join the fit of the model-free components (``spectral``, ``envelope``,
    ``acoustic``) only; where every component is model-free they are scored out of sample like
    ``held`` and set the calibration and thresholds with them.

    ``covariance``: how the distance components' shared covariances are estimated
    (:func:`within_id_precision`). Returns the stats and each machine's held-out final scores,
    computed out of sample (:func:`heldout_distances`), which set the thresholds.
    """
    types = {t: TypeStats(norm=n) for t, n in norms.items()}
    if scoring == "paper":
        return _fit_paper(task, class_map, types, held, false_alarm_rate)
    allowed = task_components(task)
    bad = [c for c in components if c not in allowed]
    if bad or not components:
        raise DatasetError(f"score component(s) {', '.join(bad) or '(none)'} not available for a {task} model (choose from {', '.join(allowed)})")
    st = ScoringStats(task, class_map, types, false_alarm_rate=false_alarm_rate, scoring="fusion", components=tuple(components),
                      weights=tuple(component_weight(c) for c in components), covariance=covariance)
    by_machine: dict[str, list[ClipEvidence]] = defaultdict(list)
    for m, ev in held:
        by_machine[m].append(ev)
    if not st.needs_model:
        # No model output is scored, so the clips the model trained on are as unseen to these
        # statistics as the held-out ones: every training normal gets an out-of-sample score, and a
        # threshold from 40 such scores an id instead of 10 varies far less from id to id.
        for m, ev in extra_normals:
            if m in by_machine:
                by_machine[m].append(ev)
        extra_normals = ()
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
            rule = covariance_rule(sum(len(v) for v in full.values()), next(iter(full.values())).shape[1], covariance)
            g = shared_gaussian(full, rule)
            st.precisions[f"{comp}|{t}"] = g.precision
            for m in machines:
                st.centres[f"{comp}|{m}"] = g.centres[m]
            raw[comp].update(heldout_distances(vecs, fixed, rule, g.noise_variance, g.factors))
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
