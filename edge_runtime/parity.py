"""Parity between a reference scorer and exported variants, by detection quality.

Tensor differences do not say whether the anomaly ranking changed; this compares, per
machine, AUC/pAUC, rank correlation of the scores and agreement of the decisions.
Numpy/scipy only, so the device can run it against reference scores shipped in the bundle.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 1.x on JetPack has only trapz

DEFAULT_BUDGETS = {"fp32": 0.001, "fp16": 0.005, "int8": 0.01}  # max |dAUC| per machine
MAX_FPR = 0.1


def parse_budgets(text: str | None) -> dict[str, float]:
    budgets = dict(DEFAULT_BUDGETS)
    if text:
        for part in text.split(","):
            key, _, value = part.partition("=")
            if key.strip() not in DEFAULT_BUDGETS or not value:
                raise ValueError(f"budget entries look like fp32=0.001,fp16=0.005,int8=0.01; got {part!r}")
            budgets[key.strip()] = float(value)
    return budgets


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


def compare(reference: list[Scored], variant: list[Scored], budget: float) -> dict:
    """Per-machine parity figures of ``variant`` against ``reference`` (matched by clip key)."""
    from scipy.stats import spearmanr

    ref = {r.key: r for r in reference}
    pairs = defaultdict(list)
    for v in variant:
        if v.key in ref:
            pairs[v.machine].append((ref[v.key], v))
    machines = {}
    for machine, items in sorted(pairs.items()):
        y = np.array([r.label for r, _ in items])
        rs = np.array([r.score for r, _ in items])
        vs = np.array([v.score for _, v in items])
        entry = {
            "n": len(items),
            "spearman": float(spearmanr(rs, vs).statistic) if len(items) > 2 and np.ptp(rs) > 0 and np.ptp(vs) > 0 else None,
            "max_abs_diff": float(np.abs(rs - vs).max()),
            "mean_abs_diff": float(np.abs(rs - vs).mean()),
            "decision_agreement": float(np.mean([(r.score > r.threshold) == (v.score > v.threshold) for r, v in items])),
        }
        if len(set(y.tolist())) == 2:
            a_ref, a_var = roc_auc(y, rs), roc_auc(y, vs)
            p_ref, p_var = roc_auc(y, rs, MAX_FPR), roc_auc(y, vs, MAX_FPR)
            entry.update(auc_ref=a_ref, auc=a_var, dauc=a_var - a_ref, pauc_ref=p_ref, pauc=p_var, dpauc=p_var - p_ref,
                         over_budget=bool(abs(a_var - a_ref) > budget))
        else:
            entry.update(auc_ref=None, auc=None, dauc=None, pauc_ref=None, pauc=None, dpauc=None, over_budget=False)
        machines[machine] = entry
    over = [m for m, e in machines.items() if e["over_budget"]]
    return {"budget": budget, "machines": machines, "over_budget": over,
            "max_abs_dauc": max((abs(e["dauc"]) for e in machines.values() if e["dauc"] is not None), default=None),
            "n_missing": len(reference) - sum(len(v) for v in pairs.values())}


def format_report(results: dict[str, dict]) -> str:
    lines = [f"{'variant':<22} {'machine':<20} {'AUC ref':>7} {'AUC':>7} {'dAUC':>8} {'dpAUC':>8} {'rho':>6} {'agree':>6}"]
    for variant, res in results.items():
        for machine, e in res["machines"].items():
            f = lambda v, w=7, p=3: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
            flag = "  OVER BUDGET" if e["over_budget"] else ""
            lines.append(f"{variant:<22} {machine:<20} {f(e['auc_ref'])} {f(e['auc'])} {f(e['dauc'], 8, 4)} {f(e['dpauc'], 8, 4)} "
                         f"{f(e['spearman'], 6)} {e['decision_agreement']:>6.1%}{flag}")
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
