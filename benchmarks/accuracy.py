"""Detection quality, measured: several seeds of the synthetic set, every scoring method, the
single-task ablations, an ArcFace-head variant and the simple baseline, as mean +- standard error.

    .venv/bin/python benchmarks/accuracy.py [--seeds 0,1,2] [--test 50] [--out results/accuracy]

Per seed it synthesises the default set (6 types x 3 ids, 40 training normals per id) with
``--test`` normal and anomalous test clips per id, scores the model-free rows (variant ``none``, the
default among them: nothing is trained), trains the ``--preset`` model for each other variant
(multitask, the ``recon``/``classify`` ablations, multitask with an ArcFace head, with pseudo-anomaly
classes, trained 40 epochs with early stopping, on whole 10 s clips, or holding out a quarter of the
training normals for the statistics instead of `small`'s half), then scores the test clips under each
scoring method from the *same* trained model (``--rows`` picks some of them). Statistics and thresholds come only from training
normals (held out from training where a model is involved); test clips are never fitted on.

``--data DIR`` scores a dataset in the DCASE 2020 layout instead (your own recordings, or a set
from another generator): nothing is synthesised, and each seed trains the models once more on the
same clips, so the standard errors cover training seeds and ids, not the choice of clips. A
``{seed}`` in DIR names one dataset per seed (``--data sets/seed{seed}``), which they do cover.

Standard errors: per type over the (seed, id) units; for the mean over types, over seeds.
"A beats B" is printed only where the paired difference exceeds 2 standard errors. The
false-alarm columns: the mean rate on the unseen test normals at the stored thresholds, and the
share of (seed, id) units whose own rate lies within ``FAR_TOLERANCE`` of the ``FAR_TARGET``
(issue #10's goal; with 50 test normals an id, binomial noise alone keeps about a quarter outside),
and beside it the share expected of per-id split-conformal thresholds from that many calibration
clips if every score were exchangeable (:func:`expected_far_within`): what a per-id threshold can
reach at all with those clips.
Everything is cached under --out, so a rerun only redoes what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from mtad.edge_runtime import scoring
from mtad.edge_runtime.atomic import atomic_write
from mtad.edge_runtime.constants import MAX_FPR
from mtad.edge_runtime.dataset import scan_dataset
from mtad.edge_runtime.envelope import lines_dim, tonality_dim
from mtad.edge_runtime.features import fit_normalization
from mtad.edge_runtime.scoring import DEFAULT_COMPONENTS, ClipEvidence
from mtad.train.baseline import baseline_aucs
from mtad.train.checkpoint import norms_from_checkpoint
from mtad.train.config import TrainConfig, load_config
from mtad.train.envelope_features import clip_envelope
from mtad.train.evaluate import load_run, score_outputs
from mtad.train.feature_cache import load_features
from mtad.train.stats import fit_scoring_stats
from mtad.train.synth import SynthConfig
from mtad.train.synth_writer import write_dataset
from mtad.train.trainer import compute_outputs, split_holdout, stats_inputs, train_run

# Trained models: variant -> (task, model config overrides[, train config overrides]); MODEL_FREE_VARIANT
# ("none") trains nothing: its rows are scored from the audio alone, on every training normal.
MODEL_FREE_VARIANT = "none"
VARIANTS = {
    MODEL_FREE_VARIANT: None,
    "multitask": ("multitask", {}),
    "recon": ("recon", {}),
    "classify": ("classify", {}),
    "arcface": ("multitask", {"head": "arcface"}),
    "pseudo": ("multitask", {}, {"pseudo_anomalies": 0.5}),
    "long": ("multitask", {}, {"epochs": 40, "early_stopping": 5}),  # 40 epochs, early stopping on the held-out normals' loss
    # the whole 10 s clip (313 frames) as one window, as many updates as `small`'s 4 x 2 s windows per clip
    "wholeclip": ("multitask", {"window": 313}),
    # the held-out fraction before `small` held out half: a quarter of each id's training normals
    "holdout25": ("multitask", {}, {"stats_holdout": 0.25}),
}
# (variant, label, scoring, components[, scoring variant]); the first row is the default.
# Scoring variants, joined by "+" where a row takes several: "v1" uses the previous spectral
# statistic (band mean and std only); "equal" weighs every fusion component 1 (the learned fusion
# weighs `acoustic` 2); "lw" estimates the shared covariances by Ledoit-Wolf (the rule before factor
# analysis); "fixedfloor" leaves out the frame-relative floor (scoring.SPECTRAL_TOP_DB, bundle
# schema 8); "absolute" keeps the band means' absolute level (with "fixedfloor": the statistic
# before bundle schema 7); "nolines" leaves out the envelope statistic's line strengths (bundle
# schema 10: envelope.lines_dim numbers at its end; the statistic of schema 9); "notonal" leaves out
# its band flatness as well (the tonality_dim numbers before them; the statistic of schema 8).
METHODS = [
    (MODEL_FREE_VARIANT, "default: component acoustic (spectral+envelope with band flatness and line strength, one Gaussian, level-free; "
     "no model)", "fusion", ("acoustic",)),
    (MODEL_FREE_VARIANT, "component acoustic without line strength (the default of schema 9)", "fusion", ("acoustic",), "nolines"),
    (MODEL_FREE_VARIANT, "component acoustic without band flatness or line strength (the default of schema 8)", "fusion", ("acoustic",),
     "notonal"),
    (MODEL_FREE_VARIANT, "component acoustic, fixed floor, no band flatness (the default of schema 7)", "fusion", ("acoustic",),
     "fixedfloor+notonal"),
    (MODEL_FREE_VARIANT, "component acoustic, absolute level, fixed floor, no band flatness (before schema 7)", "fusion", ("acoustic",),
     "absolute+fixedfloor+notonal"),
    (MODEL_FREE_VARIANT, "component spectral", "fusion", ("spectral",)),
    (MODEL_FREE_VARIANT, "component envelope (with band flatness and line strength)", "fusion", ("envelope",)),
    (MODEL_FREE_VARIANT, "component envelope without line strength", "fusion", ("envelope",), "nolines"),
    (MODEL_FREE_VARIANT, "component envelope without band flatness or line strength", "fusion", ("envelope",), "notonal"),
    (MODEL_FREE_VARIANT, "component acoustic, Ledoit-Wolf covariance", "fusion", ("acoustic",), "lw"),
    (MODEL_FREE_VARIANT, "fusion spectral+envelope (two scores; no model)", "fusion", ("spectral", "envelope")),
    (MODEL_FREE_VARIANT, "component spectral v1 (mean/std only)", "fusion", ("spectral",), "v1"),
    ("multitask", "learned fusion recon+acoustic (weights 1:2; the default before schema 7)", "fusion", ("recon", "acoustic")),
    ("multitask", "paper: 2-D Mahalanobis", "paper", ()),
    ("multitask", "component recon (per-id)", "fusion", ("recon",)),
    ("multitask", "fusion recon+acoustic, equal weights", "fusion", ("recon", "acoustic"), "equal"),
    ("multitask", "fusion recon+acoustic, Ledoit-Wolf covariance", "fusion", ("recon", "acoustic"), "lw"),
    ("multitask", "fusion recon+spectral+envelope (default before acoustic)", "fusion", ("recon", "spectral", "envelope")),
    ("multitask", "fusion recon+spectral (default before envelope)", "fusion", ("recon", "spectral")),
    ("multitask", "fusion recon+spectral v1 (default before spectral v2)", "fusion", ("recon", "spectral"), "v1"),
    ("multitask", "component class", "fusion", ("class",)),
    ("multitask", "component embed", "fusion", ("embed",)),
    ("multitask", "fusion recon+class+spectral", "fusion", ("recon", "class", "spectral")),
    ("recon", "--task recon, fusion recon+spectral", "fusion", ("recon", "spectral")),
    ("classify", "--task classify, fusion class+spectral", "fusion", ("class", "spectral")),
    ("arcface", "arcface head: component embed", "fusion", ("embed",)),
    ("pseudo", "pseudo-anomaly classes: component class", "fusion", ("class",)),
    ("pseudo", "pseudo-anomaly classes: component embed", "fusion", ("embed",)),
    ("pseudo", "pseudo-anomaly classes: fusion recon+spectral", "fusion", ("recon", "spectral")),
    ("pseudo", "pseudo-anomaly classes: fusion recon+class+spectral", "fusion", ("recon", "class", "spectral")),
    ("long", "40 epochs + early stopping: fusion recon+spectral", "fusion", ("recon", "spectral")),
    ("long", "40 epochs + early stopping: component recon", "fusion", ("recon",)),
    ("long", "40 epochs + early stopping: component embed", "fusion", ("embed",)),
    ("long", "40 epochs + early stopping: fusion recon+class+spectral", "fusion", ("recon", "class", "spectral")),
    ("multitask", "fusion recon+embed+acoustic", "fusion", ("recon", "embed", "acoustic")),
    ("arcface", "arcface head: fusion recon+embed+acoustic", "fusion", ("recon", "embed", "acoustic")),
    ("pseudo", "pseudo-anomaly classes: learned fusion recon+acoustic", "fusion", ("recon", "acoustic")),
    ("pseudo", "pseudo-anomaly classes: fusion recon+class+acoustic", "fusion", ("recon", "class", "acoustic")),
    ("pseudo", "pseudo-anomaly classes: fusion recon+embed+acoustic", "fusion", ("recon", "embed", "acoustic")),
    ("wholeclip", "whole-clip windows: learned fusion recon+acoustic", "fusion", ("recon", "acoustic")),
    ("wholeclip", "whole-clip windows: component recon", "fusion", ("recon",)),
    ("wholeclip", "whole-clip windows: component class", "fusion", ("class",)),
    ("wholeclip", "whole-clip windows: component embed", "fusion", ("embed",)),
    ("holdout25", "learned fusion, --stats-holdout 0.25", "fusion", ("recon", "acoustic")),
    ("holdout25", "component recon, --stats-holdout 0.25", "fusion", ("recon",)),
]
BASELINE = "simple baseline (log-mel mean/std)"
FAR_TARGET = TrainConfig.false_alarm_rate  # the thresholds' target false-alarm rate (the presets' default)
FAR_TOLERANCE = 0.05  # a unit's rate counts as on target within this distance of FAR_TARGET
# Bump when a change alters how rows score (2: calibration std pooled per type; 3: factor-analysis
# covariances for the model-free statistics; 4: thresholds of model-free rows from every training
# normal, out of sample); a seed's cached rows of another revision are then
# recomputed, except the baseline and single scores of the model's components, which neither
# change touched (a per-id AUC does not depend on per-id standardisation); 5: band means relative
# to the clip's level, the model-free default first; 6: band flatness in the envelope statistic
# (bundle schema 9; every row with `envelope` or `acoustic` changes); 7: line strength in the
# envelope statistic (bundle schema 10; the same rows change).
CACHE_REVISION = 7
# Rows renamed since a seed's results were cached: new label -> label in older caches.
RENAMED = {
    "learned fusion recon+acoustic (weights 1:2; the default before schema 7)": "default: fusion recon+acoustic (weights 1:2)",
    "fusion recon+spectral+envelope (default before acoustic)": "fusion recon+spectral+envelope (previous default)",
    "fusion recon+spectral (default before envelope)": "fusion recon+spectral (previous default)",
}


def spectral_v1(logmel: np.ndarray) -> np.ndarray:
    """The spectral statistic before v2: band mean and std of the log-mel, nothing temporal."""
    x = logmel.astype(np.float64)
    return np.concatenate([scoring.band_mean(x.mean(axis=1), scoring.SPECTRAL_BAND), scoring.band_mean(x.std(axis=1), scoring.SPECTRAL_BAND)])


SCORING_VARIANTS = ("v1", "equal", "lw", "absolute", "fixedfloor", "nolines", "notonal")


def without_envelope_tail(component_vector, n: int):
    """``ScoringStats.component_vector`` with the last ``n`` numbers of the envelope statistic cut
    (``lines_dim()``: the statistic of bundle schema 9; ``+ tonality_dim()``: of schema 8)."""
    def cut(self, component, ev):
        v = component_vector(self, component, ev)
        return v[:-n] if component in ("envelope", "acoustic") else v
    return cut


@contextmanager
def scoring_variant(version: str | None):
    """Inside the block, score with the ``+``-joined scoring variants of ``version`` (see
    METHODS; the fit and the scorer both read them)."""
    saved = (scoring.spectral_vector, dict(scoring.COMPONENT_WEIGHTS), scoring.RELATIVE_LEVEL, scoring.SPECTRAL_TOP_DB,
             scoring.ScoringStats.component_vector)
    parts = set(version.split("+")) if version else set()
    unknown = parts - set(SCORING_VARIANTS)
    if unknown:
        raise ValueError(f"unknown scoring variant(s): {', '.join(sorted(unknown))}")
    if "v1" in parts:
        scoring.spectral_vector = spectral_v1
    if "equal" in parts:
        scoring.COMPONENT_WEIGHTS.clear()
    if "absolute" in parts:
        scoring.RELATIVE_LEVEL = False
    if "fixedfloor" in parts:
        scoring.SPECTRAL_TOP_DB = None
    if "notonal" in parts:
        scoring.ScoringStats.component_vector = without_envelope_tail(saved[4], lines_dim() + tonality_dim())
    elif "nolines" in parts:
        scoring.ScoringStats.component_vector = without_envelope_tail(saved[4], lines_dim())
    try:
        yield
    finally:
        scoring.spectral_vector, scoring.RELATIVE_LEVEL, scoring.SPECTRAL_TOP_DB = saved[0], saved[2], saved[3]
        scoring.ScoringStats.component_vector = saved[4]
        scoring.COMPONENT_WEIGHTS.clear()
        scoring.COMPONENT_WEIGHTS.update(saved[1])


def uses_ledoit_wolf(version: str | None) -> bool:
    return bool(version) and "lw" in version.split("+")


def synthesise(out: Path, seed: int, n_test: int, severity: float = 1.0, snr_db: tuple[float, float] = (0.0, 6.0)) -> Path:
    data = out / f"data-seed{seed}"
    if not (data / "synth_manifest.csv").exists():
        write_dataset(SynthConfig(seed=seed, test=n_test, severity=severity, snr_db=snr_db), data, progress=False)
    return data


def selected_methods(variants: list[str], rows: list[str]) -> list[tuple]:
    """The METHODS rows of ``variants`` whose label contains one of ``rows`` (all where empty); the
    default's row always, since every row is compared with it."""
    return [m for m in METHODS if m[0] in variants and (m is METHODS[0] or not rows or any(r in m[1] for r in rows))]


