"""QA parity: the PyTorch reference vs every variant of a bundle, by AUC drift per machine.

Variants are scored through the edge runtime's own path (audio -> front end -> bundle
normalisation -> runner -> bundle statistics), so a wrong normalisation or corrupted
scale inside a bundle shows up here even when its tensors look plausible.

A report is only made on clips the export did not see: test clips that the manifest's
``data_sets`` put in the calibration or accuracy-control set are refused (by file content).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtad.edge_runtime.bundle import Bundle, load_bundle
from mtad.edge_runtime.dataset import scan_dataset
from mtad.edge_runtime.errors import AudioError, BundleError, DatasetError
from mtad.edge_runtime.parity import DEFAULT_SCORE_BUDGETS, Scored, compare
from mtad.edge_runtime.pipeline import EdgeScorer
from mtad.edge_runtime.runners import NoModelRunner

from .data_sets import clip_digests, clip_set, describe, refuse_overlap
from .reference_set import load_reference_set


def bundle_runners(bundle: Bundle, log=print) -> dict:
    """Every variant of the bundle with a runner, and the reasons for those that cannot run here.
    A model-free bundle (no variants) has one scorer: ``model-free``."""
    if not bundle.stats.needs_model:
        log("parity: the bundle's scores are model-free: one scorer, no model variants to compare")
        return {"runners": {NoModelRunner.name: NoModelRunner()}, "skipped": {}}
    runners, skipped = {}, {}
    for name, v in bundle.variants.items():
        try:
            if v.kind == "onnx":
                runners[f"onnxruntime-{v.precision}"] = bundle.onnx_runner(v.precision, "CPUExecutionProvider")
            else:
                from mtad.edge_runtime.tensorrt_runner import TensorRTRunner

                runners[f"tensorrt-{v.precision}"] = TensorRTRunner(bundle.root / v.file, v.precision, bundle.manifest["variants"][name].get("engine_key"))
        except Exception as exc:
            skipped[f"{v.kind}-{v.precision}"] = str(exc)
    for precision in ("fp16", "int8", "fp32"):
        path, key = bundle.engine(precision)
        if path is not None and f"tensorrt-{precision}" not in runners:
            try:
                from mtad.edge_runtime.tensorrt_runner import TensorRTRunner

                runners[f"tensorrt-{precision}"] = TensorRTRunner(path, precision, key)
            except Exception as exc:
                skipped[f"tensorrt-{precision}"] = str(exc)
    if not any(n.startswith("tensorrt") for n in list(runners) + list(skipped)):
        try:
            from mtad.edge_runtime.tensorrt_runner import require_tensorrt

            require_tensorrt()
            skipped["tensorrt"] = "bundle has no TensorRT engines (build them with mtad-edge build-engine or mtad-export --engine)"
        except Exception as exc:
            skipped["tensorrt"] = str(exc)
    for name, why in skipped.items():
        log(f"parity: {name} skipped: {why}")
    return {"runners": runners, "skipped": skipped}


def budget_precision(runner) -> str:
    """The precision whose budgets judge ``runner``: its own, or FP32's (the tightest) for the
    model-free scorer, which computes the same float64 statistics as the reference."""
    return "fp32" if runner.precision == NoModelRunner.precision else runner.precision


def _score_files(scorer: EdgeScorer, clips) -> list[Scored]:
    out = []
    for c in clips:
        try:
            r = scorer.score_file(c.path, c.machine)
        except AudioError:
            continue  # the reference excludes it too
        out.append(Scored(str(c.path), c.machine, c.label, r.score, r.threshold, r.components))
    return out


def _summary(record: dict | None) -> dict | None:
    return None if record is None else {k: v for k, v in record.items() if k != "clip_digests"}


def report_sets(bundle: Bundle, what: str, digests: list[str], report: dict) -> dict:
    """The sets behind a parity report: refuses (:class:`OverlapError`, one line) when the report
    clips (``digests``: sha256 of each file) overlap the calibration or accuracy-control set the
    bundle's manifest records; else their sizes, for the report and its JSON."""
    recorded = bundle.manifest.get("data_sets")
    refuse_overlap(what, digests, recorded)
    return {"recorded": recorded is not None, "calibration": _summary((recorded or {}).get("calibration")),
            "accuracy_control": _summary((recorded or {}).get("accuracy_control")), "report": report}


def sets_line(sets: dict) -> str:
    """One line with the sizes of the sets a parity report used."""
    report = describe(sets["report"]) + (f" from {sets['report']['source']}" if sets["report"].get("source") else "")
    if not sets["recorded"]:
        return (f"sets: report on {report}; the bundle records no calibration or accuracy-control set (exported before mtad "
                f"recorded them), so overlap with them is not checked")
    return (f"sets: calibration {describe(sets['calibration'])}; accuracy control {describe(sets['accuracy_control'])}; "
            f"report {report}; no clip shared (by file content)")


