"""Parity between a reference scorer and exported variants, by detection quality.

Tensor differences do not say whether the anomaly ranking changed; this compares, per
machine, AUC/pAUC, rank correlation of the scores and agreement of the decisions.
Numpy/scipy only, so the device can run it against reference scores shipped in the bundle.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .constants import MAX_FPR

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 1.x on JetPack has only trapz



def roc_auc(y: np.ndarray, s: np.ndarray, max_fpr: float | None = None) -> float:
    """ROC AUC, and McClish-standardised partial AUC for ``max_fpr``.

    Same definition as ``sklearn.metrics.roc_auc_score`` (tests check equality); here so the
    device can run parity without scikit-learn. Evaluation itself calls sklearn.
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (1 + distinct) - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    if max_fpr is None or max_fpr == 1:
        return float(_trapezoid(tpr, fpr))
    stop = np.searchsorted(fpr, max_fpr, "right")
    x_interp = [fpr[stop - 1], fpr[stop]]
    y_interp = [tpr[stop - 1], tpr[stop]]
    tpr_c = np.append(tpr[:stop], np.interp(max_fpr, x_interp, y_interp))
    fpr_c = np.append(fpr[:stop], max_fpr)
    partial = _trapezoid(tpr_c, fpr_c)
    min_area = 0.5 * max_fpr**2
    return float(0.5 * (1 + (partial - min_area) / (max_fpr - min_area)))


@dataclass
class Scored:
    key: str  # clip identity (path)
    machine: str
    label: int
    score: float
    threshold: float
    components: dict | None = None  # raw component scores (name -> value), where the scorer reports them


# Score-level budgets per precision: Spearman rho of variant vs reference scores (at least) and
# the worst relative score error (at most), per machine: |variant - reference| over the spread
# (std) of the machine's reference scores. Not over |reference|: fused scores are z-scores, and a
# clip scoring near 0 would make any tiny difference look huge.
DEFAULT_SCORE_BUDGETS = {
    "fp32": {"min_spearman": 0.999, "max_rel_error": 0.01},
    "fp16": {"min_spearman": 0.99, "max_rel_error": 0.05},
    "int8": {"min_spearman": 0.95, "max_rel_error": 0.25},
}
N_BOOTSTRAP = 1000
# A machine with fewer reference clips than this measures relative score error against the
# within-machine spread pooled over every machine compared: the std of two or three scores is
# noise, and a near tie between them would make any drift look huge.
MIN_SPREAD_CLIPS = 10
CI_LEVEL = 0.95
# An AUC is a count of ordered pairs over n_pos * n_neg, so two AUCs differ by whole pairs; in
# floats one pair on 10 + 10 clips comes out as 0.010000000000000009 or 0.009999999999999898
# depending on the two AUCs. Budgets are compared with this slack so that one swapped pair is
# within a one-pair budget whichever way the rounding falls.
AUC_SLACK = 1e-9