def evaluate_seed(data: Path, runs: Path, seed: int, variants: list[str], preset: str, epochs: int | None, done: dict,
                  methods: list[tuple] = METHODS) -> dict:
    """``{method: {machine: (auc, pauc, far)}}`` for one seed (the ``methods`` rows of ``variants``);
    methods already in ``done`` are kept."""
    index = scan_dataset(data)
    results: dict[str, dict] = dict(done)
    if BASELINE not in results:
        results[BASELINE] = {f"{t}/{i}": (a, p, None) for (t, i), (a, p) in baseline_aucs(index).items()}
    train_store = load_features(index.select("train", label=0), progress=False)
    test_store = load_features(index.select("test"), progress=False)
    for variant in variants:
        pending = [m for m in methods if m[0] == variant and m[1] not in results]
        if not pending:
            continue
        score = (model_free_scorer(train_store, test_store) if variant == MODEL_FREE_VARIANT
                 else variant_scorer(data, runs, seed, variant, preset, epochs, train_store, test_store))
        for _, label, method, comps, *version in pending:
            results[label] = per_machine(*score(method, comps, version[0] if version else None))
    return results


def fit_model_free(held: list, method: str = "fusion", comps: tuple[str, ...] = DEFAULT_COMPONENTS, version: str | None = None):
    """Fit a model-free score on ``held`` (``(machine, evidence)`` of every training normal, each
    scored out of sample, as ``mtad-train`` does for a model-free score): ``(stats, {machine: n
    calibration scores})``. ``version`` selects a :func:`scoring_variant`; the returned stats must be
    used inside the same variant."""
    types = sorted({m.split("/")[0] for m, _ in held})
    # TypeStats requires a log-mel normalisation; a model-free score never reads it.
    norms = {t: fit_normalization([ev.logmel for m, ev in held if m.split("/")[0] == t]) for t in types}
    covariance = "ledoit-wolf" if uses_ledoit_wolf(version) else TrainConfig.covariance
    stats, finals = fit_scoring_stats("multitask", sorted({m for m, _ in held}), norms, held, FAR_TARGET, method, comps, (), covariance)
    return stats, {m: len(v) for m, v in finals.items()}


