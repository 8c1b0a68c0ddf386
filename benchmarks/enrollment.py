"""On-device enrollment, measured: train without one id per type, enroll that id on the
device from minutes of its normal sound, and compare with a model trained on every id.

    .venv/bin/python benchmarks/enrollment.py [--seeds 0,1,2] [--out results/enrollment]

Per seed (the default synthetic set with 50 + 50 test clips per id; it reuses
``results/accuracy/data-seedN`` and the all-ids run ``results/accuracy/runs/seedN-multitask``
when benchmarks/accuracy.py made them):
1. train the ``small`` model on every id but the last of each type (6 ids held out);
2. export both models to FP32 bundles;
3. enroll each held-out id from 1, 2, 3, 5 and 10 minutes of its normal sound (10 s clips:
   the 40 training clips, plus 20 more normal clips rendered by the same generator). The
   enrollment is fitted with the library (``fit_enrollment``), so the levels below the CLI's
   minimum are measured too;
4. score the held-out ids' test clips with the torch-free runtime under both bundles.

Reports AUC and the false-alarm rate at the threshold, mean +- standard error over (seed, id).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.enroll import MIN_ENROLL_CLIPS, _evidence, fit_enrollment
from mtad.edge_runtime.features import LogMelExtractor
from mtad.edge_runtime.pipeline import EdgeScorer
from mtad.export.bundle_writer import export_bundle
from mtad.train.config import load_config
from mtad.train.synth import MACHINE_IDS, SynthConfig, render_clip
from mtad.train.synth_writer import write_dataset
from mtad.train.trainer import train_run

MINUTES = (1, 2, 3, 5, 10)
CLIP_SECONDS = 10.0


def held_out_ids(types) -> list[str]:
    return [f"{t}/{MACHINE_IDS[t][2]}" for t in types]  # the default set has 3 ids per type


def without(data: Path, out: Path, held: list[str]) -> Path:
    """A data root of symlinks to every clip except the held-out ids'."""
    if out.exists():
        return out
    for wav in data.rglob("*.wav"):
        rel = wav.relative_to(data)
        if any(rel.parts[0] == m.split("/")[0] and f"_{m.split('/')[1]}_" in wav.name for m in held):
            continue
        (out / rel.parent).mkdir(parents=True, exist_ok=True)
        os.symlink(wav.resolve(), out / rel)
    return out


def enrollment_audio(data: Path, cfg: SynthConfig, machine: str, n: int) -> list[np.ndarray]:
    """``n`` normal 10 s clips of ``machine``: its training clips, then more from the generator."""
    t, i = machine.split("/")
    clips = [load_audio(p) for p in sorted((data / t / "train").glob(f"normal_{i}_*.wav"))][:n]
    index = len(clips)
    while len(clips) < n:
        clips.append(render_clip(cfg, t, i, "train", None, index))  # indices past the set's own clips
        index += 1
    return clips


def test_scores(bundle, machine: str, data: Path) -> tuple[np.ndarray, np.ndarray]:
    t, i = machine.split("/")
    files = sorted((data / t / "test").glob(f"*_{i}_*.wav"))
    scorer = EdgeScorer(bundle, bundle.onnx_runner("fp32"))
    scores = np.array([scorer.score_file(f, machine).score for f in files])
    return np.array([f.name.startswith("anomaly") for f in files], int), scores