def auc_by_ranks(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``scores`` (..., n) for labels ``y`` (n,), by the Mann-Whitney rank
    sum (ties count half, as :func:`roc_auc`)."""
    from scipy.stats import rankdata

    y = np.asarray(y).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    ranks = rankdata(scores, axis=-1)
    return (ranks[..., y].sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def dauc_interval(y: np.ndarray, ref: np.ndarray, var: np.ndarray, n_boot: int = N_BOOTSTRAP, level: float = CI_LEVEL,
                  seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of AUC(var) - AUC(ref): clips resampled with replacement
    within each class (paired: the same clips for both), seeded."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    idx = np.concatenate([rng.choice(pos, (n_boot, pos.size)), rng.choice(neg, (n_boot, neg.size))], axis=1)
    yb = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    d = auc_by_ranks(yb, np.asarray(var, np.float64)[idx]) - auc_by_ranks(yb, np.asarray(ref, np.float64)[idx])
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def size_adjusted_budget(budget: float, n_pos: int, n_neg: int) -> float:
    """A dAUC budget no tighter than one swapped (anomaly, normal) pair, 1 / (n_pos * n_neg):
    on a small set a finer budget only says "no pair flipped"."""
    return max(budget, 1.0 / (n_pos * n_neg))


def compare(reference: list[Scored], variant: list[Scored], budget: float, score_budget: dict | None = None,
            size_adjusted: bool = False, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Per-machine parity figures of ``variant`` against ``reference`` (matched by clip key).

    Per machine: AUC/pAUC and their drift, a seeded paired-bootstrap interval of dAUC, Spearman
    rho, the worst relative score error, and decision agreement at the thresholds. A machine is
    ``over_budget`` when |dAUC| exceeds ``budget`` (with ``size_adjusted``, never tighter than one
    swapped pair), and ``score_over_budget`` when rho or the relative error miss ``score_budget``.

    Where both sides carry component scores, ``max_rel_error`` is also taken over each component
    the model computes (``recon``, ``class``, ``embed``), relative to that component's own spread:
    in a fused score the model-free components, identical on both sides, would otherwise dilute a
    broken engine's drift by their weight (``max_component_rel_error`` says how far they went).
    """
    from scipy.stats import spearmanr

    ref = {r.key: r for r in reference}
    pairs = defaultdict(list)
    for v in variant:
        if v.key in ref:
            pairs[v.machine].append((ref[v.key], v))
    pooled = pooled_spreads(pairs.values())
    machines = {}
    for machine, items in sorted(pairs.items()):
        y = np.array([r.label for r, _ in items])
        rs = np.array([r.score for r, _ in items], np.float64)
        vs = np.array([v.score for _, v in items], np.float64)
        agree = np.array([(r.score > r.threshold) == (v.score > v.threshold) for r, v in items])
        rel = np.abs(vs - rs) / max(_spread(rs, pooled.get(None)), 1e-12)
        component_rel = model_component_drift(items, pooled)
        rho = float(spearmanr(rs, vs).statistic) if len(items) > 2 and np.ptp(rs) > 0 and np.ptp(vs) > 0 else None
        entry = {
            "n": len(items),
            "n_anomalous": int(y.sum()),
            "spearman": rho,
            "max_rel_error": max(float(rel.max()), component_rel if component_rel is not None else 0.0),
            "max_component_rel_error": component_rel,
            "max_abs_diff": float(np.abs(rs - vs).max()),
            "mean_abs_diff": float(np.abs(rs - vs).mean()),
            "decision_agreement": float(agree.mean()),
            "decision_flips": int((~agree).sum()),
        }
        if len(set(y.tolist())) == 2:
            a_ref, a_var = roc_auc(y, rs), roc_auc(y, vs)
            p_ref, p_var = roc_auc(y, rs, MAX_FPR), roc_auc(y, vs, MAX_FPR)
            lo, hi = dauc_interval(y, rs, vs, n_boot, seed=seed)
            eff = size_adjusted_budget(budget, int(y.sum()), int((1 - y).sum())) if size_adjusted else budget
            entry.update(auc_ref=a_ref, auc=a_var, dauc=a_var - a_ref, dauc_ci=[lo, hi], pauc_ref=p_ref, pauc=p_var,
                         dpauc=p_var - p_ref, budget=eff, over_budget=bool(abs(a_var - a_ref) > eff + AUC_SLACK))
        else:
            entry.update(auc_ref=None, auc=None, dauc=None, dauc_ci=None, pauc_ref=None, pauc=None, dpauc=None, budget=budget,
                         over_budget=False)
        if score_budget:
            entry["score_over_budget"] = bool(entry["max_rel_error"] > score_budget["max_rel_error"]
                                              or (rho is not None and rho < score_budget["min_spearman"]))
        else:
            entry["score_over_budget"] = False
        machines[machine] = entry
    over = [m for m, e in machines.items() if e["over_budget"]]
    return {"budget": budget, "score_budget": score_budget, "size_adjusted": size_adjusted,
            "ci": {"level": CI_LEVEL, "n_bootstrap": n_boot, "seed": seed, "method": "paired percentile bootstrap, stratified by label"},
            "machines": machines, "over_budget": over,
            "score_over_budget": [m for m, e in machines.items() if e["score_over_budget"]],
            "max_abs_dauc": max((abs(e["dauc"]) for e in machines.values() if e["dauc"] is not None), default=None),
            "min_spearman": min((e["spearman"] for e in machines.values() if e["spearman"] is not None), default=None),
            "max_rel_error": max((e["max_rel_error"] for e in machines.values()), default=None),
            "decision_agreement": (float(np.mean([e["decision_agreement"] for e in machines.values()])) if machines else None),
            "n_missing": len(reference) - sum(len(v) for v in pairs.values())}


def _reference_values(items: list[tuple[Scored, Scored]], name: str | None) -> np.ndarray:
    """The reference side's fused score (``name`` None) or component ``name`` of each pair."""
    return np.array([r.score if name is None else (r.components or {}).get(name, np.nan) for r, _ in items], np.float64)


def _spread(values: np.ndarray, pooled: float | None) -> float:
    """The scale of a relative score error: ``values``' own std, or the pooled within-machine
    spread where they are fewer than ``MIN_SPREAD_CLIPS`` (and a pooled one exists)."""
    return float(values.std()) if len(values) >= MIN_SPREAD_CLIPS or pooled is None else pooled


def pooled_spreads(groups) -> dict:
    """``{None: fused score, component: ...}``: the reference scores' standard deviation around
    their own machine's mean, pooled over the machines (groups of (reference, variant) pairs)."""
    groups = [g for g in groups if g]
    names = {None} | {k for g in groups for r, _ in g for k in (r.components or {})}
    out = {}
    for name in names:
        deviations = []
        for g in groups:
            x = _reference_values(g, name)
            x = x[np.isfinite(x)]
            if len(x):
                deviations.append(x - x.mean())
        if deviations:
            out[name] = float(np.sqrt(np.mean(np.concatenate(deviations) ** 2)))
    return out


def model_component_drift(items: list[tuple[Scored, Scored]], pooled: dict | None = None) -> float | None:
    """The worst ``|variant - reference| / std(reference)`` over the (reference, variant) pairs of
    one machine and every model component both report; None when neither reports one. With fewer
    than ``MIN_SPREAD_CLIPS`` pairs the std is ``pooled[component]`` (:func:`pooled_spreads`)."""
    from .scoring import MODEL_FREE

    names = set.intersection(*[set(r.components or {}) & set(v.components or {}) for r, v in items]) if items else set()
    worst = None
    for name in sorted(names - set(MODEL_FREE)):
        ref = _reference_values(items, name)
        var = np.array([v.components[name] for _, v in items], np.float64)
        ok = np.isfinite(ref) & np.isfinite(var)
        if ok.sum() < 2:
            continue
        drift = float(np.max(np.abs(var[ok] - ref[ok])) / max(_spread(ref[ok], (pooled or {}).get(name)), 1e-12))
        worst = drift if worst is None else max(worst, drift)
    return worst


def format_report(results: dict[str, dict]) -> str:
    """One row per variant and machine: AUC drift with its interval, score-level figures, decisions."""
    lines = [f"{'variant':<22} {'machine':<20} {'n':>5} {'AUC ref':>7} {'AUC':>7} {'dAUC':>8} {'95% CI':>17} {'budget':>7} "
             f"{'dpAUC':>8} {'rho':>6} {'max rel':>8} {'agree':>6}"]
    f = lambda v, w=7, p=3: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
    for variant, res in results.items():
        for machine, e in res["machines"].items():
            flags = ("  OVER BUDGET" if e["over_budget"] else "") + ("  SCORE DRIFT" if e.get("score_over_budget") else "")
            ci = f"[{e['dauc_ci'][0]:+.3f}, {e['dauc_ci'][1]:+.3f}]" if e.get("dauc_ci") else "-"
            n = f"{e['n'] - e.get('n_anomalous', 0)}+{e.get('n_anomalous', 0)}"
            lines.append(f"{variant:<22} {machine:<20} {n:>5} {f(e['auc_ref'])} {f(e['auc'])} {f(e['dauc'], 8, 4)} {ci:>17} "
                         f"{f(e.get('budget'), 7, 4)} {f(e['dpauc'], 8, 4)} {f(e['spearman'], 6)} {f(e.get('max_rel_error'), 8, 4)} "
                         f"{e['decision_agreement']:>6.1%}{flags}")
    return "\n".join(lines)


def scatter_plot(reference: list[Scored], variants: dict[str, list[Scored]], path) -> bool:
    """Variant vs reference scores, one panel per variant; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ref = {r.key: r.score for r in reference}
    fig, axes = plt.subplots(1, len(variants), figsize=(3.6 * len(variants), 3.5), squeeze=False)
    for ax, (name, scored) in zip(axes[0], variants.items()):
        x = np.array([ref[s.key] for s in scored if s.key in ref])
        y = np.array([s.score for s in scored if s.key in ref])
        labels = np.array([s.label for s in scored if s.key in ref])
        ax.scatter(x[labels == 0], y[labels == 0], s=8, alpha=0.6, label="normal")
        ax.scatter(x[labels == 1], y[labels == 1], s=8, alpha=0.6, label="anomaly")
        lim = [min(x.min(), y.min()), max(x.max(), y.max())]
        ax.plot(lim, lim, "k:", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("reference score")
    axes[0][0].set_ylabel("variant score")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