def model_free_scorer(train_store, test_store):
    """``score(method, components, scoring_version)`` like :func:`variant_scorer` for the
    model-free rows: nothing is trained (:func:`fit_model_free`)."""

    def evidence(store):
        return [(c.machine, ClipEvidence(None, None, np.asarray(store.get(i)), envelope=clip_envelope(c.path))) for i, c in enumerate(store.clips)]

    held, test = evidence(train_store), evidence(test_store)

    def score(method: str, comps: tuple[str, ...], version: str | None):
        with scoring_variant(version):
            stats, counts = fit_model_free(held, method, comps, version)
            return score_outputs(stats, test_store.clips, test), counts

    return score


def variant_scorer(data: Path, runs: Path, seed: int, variant: str, preset: str, epochs: int | None, train_store, test_store):
    """Train ``variant``'s model on ``data`` (or load it from ``runs``) and return
    ``score(method, components, scoring_version) -> ([ClipScore], {machine: n calibration scores})``
    for the test clips (no counts for the paper's gamma-fit thresholds); every call refits the
    statistics on the run's held-out training normals only."""
    task, model_overrides, *train_overrides = VARIANTS[variant]
    run_dir = runs / f"seed{seed}-{variant}"
    if not (run_dir / "stats.npz").exists():
        cfg = load_config(preset, **{"epochs": epochs, "task": task, "seed": seed, **(train_overrides[0] if train_overrides else {})})
        cfg = replace(cfg, model=replace(cfg.model, **model_overrides))
        train_run(data, run_dir, cfg, progress=False, log=lambda m: None)
    run = load_run(run_dir, require_stats=False)  # the statistics are refitted per method below
    tcfg = run.ckpt["config"]["train"]
    norms = norms_from_checkpoint(run.ckpt)
    runner = run.runner()
    train_idx, held_idx = split_holdout(train_store, tcfg["stats_holdout"], tcfg["seed"])
    held, extra = stats_inputs(runner, train_store, train_idx, held_idx, norms, run.model_cfg)
    test = compute_outputs(runner, test_store, list(range(len(test_store))), norms, run.model_cfg)

    def score(method: str, comps: tuple[str, ...], version: str | None):
        covariance = "ledoit-wolf" if uses_ledoit_wolf(version) else TrainConfig.covariance
        with scoring_variant(version):
            stats, finals = fit_scoring_stats(task, run.ckpt["class_map"], norms, held, TrainConfig.false_alarm_rate, method, comps,
                                              extra, covariance)
            n_calibration = {} if method == "paper" else {m: len(v) for m, v in finals.items()}
            return score_outputs(stats, test_store.clips, test), n_calibration

    return score