def run_seed(seed: int, out: Path, accuracy_dir: Path, n_test: int) -> dict:
    cfg = SynthConfig(seed=seed, test=n_test)
    data = accuracy_dir / f"data-seed{seed}"
    if not (data / "synth_manifest.csv").exists():
        data = out / f"data-seed{seed}"
        if not (data / "synth_manifest.csv").exists():
            write_dataset(cfg, data, progress=False)
    held = held_out_ids(cfg.types)
    runs = {"all": accuracy_dir / "runs" / f"seed{seed}-multitask", "without": out / f"run-seed{seed}-without"}
    if not (runs["all"] / "stats.npz").exists():
        runs["all"] = out / f"run-seed{seed}-all"
        if not (runs["all"] / "stats.npz").exists():
            train_run(data, runs["all"], load_config("small", seed=seed), progress=False, log=lambda m: None)
    if not (runs["without"] / "stats.npz").exists():
        train_run(without(data, out / f"data-seed{seed}-without", held), runs["without"], load_config("small", seed=seed), progress=False, log=lambda m: None)
    bundles = {}
    for name, run in runs.items():
        path = out / f"bundle-seed{seed}-{name}"
        if not (path / "manifest.yaml").exists():
            export_bundle(run, path, progress=False, log=lambda m: None)
        bundles[name] = load_bundle(path)
    extract = LogMelExtractor()
    b = bundles["without"]
    base = b.stats  # as exported: no enrolled ids
    rows = {}
    for machine in held:
        y, s = test_scores(bundles["all"], machine, data)
        entry = {"trained": {"auc": roc_auc_score(y, s), "far": float(np.mean(s[y == 0] > bundles["all"].stats.threshold(machine)))}}
        audio = enrollment_audio(data, cfg, machine, int(max(MINUTES) * 60 / CLIP_SECONDS))
        evidence = [_evidence(b, b.onnx_runner("fp32"), extract, machine.split("/")[0], a) for a in audio]
        for minutes in MINUTES:
            n = int(minutes * 60 / CLIP_SECONDS)
            enrolled = fit_enrollment(base, machine, evidence[:n])
            b.stats = enrolled
            y, s = test_scores(b, machine, data)
            entry[f"{minutes} min"] = {"auc": roc_auc_score(y, s), "far": float(np.mean(s[y == 0] > enrolled.threshold(machine))), "clips": n}
        b.stats = base
        rows[machine] = entry
        print(f"seed {seed} {machine}: trained {entry['trained']['auc']:.3f}; enrolled " +
              ", ".join(f"{m} min {entry[f'{m} min']['auc']:.3f}" for m in MINUTES), flush=True)
    rows["_min_clips"] = MIN_ENROLL_CLIPS
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--test", type=int, default=50)
    ap.add_argument("--accuracy-dir", type=Path, default=Path("results/accuracy"))
    ap.add_argument("--out", type=Path, default=Path("results/enrollment"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        cache = args.out / f"seed{seed}.json"
        if cache.exists():
            per_seed[seed] = json.loads(cache.read_text())
        else:
            per_seed[seed] = run_seed(seed, args.out, args.accuracy_dir, args.test)
            cache.write_text(json.dumps(per_seed[seed], default=float))
    min_n = next(iter(per_seed.values()))["_min_clips"]
    units = [e for rows in per_seed.values() for m, e in rows.items() if not m.startswith("_")]
    lines = [f"held-out ids enrolled on the device vs trained with the model; mean +- SE over {len(units)} (seed, id) units", "",
             "| model | enrollment audio | clips | AUC | AUC - trained (paired) | false-alarm rate (target 0.1) |", "|---|---|---|---|---|---|"]

    def cell(key):
        auc = np.array([u[key]["auc"] for u in units])
        far = np.array([u[key]["far"] for u in units])
        diff = auc - np.array([u["trained"]["auc"] for u in units])
        se = lambda v: v.std(ddof=1) / np.sqrt(v.size)  # noqa: E731
        return f"{auc.mean():.3f} ± {se(auc):.3f}", f"{diff.mean():+.3f} ± {se(diff):.3f}", f"{far.mean():.3f} ± {se(far):.3f}"

    a, _, f = cell("trained")
    lines.append(f"| trained on all ids | (40 training clips, 30 for training, 10 for statistics) | | {a} | | {f} |")
    for minutes in MINUTES:
        n = int(minutes * 60 / CLIP_SECONDS)
        a, d, f = cell(f"{minutes} min")
        note = "" if n >= min_n else f" (below the CLI's minimum of {min_n} clips)"
        lines.append(f"| trained without the id, enrolled | {minutes} min{note} | {n} | {a} | {d} | {f} |")
    text = "\n".join(lines)
    (args.out / "enrollment.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