def full_parity(run_dir: Path, bundle_dir: Path, data: Path, budgets: dict[str, float], progress: bool = True, log=print,
                on_sets=None):
    """PyTorch (run statistics) vs each bundle variant on DATA's test clips; ids enrolled on a
    device are scored with the bundle's statistics for them.

    Refuses, before scoring, test clips that the bundle's manifest records in its calibration or
    accuracy-control set; ``on_sets(sets)`` (default: ``log`` a line) gets the sizes used."""
    from tqdm import tqdm

    from mtad.train.evaluate import load_run, score_split

    run = load_run(run_dir)
    bundle = load_bundle(bundle_dir)
    if bundle.class_map != run.stats.class_map:
        raise BundleError(f"{bundle_dir} was not exported from {run_dir} (machines differ)")
    enrolled = [m for m in bundle.stats.enrolled if m not in run.stats.class_map]
    if enrolled:  # ids enrolled on a device: the run has no statistics for them, the bundle does
        from dataclasses import replace

        ours = lambda table: {k: v for k, v in table.items() if k.split("|")[-1] in enrolled}  # noqa: E731
        run.stats = replace(run.stats, centres={**run.stats.centres, **ours(bundle.stats.centres)},
                            calibration={**run.stats.calibration, **ours(bundle.stats.calibration)},
                            thresholds={**run.stats.thresholds, **{m: bundle.stats.thresholds[m] for m in enrolled}}, enrolled=enrolled)
    index = scan_dataset(data)
    machines = set(run.stats.machines)
    tested = [c for c in index.select("test") if c.machine in machines]
    if not tested:
        raise DatasetError(f"{data}: no test clips of the machines this run was trained on ({', '.join(sorted(machines))})")
    digests = clip_digests(c.path for c in tested)
    sets = report_sets(bundle, f"{data}'s test clips", digests,
                       _summary(clip_set("test_clips", digests, [c.label for c in tested], source=f"{Path(data).name} (test split)")))
    (on_sets or (lambda x: log(sets_line(x))))(sets)
    reference, failed = score_split(run, index, progress=progress)
    clips = [c for c in index.select("test") if c.machine in set(bundle.stats.machines) and str(c.path) not in failed]
    found = bundle_runners(bundle, log)
    results, scored = {}, {}
    for name, runner in found["runners"].items():
        scorer = EdgeScorer(bundle, runner)
        scored[name] = _score_files(scorer, tqdm(clips, desc=f"parity {name}", unit="clip", disable=None if progress else True))
        precision = budget_precision(runner)
        results[name] = compare(reference, scored[name], budgets[precision], DEFAULT_SCORE_BUDGETS[precision])
    return results, found["skipped"], reference, scored


def device_parity(bundle_dir: Path, budgets: dict[str, float], log=print, on_sets=None):
    """On the device: each runnable variant vs the PyTorch scores recorded at export time,
    on the reference clips shipped in the bundle (edge runtime only, no torch). The manifest's
    report set must not overlap its calibration or accuracy-control set; ``on_sets`` as in
    :func:`full_parity`."""
    bundle = load_bundle(bundle_dir)
    rec = bundle.manifest.get("reference")
    if not rec:
        raise BundleError(f"{bundle_dir}: bundle has no reference set (export with --calib-data pointing at labelled test clips)")
    recorded = (bundle.manifest.get("data_sets") or {}).get("report")
    if recorded:
        sets = report_sets(bundle, "the bundle's reference set", list(recorded["clip_digests"]), _summary(recorded))
    else:
        labels = [int(v) for v in rec.get("labels") or []]
        sets = report_sets(bundle, "the bundle's reference set", [], {"kind": "reference_test_clips", "n_clips": rec.get("n_clips"),
                           **({"n_normal": labels.count(0), "n_anomalous": labels.count(1)} if labels else {})})
    (on_sets or (lambda x: log(sets_line(x))))(sets)
    ref = load_reference_set(bundle.root)
    keys = [str(k) for k in ref["keys"]]
    clips = list(zip(keys, [str(m) for m in ref["machines"]], [int(v) for v in ref["labels"]], ref["audio"]))
    model_free = not bundle.stats.needs_model
    recorded_ref = rec["scores"][NoModelRunner.name if model_free else "pytorch"]
    reference = [Scored(k, m, lab, float(s), bundle.stats.threshold(m)) for (k, m, lab, _), s in zip(clips, recorded_ref)]
    enrolled = bundle.manifest.get("reference_enrolled")
    if enrolled:  # ids enrolled on the device: normal clips, scored when they were enrolled by the FP32 ONNX model (model-free: its one scorer)
        with np.load(bundle.root / enrolled["file"], allow_pickle=False) as z:
            audio = [a[:n] for a, n in zip(z["audio"], enrolled["lengths"])]
        scored_by = NoModelRunner.name if model_free else next(name for name, v in bundle.variants.items() if v.kind == "onnx" and v.precision == "fp32")
        for k, m, a, s in zip(enrolled["keys"], enrolled["machines"], audio, enrolled["scores"][scored_by]):
            clips.append((k, m, 0, a))
            reference.append(Scored(k, m, 0, float(s), bundle.stats.threshold(m)))
    found = bundle_runners(bundle, log)
    results, scored = {}, {}
    for name, runner in found["runners"].items():
        scorer = EdgeScorer(bundle, runner)
        scored[name] = [Scored(k, m, lab, scorer.score_audio(a.astype(np.float32) / 32768.0, m).score, bundle.stats.threshold(m))
                        for k, m, lab, a in clips]
        # a few clips per machine: the dAUC budget is never tighter than one swapped pair
        precision = budget_precision(runner)
        results[name] = compare(reference, scored[name], budgets[precision], DEFAULT_SCORE_BUDGETS[precision], size_adjusted=True)
    return results, found["skipped"], reference, scored