def per_machine(scores, n_calibration: dict[str, int] | None = None) -> dict:
    """``{machine: (auc, pauc, false-alarm rate, expected share within)}``; the last is
    :func:`expected_far_within` of the machine's calibration and normal test clips (None without
    a count in ``n_calibration``)."""
    by = defaultdict(list)
    for s in scores:
        by[s.machine].append(s)
    out = {}
    for m, rows in by.items():
        y = np.array([r.label for r in rows])
        s = np.array([r.score for r in rows])
        alarms = [r.anomaly for r in rows if r.label == 0]
        n_cal = (n_calibration or {}).get(m)
        expected = expected_far_within(n_cal, len(alarms)) if n_cal else None
        out[m] = (float(roc_auc_score(y, s)), float(roc_auc_score(y, s, max_fpr=MAX_FPR)), float(np.mean(alarms)), expected)
    return out


def expected_far_within(n_calibration: int, n_test: int, far: float = FAR_TARGET, tol: float = FAR_TOLERANCE) -> float | None:
    """Chance that an id's false-alarm rate on ``n_test`` unseen normals lies within ``tol`` of
    ``far`` when its threshold is the split-conformal rank ``k`` among ``n_calibration``
    out-of-sample normal scores (``scoring.conformal_rank``) and all the scores are exchangeable;
    None where that rank does not exist. The share of new normals above such a threshold is then
    Beta(n + 1 - k, k) distributed whatever the scores' distribution, so the number of false
    alarms among the test normals is beta-binomial (``scoring.false_alarm_count``). With 50 test
    normals it is 0.36 for 10 calibration clips, 0.48 for 20, 0.58 for 40 and at most 0.77 (a
    threshold known exactly)."""
    count = scoring.false_alarm_count(n_calibration, n_test, far)
    if count is None:
        return None
    lo, hi = math.ceil((far - tol) * n_test - 1e-9), math.floor((far + tol) * n_test + 1e-9)
    return float(count.cdf(hi) - count.cdf(lo - 1))


