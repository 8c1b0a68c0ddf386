"""Which faults can be heard: AUC per fault kind of the synthetic set, with each fault's level.

    .venv/bin/python benchmarks/fault_kinds.py [--seeds 0,1,2,3,4] [--out results/accuracy] [--model-free]

For every fault kind of every machine type: the AUC of each scoring row on that id's normal test
clips against its anomalous test clips of that one kind, mean +- standard error over the (seed,
id) units, beside the fault's level (what the fault changes in the machine's sound, in dB
relative to that sound; the synthetic manifest's ``fault_db``, or the same value re-rendered
for sets written before the column existed). It reuses ``benchmarks/accuracy.py``'s
synthesised sets and trained ``multitask`` models under ``--out`` (and makes them if missing),
and caches its own results per seed there (``faults-seed<N>.json``).

Under the table: the mean AUC over types that a detector would reach if it separated every fault
kind perfectly except those that no row detects (left at 0.5), and the mean AUC with the best row
for each fault kind (chosen with the anomalies: how far a better combination of these rows could go),
and how many anomalous clips of each kind carry a fault that changed nothing (below -60 dB).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import model_free_scorer, synthesise, variant_scorer  # noqa: E402  (the benchmark next to this one)

from mtad.edge_runtime.atomic import atomic_write  # noqa: E402
from mtad.edge_runtime.dataset import scan_dataset  # noqa: E402
from mtad.train.baseline import baseline_scores  # noqa: E402
from mtad.train.feature_cache import load_features  # noqa: E402
from mtad.train.synth import SynthConfig, render_with_levels  # noqa: E402
from mtad.train.synth_writer import MANIFEST  # noqa: E402

# (label, components of the fusion scoring, accuracy.py scoring variant); all from the `multitask`
# model of accuracy.py
ROWS = [
    ("default (recon + acoustic)", ("recon", "acoustic"), None),
    ("acoustic (no model)", ("acoustic",), None),
    ("spectral (no model)", ("spectral",), None),
    ("envelope (no model)", ("envelope",), None),
    ("recon (the model's score)", ("recon",), None),
]
# --model-free: nothing trained, so it runs in minutes; the statistic with and without its line
# strength (bundle schema 10) side by side
MODEL_FREE_ROWS = [
    ("acoustic (the default)", ("acoustic",), None),
    ("acoustic without line strength (schema 9)", ("acoustic",), "nolines"),
    ("spectral", ("spectral",), None),
    ("envelope", ("envelope",), None),
    ("envelope without line strength", ("envelope",), "nolines"),
]
# --model-free also prints, per fault kind, these rows' paired differences over the (seed, id) units
MODEL_FREE_PAIRS = [(MODEL_FREE_ROWS[0][0], MODEL_FREE_ROWS[1][0]), (MODEL_FREE_ROWS[3][0], MODEL_FREE_ROWS[4][0])]
BASELINE = "simple baseline"
CACHE_REVISION = 1
CHANCE = 0.6  # a fault kind no row lifts above this AUC counts as not detected
SILENT_DB = -60.0  # a fault this far below the machine's sound changed nothing: a normal clip labelled anomalous


def fault_aucs(machines, labels, kinds, scores) -> dict[str, dict[str, float]]:
    """``{machine: {fault kind: AUC of that machine's normals against its anomalies of that kind}}``;
    ``kinds`` holds each clip's fault kind ("" for normals)."""
    machines, labels, kinds, scores = (np.asarray(a) for a in (machines, labels, kinds, scores))
    out: dict[str, dict[str, float]] = {}
    for m in sorted(set(machines)):
        sel = machines == m
        normal = sel & (labels == 0)
        for kind in sorted(set(kinds[sel & (labels == 1)])):
            keep = normal | (sel & (kinds == kind))
            out.setdefault(str(m), {})[str(kind)] = float(roc_auc_score(labels[keep], scores[keep]))
    return out


def clip_faults(data: Path, index, seed: int, n_test: int, severity: float, snr: tuple[float, float]) -> dict[str, tuple[str, float | None]]:
    """``{clip path: (fault kind or "", fault_db or None)}`` from the synthetic manifest; a manifest
    written before ``fault_db`` existed gets it by re-rendering the clip (deterministic)."""
    rows = {str(data / r["path"]): r for r in csv.DictReader(open(data / MANIFEST))}
    cfg = SynthConfig(seed=seed, test=n_test, severity=severity, snr_db=snr)
    out = {}
    for c in index.select("test"):
        r = rows[str(c.path)]
        level = r.get("fault_db")
        if r["fault"] and not level:
            index_no = int(Path(r["path"]).stem.rsplit("_", 1)[1])
            level = render_with_levels(cfg, r["machine_type"], r["machine_id"], "test", r["fault"], index_no)[1]
        out[str(c.path)] = (r["fault"], float(level) if level not in (None, "") else None)
    return out


def evaluate_seed(out: Path, seed: int, n_test: int, severity: float, snr: tuple[float, float], preset: str, model_free: bool = False) -> dict:
    data = synthesise(out, seed, n_test, severity, snr)
    index = scan_dataset(data)
    faults = clip_faults(data, index, seed, n_test, severity, snr)
    result = {"levels": {}, "rows": {}}
    for path, (kind, level) in faults.items():
        if kind:
            mtype = Path(path).parent.parent.name
            result["levels"].setdefault(f"{mtype}/{kind}", []).append(level)
    base = baseline_scores(index)
    clips = [c for test, _ in base.values() for c in test]
    result["rows"][BASELINE] = fault_aucs([c.machine for c in clips], [c.label for c in clips], [faults[str(c.path)][0] for c in clips],
                                          np.concatenate([s for _, s in base.values()]))
    train_store = load_features(index.select("train", label=0), progress=False)
    test_store = load_features(index.select("test"), progress=False)
    if model_free:
        rows, score = MODEL_FREE_ROWS, model_free_scorer(train_store, test_store)
    else:
        rows, score = ROWS, variant_scorer(data, out / "runs", seed, "multitask", preset, None, train_store, test_store)
    for label, comps, version in rows:
        scores, _ = score("fusion", comps, version)
        result["rows"][label] = fault_aucs([s.machine for s in scores], [s.label for s in scores],
                                           [faults[s.path][0] for s in scores], [s.score for s in scores])
    return result


def summarise(per_seed: dict[int, dict], rows=ROWS) -> dict:
    """Per (type, fault kind): the fault level (median dB) and, per row, mean and SE over (seed, id) units."""
    labels = [label for label, *_ in rows] + [BASELINE]
    kinds = sorted({k for r in per_seed.values() for k in r["levels"]})
    table, silent = {}, {}
    for key in kinds:
        mtype, kind = key.split("/")
        levels = np.array([v for r in per_seed.values() for v in r["levels"][key]], dtype=float)
        row = {"level_db": float(np.median(levels))}
        if (levels < SILENT_DB).any():
            silent[key] = [int((levels < SILENT_DB).sum()), int(levels.size)]
        for label in labels:
            units = np.array([aucs[kind] for r in per_seed.values() for m, aucs in r["rows"][label].items()
                              if m.split("/")[0] == mtype and kind in aucs])
            row[label] = (float(units.mean()), float(units.std(ddof=1) / np.sqrt(units.size)) if units.size > 1 else float("nan"))
        table[key] = row
    undetected = [k for k, row in table.items() if max(row[label][0] for label in labels) < CHANCE]
    types = sorted({k.split("/")[0] for k in kinds})
    per_type = [np.mean([0.5 if k in undetected else 1.0 for k in kinds if k.split("/")[0] == t]) for t in types]
    best = [np.mean([max(table[k][label][0] for label in labels) for k in kinds if k.split("/")[0] == t]) for t in types]
    return {"seeds": sorted(per_seed), "labels": labels, "table": table, "undetected": undetected, "bound": float(np.mean(per_type)),
            "best_per_kind": float(np.mean(best)), "silent": silent}


def paired_differences(per_seed: dict[int, dict], a: str, b: str) -> dict[str, tuple[float, float]]:
    """``{"type/kind": (mean, SE)}`` of row ``a``'s AUC minus row ``b``'s over the (seed, id) units
    that have the kind: the two rows score the same clips, so the difference is paired."""
    diffs: dict[str, list[float]] = {}
    for r in per_seed.values():
        for m, aucs in r["rows"][a].items():
            for kind, auc in aucs.items():
                diffs.setdefault(f"{m.split('/')[0]}/{kind}", []).append(auc - r["rows"][b][m][kind])
    return {k: (float(np.mean(d)), float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")) for k, d in diffs.items()}


def render_differences(per_seed: dict[int, dict], pairs) -> str:
    lines = ["Paired differences per fault kind, mean +- SE over (seed, id) units; 'beyond 2 SE' where |mean| > 2 SE", "",
             "| type | fault | " + " | ".join(f"{a} minus {b}" for a, b in pairs) + " |", "|---" * (len(pairs) + 2) + "|"]
    tables = [paired_differences(per_seed, a, b) for a, b in pairs]
    for key in sorted(tables[0]):
        cells = [f"{t[key][0]:+.3f} +- {t[key][1]:.3f}" + (" (beyond 2 SE)" if abs(t[key][0]) > 2 * t[key][1] else "") for t in tables]
        lines.append("| " + " | ".join(key.split("/")) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(summary: dict) -> str:
    labels, table = summary["labels"], summary["table"]
    lines = [f"AUC per fault kind (normals against that kind's anomalies), mean +- SE over (seed, id) units, seeds {summary['seeds']}", ""]
    lines.append("| type | fault | level (dB vs machine) | " + " | ".join(labels) + " |")
    lines.append("|---" * (len(labels) + 3) + "|")
    for key, row in sorted(table.items(), key=lambda kv: (kv[0].split("/")[0], -kv[1]["level_db"])):
        mtype, kind = key.split("/")
        lines.append(f"| {mtype} | {kind} | {row['level_db']:.0f} | " + " | ".join(f"{row[l][0]:.3f} +- {row[l][1]:.3f}" for l in labels) + " |")
    lines.append("")
    lines.append(f"not detected by any row (every AUC < {CHANCE}): {', '.join(summary['undetected']) or 'none'}")
    lines.append(f"mean AUC over types if every other fault kind were separated perfectly and these stayed at 0.5: {summary['bound']:.3f}")
    lines.append(f"mean AUC over types with the best row for each fault kind (picked with the anomalies, so not a detector): "
                 f"{summary['best_per_kind']:.3f}")
    silent = ", ".join(f"{k} {n} of {total}" for k, (n, total) in summary["silent"].items()) or "none"
    lines.append(f"anomalous test clips whose fault changed nothing (fault_db < {SILENT_DB:.0f} dB, so normal clips labelled anomalous): {silent}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--test", type=int, default=50, help="normal and anomalous test clips per id (each), as accuracy.py")
    ap.add_argument("--severity", type=float, default=1.0)
    ap.add_argument("--snr", default="0,6")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--out", type=Path, default=Path("results/accuracy"))
    ap.add_argument("--name", help="output name under --out (default: fault-kinds, or fault-kinds-model-free)")
    ap.add_argument("--model-free", action="store_true", help="only the model-free rows (with and without line strength): trains nothing")
    args = ap.parse_args()
    rows = MODEL_FREE_ROWS if args.model_free else ROWS
    name = args.name or ("fault-kinds-model-free" if args.model_free else "fault-kinds")
    snr = tuple(float(v) for v in args.snr.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        cache = args.out / f"faults{'-model-free' if args.model_free else ''}-seed{seed}.json"
        cached = json.loads(cache.read_text()) if cache.exists() else {}
        if cached.get("revision") != CACHE_REVISION:
            cached = {"revision": CACHE_REVISION, **evaluate_seed(args.out, seed, args.test, args.severity, snr, args.preset, args.model_free)}
            with atomic_write(cache, "w") as f:
                f.write(json.dumps(cached))
        per_seed[seed] = cached
        print(f"seed {seed}: done", flush=True)
    summary = summarise(per_seed, rows)
    text = render(summary)
    if args.model_free:
        text += "\n\n" + render_differences(per_seed, MODEL_FREE_PAIRS)
    with atomic_write(args.out / f"{name}.md", "w") as f:
        f.write(text + "\n")
    with atomic_write(args.out / f"{name}.json", "w") as f:
        f.write(json.dumps(summary, indent=1))
    print(text)


if __name__ == "__main__":
    main()