def summarise(per_seed: dict[int, dict]) -> dict:
    """Per method and type: mean, SE over (seed, id) units; overall: mean and SE over seeds."""
    methods = list(next(iter(per_seed.values())))
    machines = sorted(next(iter(per_seed.values()))[BASELINE])
    types = sorted({m.split("/")[0] for m in machines})
    table = {}
    for method in methods:
        row = {}
        for t in types:
            units = [per_seed[s][method][m] for s in per_seed for m in machines if m.startswith(t + "/")]
            auc = np.array([u[0] for u in units])
            base = np.array([per_seed[s][BASELINE][m][0] for s in per_seed for m in machines if m.startswith(t + "/")])
            row[t] = {"auc": auc.mean(), "se": auc.std(ddof=1) / np.sqrt(auc.size) if auc.size > 1 else float("nan"),
                      "pauc": float(np.mean([u[1] for u in units])), "diff": (auc - base).mean(),
                      "diff_se": (auc - base).std(ddof=1) / np.sqrt(auc.size) if auc.size > 1 else float("nan")}
            fars = [u[2] for u in units if u[2] is not None]
            row[t]["far"] = float(np.mean(fars)) if fars else None
        seed_means, base_means, default_means = (np.array([np.mean([np.mean([per_seed[s][meth][m][0] for m in machines if m.startswith(t + "/")])
                                                                    for t in types]) for s in per_seed])
                                                  for meth in (method, BASELINE, METHODS[0][1]))
        units = np.array([per_seed[s][method][m][0] - per_seed[s][METHODS[0][1]][m][0] for s in per_seed for m in machines])
        base_units = np.array([per_seed[s][method][m][0] - per_seed[s][BASELINE][m][0] for s in per_seed for m in machines])
        n = len(seed_means)
        fars = [per_seed[s][method][m][2] for s in per_seed for m in machines if per_seed[s][method][m][2] is not None]
        # cached before the expected share was recorded: 3 numbers a unit
        expected = [u[3] for u in (per_seed[s][method][m] for s in per_seed for m in machines) if len(u) > 3 and u[3] is not None]
        row["mean"] = {"auc": seed_means.mean(), "se": seed_means.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan"),
                       "pauc": float(np.mean([row[t]["pauc"] for t in types])),
                       "diff": (seed_means - base_means).mean(),
                       "diff_se": (seed_means - base_means).std(ddof=1) / np.sqrt(n) if n > 1 else float("nan"),
                       "diff_units_se": base_units.std(ddof=1) / np.sqrt(base_units.size) if base_units.size > 1 else float("nan"),
                       "vs_default": (seed_means - default_means).mean(),
                       "vs_default_se": (seed_means - default_means).std(ddof=1) / np.sqrt(n) if n > 1 else float("nan"),
                       "vs_default_units_se": units.std(ddof=1) / np.sqrt(units.size) if units.size > 1 else float("nan"),
                       "far": float(np.mean(fars)) if fars else None, **far_spread(fars),
                       "far_within_expected": float(np.mean(expected)) if expected and len(expected) == len(fars) else None}
        table[method] = row
    return {"types": types, "methods": methods, "table": table, "seeds": sorted(per_seed)}


def far_spread(fars: list[float]) -> dict:
    """How the (seed, id) units' false-alarm rates spread around ``FAR_TARGET``: the share within
    ``FAR_TOLERANCE`` of it, the mean distance from it, the SD and the worst (highest) rate."""
    if not fars:
        return {"far_within": None, "far_distance": None, "far_sd": None, "far_worst": None}
    f = np.asarray(fars, np.float64)
    off = np.abs(f - FAR_TARGET)  # + 1e-9 below: a rate exactly on the edge counts as within, whatever the rounding
    return {"far_within": float(np.mean(off <= FAR_TOLERANCE + 1e-9)), "far_distance": float(off.mean()),
            "far_sd": float(f.std(ddof=1)) if f.size > 1 else float("nan"), "far_worst": float(f.max())}


def paired(diff: float, seeds_se: float, units_se: float) -> str:
    """A paired difference with its verdict; the SE is the larger of the one over seeds and the
    one over (seed, id) units (the only one there is with a single seed)."""
    se = max(seeds_se, units_se) if np.isfinite(seeds_se) else units_se
    sign = "better" if diff > 2 * se else "worse" if diff < -2 * se else "tie (within 2 SE)"
    return f"{diff:+.3f} +- {se:.3f}: {sign}"


def render(summary: dict) -> str:
    types, table = summary["types"], summary["table"]
    lines = [f"AUC mean +- standard error over seeds {summary['seeds']} (per type: over seed x id units)", ""]
    lines.append("| method | " + " | ".join(types) + f" | **mean** | vs baseline | vs default | false-alarm rate (target {FAR_TARGET:g}) "
                 f"| units within +-{FAR_TOLERANCE:g} | expected if exchangeable |")
    lines.append("|---" * (len(types) + 7) + "|")
    for method, row in table.items():
        cells = [f"{row[t]['auc']:.3f} +- {row[t]['se']:.3f}" for t in types]
        m = row["mean"]
        verdict = "" if method == BASELINE else paired(m["diff"], m["diff_se"], m["diff_units_se"])
        vs_default = "" if method == METHODS[0][1] else paired(m["vs_default"], m["vs_default_se"], m["vs_default_units_se"])
        far = f"{m['far']:.3f}" if m["far"] is not None else "-"
        within = f"{100 * m['far_within']:.0f} %" if m["far_within"] is not None else "-"
        expected = f"{100 * m['far_within_expected']:.0f} %" if m.get("far_within_expected") is not None else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | **{m['auc']:.3f} +- {m['se']:.3f}** | {verdict} | {vs_default} | {far} | {within} "
                     f"| {expected} |")
    default = table[METHODS[0][1]]
    behind = [t for t in types if default[t]["diff"] < -default[t]["diff_se"]]
    lines.append("")
    lines.append("default vs baseline per type (paired over seed x id): " + ", ".join(
        f"{t} {default[t]['diff']:+.3f} +- {default[t]['diff_se']:.3f}" for t in types))
    lines.append(f"types more than 1 SE below the baseline under the default: {', '.join(behind) or 'none'}")
    m = default["mean"]
    if m["far_within"] is not None:
        lines.append(f"false-alarm rate per (seed, id) unit under the default: within +-{FAR_TOLERANCE:g} of {FAR_TARGET:g} for "
                     f"{100 * m['far_within']:.0f} %, mean distance {m['far_distance']:.3f}, SD {m['far_sd']:.3f}, worst {m['far_worst']:.2f}"
                     + (f" (expected of per-id thresholds from its calibration clips if the scores were exchangeable: "
                        f"{100 * m['far_within_expected']:.0f} %)" if m.get("far_within_expected") is not None else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--test", type=int, default=50, help="normal and anomalous test clips per id (each)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"trained models, from {', '.join(VARIANTS)}")
    ap.add_argument("--severity", type=float, default=1.0, help="fault strength of the synthesised set (use another --out for each)")
    ap.add_argument("--snr", default="0,6", help="machine-to-background SNR range in dB, 'lo,hi' (use another --out for each)")
    ap.add_argument("--data", help="score this dataset (DCASE 2020 layout) instead of synthesising one per seed; the seeds are "
                    "then training seeds, or pick a dataset each where the path holds {seed} (use another --out for each)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--out", type=Path, default=Path("results/accuracy"))
    ap.add_argument("--rows", default="", help="score only the rows whose label contains one of these comma-separated "
                    "substrings (and the default's row), e.g. 'component acoustic,paper'")
    ap.add_argument("--name", default="accuracy", help="file name of the table and summary under --out (e.g. a confirmation run on other seeds)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    if METHODS[0][0] not in variants:
        ap.error(f"--variants must include {METHODS[0][0]} (the default's rows, which every row is compared with)")
    seed_data = {seed: Path(args.data.replace("{seed}", str(seed))) for seed in seeds} if args.data else {}
    missing = [str(p) for p in seed_data.values() if not p.is_dir()]
    if missing:
        ap.error(f"--data: no such directory: {', '.join(missing)}")
    methods = selected_methods(variants, [r for r in args.rows.split(",") if r])
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    for seed in seeds:
        cache = args.out / f"seed{seed}.json"
        cached = json.loads(cache.read_text()) if cache.exists() else {}
        revision = cached.pop("revision", 1)
        done = {k: {m: tuple(v) for m, v in d.items()} for k, d in cached.items()}
        done.update({new: done[old] for new, old in RENAMED.items() if new not in done and old in done})
        if revision != CACHE_REVISION:
            single = {m[1] for m in METHODS if m[2] == "paper" or (len(m[3]) == 1 and m[3][0] not in scoring.MODEL_FREE)}
            done = {k: v for k, v in done.items() if k == BASELINE or k in single}
        wanted = [m[1] for m in methods]
        if all(label in done for label in wanted) and BASELINE in done:
            per_seed[seed] = {k: done[k] for k in [BASELINE] + wanted}
        else:
            data = seed_data.get(seed) or synthesise(args.out, seed, args.test, args.severity, tuple(float(v) for v in args.snr.split(",")))
            per_seed[seed] = evaluate_seed(data, args.out / "runs", seed, variants, args.preset, args.epochs, done, methods)
            with atomic_write(cache, "w") as f:  # a killed run must not leave a cut-off cache
                f.write(json.dumps({"revision": CACHE_REVISION, **per_seed[seed]}))
            per_seed[seed] = {k: per_seed[seed][k] for k in [BASELINE] + wanted}
        print(f"seed {seed}: " + ", ".join(f"{k[:24]} {np.mean([v[0] for v in d.values()]):.3f}" for k, d in per_seed[seed].items()), flush=True)
    summary = summarise(per_seed)
    text = render(summary)
    with atomic_write(args.out / f"{args.name}.md", "w") as f:
        f.write(text + "\n")
    with atomic_write(args.out / f"{args.name}.json", "w") as f:
        f.write(json.dumps(summary, indent=1, default=float))
    print(text)


if __name__ == "__main__":
    main()
