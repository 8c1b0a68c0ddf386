"""``mtad-export``'s library side: write a self-describing, hash-checked edge bundle."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import yaml

from mtad.calibration.calibration_set import CalibrationSet, build_calibration_set, calibration_roles, save_calibration_set
from mtad.edge_runtime import __version__
from mtad.edge_runtime.atomic import replace_dir, sweep_stale
from mtad.edge_runtime.bundle import FORMAT, MANIFEST, SCHEMA_VERSION, STATS, load_bundle
from mtad.edge_runtime.hashing import sha256_file
from mtad.edge_runtime.errors import ConfigError
from mtad.edge_runtime.features import FeatureConfig
from mtad.edge_runtime.parity import DEFAULT_SCORE_BUDGETS
from mtad.edge_runtime.runners import NoModelRunner, OnnxRuntimeRunner, has_qdq
from mtad.train.checkpoint import CHECKPOINT, model_from_checkpoint, norms_from_checkpoint
from mtad.train.evaluate import load_run, score_split
from mtad.train.reference import TorchRunner

from .onnx_export import INPUT, OPSET, OUTPUTS, convert_fp16, export_fp32
from .quantize import DEFAULT_INT8_FLOOR, quantize_int8, require_int8_floor


def compare_outputs(runner, reference: TorchRunner, windows: np.ndarray) -> dict:
    """Max/mean absolute error per output and argmax agreement of the logits vs PyTorch."""
    p, lg = runner.infer(windows)[:2]
    rp, rlg = reference.infer(windows)[:2]
    return {
        "prediction": {"max_abs": float(np.abs(p - rp).max()), "mean_abs": float(np.abs(p - rp).mean())},
        "logits": {"max_abs": float(np.abs(lg - rlg).max()), "mean_abs": float(np.abs(lg - rlg).mean())},
        "argmax_agreement": float((lg.argmax(1) == rlg.argmax(1)).mean()),
        "n_windows": int(len(windows)),
    }


def scoring_summary(run) -> dict:
    """How the bundle's scores and thresholds were made (method, components, held-out clips)."""
    import json

    from mtad.train.trainer import SPLIT

    split_path = run.run_dir / SPLIT
    held = json.loads(split_path.read_text()) if split_path.exists() else None
    return {
        "method": run.stats.scoring,
        "components": list(run.stats.components),
        "weights": [float(w) for w in run.stats.fusion_weights],
        "covariance": run.stats.covariance or None,
        "false_alarm_rate": float(run.stats.false_alarm_rate),
        "stats_holdout": None if held is None else held["stats_holdout"],
        "heldout_clips_per_machine": None if held is None else {m: len(v) for m, v in held["held_out"].items()},
        # model-free scores (no model output) are out of sample on every training normal, so all of them set the thresholds
        "thresholds_from": "held_out_normals" if run.stats.needs_model else "all_training_normals",
    }


def record_reference_scores(bundle, reference: TorchRunner | NoModelRunner, ref: dict) -> dict:
    """Scores of the shipped reference clips by PyTorch and by each ONNX variant, at export time
    (a model-free bundle: by its one scorer, ``model-free``)."""
    from mtad.edge_runtime.pipeline import EdgeScorer

    from .reference_set import REFERENCE_FILE

    runners = {NoModelRunner.name if isinstance(reference, NoModelRunner) else "pytorch": reference}
    runners.update({name: bundle.onnx_runner(v.precision, "CPUExecutionProvider") for name, v in bundle.variants.items() if v.kind == "onnx"})
    scores = {}
    for name, runner in runners.items():
        scorer = EdgeScorer(bundle, runner)
        scores[name] = [float(scorer.score_audio(a.astype(np.float32) / 32768.0, str(m)).score) for a, m in zip(ref["audio"], ref["machines"])]
    per_machine = {str(m): [int(((ref["machines"] == m) & (ref["labels"] == lab)).sum()) for lab in (0, 1)] for m in np.unique(ref["machines"])}
    return {"file": REFERENCE_FILE, "n_clips": int(len(ref["keys"])), "seconds": float(ref["audio"].shape[1] / 16000),
            "bytes": int((bundle.root / REFERENCE_FILE).stat().st_size), "normal_anomalous_per_machine": per_machine,
            "keys": [str(k) for k in ref["keys"]], "labels": [int(v) for v in ref["labels"]], "scores": scores}


def _root_name(path) -> str:
    """A data root's folder name for the manifest: a build machine's path means nothing on the device."""
    return Path(path).resolve().name or str(path)


def score_clips(run, clips: list, runner=None) -> list:
    """Scores (ClipScores: key, machine, label, score, threshold, as parity.compare reads them) of
    ``clips``, all of one split, by PyTorch or ``runner`` under the run's statistics. Unreadable
    clips are left out, for the reference and the variant alike."""
    from mtad.edge_runtime.dataset import DatasetIndex

    splits = {c.split for c in clips}
    if len(splits) != 1:
        raise ValueError(f"score_clips takes clips of one split, got {sorted(splits)}")
    index = DatasetIndex(root=Path(clips[0].path).parent, clips=list(clips), skipped={})
    return score_split(run, index, runner=runner, split=splits.pop(), progress=False)[0]


def find_validation(val_data, calib_data, machines: list[str]) -> tuple[list, str] | None:
    """Labelled validation clips of the run's machines: ``val_data``'s ``val`` split (or, when it
    has none, its ``test`` split: a labelled folder in the DCASE layout set aside for validation),
    else ``calib_data``'s ``val`` split; None when there are none (the score-drift fallback)."""
    from mtad.edge_runtime.dataset import scan_dataset
    from mtad.edge_runtime.errors import DatasetError

    known = set(machines)
    if val_data is not None:
        index = scan_dataset(val_data)
        for split in ("val", "test"):
            clips = [c for c in index.select(split) if c.machine in known]
            if clips:
                break
        if len({c.label for c in clips}) < 2:
            raise ConfigError(f"--val-data {val_data}: no labelled validation clips (normal and anomalous) of the run's machines "
                              f"in <type>/val/ (or <type>/test/)")
        return clips, f"{_root_name(val_data)} ({split} split, --val-data)"
    if calib_data is None:
        return None
    try:
        index = scan_dataset(calib_data)
    except DatasetError:
        return None  # the calibration set says what is wrong with it
    clips = [c for c in index.select("val") if c.machine in known]
    if len({c.label for c in clips}) < 2:
        return None
    return clips, f"{_root_name(calib_data)} (val split)"


class _AccuracyControl:
    """The set accuracy-controlled variants are selected on, never the test clips.

    Labelled validation clips (``kind`` "labelled_validation": |dAUC| against PyTorch per
    machine), or without them the calibration set's held-out training normals ("normals_drift":
    Spearman rho and the worst relative score error against PyTorch FP32, at mtad-parity's score
    budgets of the precision)."""

    def __init__(self, run, budgets: dict[str, float], log, validation: tuple[list, str] | None, calib: CalibrationSet | None,
                 calib_data=None):
        from mtad.edge_runtime.dataset import parse_clip_path

        from .data_sets import clip_digests, clip_set

        self.run, self.budgets, self.log = run, budgets, log
        self.unchecked: list[str] = []
        if validation is not None:
            self.clips, source = validation
            self.kind = "labelled_validation"
            digests = clip_digests(c.path for c in self.clips)
        else:  # export_bundle has refused the case with neither validation clips nor calibration data
            # the relative score error needs a spread: machines with one held-out normal cannot be judged
            held = [(c, h["sha256"]) for c, h in ((parse_clip_path(Path(h["path"])), h) for h in calibration_roles(calib)[1]) if c]
            per_machine = Counter(c.machine for c, _ in held)
            held = [(c, d) for c, d in held if per_machine[c.machine] >= 2]
            self.unchecked = sorted(m for m, n in per_machine.items() if n < 2)
            if not held:
                raise ConfigError("--accuracy-budget: no labelled validation clips (--val-data), and calibration held out fewer than 2 "
                                  "training normals per machine, too few to measure score drift on; pass --val-data")
            self.clips = [c for c, _ in held]
            source = f"{_root_name(calib_data) if calib_data else 'calibration data'} (train split, held out of calibration)"
            self.kind = "normals_drift"
            digests = [d for _, d in held]
        self.digests = digests
        self.record = clip_set(self.kind, digests, [c.label for c in self.clips], source=source,
                               criterion="dauc" if self.kind == "labelled_validation" else "score_drift")
        self.score_variant = lambda runner=None: score_clips(run, self.clips, runner)
        self.reference = self.score_variant()

    @property
    def drift(self) -> bool:
        return self.kind == "normals_drift"

    def score_budget(self, precision: str) -> dict | None:
        return DEFAULT_SCORE_BUDGETS[precision] if self.drift else None

    def describe(self, precision: str) -> str:
        if self.drift:
            from .accuracy_control import drift_budget_text

            return f"score drift vs FP32 on {len(self.clips)} held-out training normals: {drift_budget_text(DEFAULT_SCORE_BUDGETS[precision])}"
        return f"|dAUC| <= {self.budgets[precision]} per machine on {len(self.clips)} labelled validation clips"

    def announce(self, precisions: list[str]) -> str:
        """The one line that says which set accuracy control selects on."""
        from .data_sets import describe

        if self.drift:
            budgets = "; ".join(f"{p}: rho >= {DEFAULT_SCORE_BUDGETS[p]['min_spearman']}, relative score error <= "
                                f"{DEFAULT_SCORE_BUDGETS[p]['max_rel_error']}" for p in precisions)
            skipped = f"; {len(self.unchecked)} machine(s) with a single held-out normal go unchecked" if self.unchecked else ""
            return (f"accuracy control: no labelled validation set (no --val-data, no <type>/val/ clips of both labels under "
                    f"--calib-data): selecting on score drift against FP32 on {describe(self.record)} instead of |dAUC| "
                    f"({budgets}, per machine{skipped})")
        machines = len({c.machine for c in self.clips})
        return f"accuracy control: selecting on {describe(self.record)} of {machines} machine(s) from {self.record['source']}; test clips are not used"

    def int8(self, tmp: Path, calib, method, reduce_range, floor: float = DEFAULT_INT8_FLOOR) -> dict:
        from .accuracy_control import accuracy_controlled_int8

        return accuracy_controlled_int8(tmp / "models" / "fp32.onnx", calib, tmp / "models" / "int8.onnx", self.reference,
                                        self.score_variant, self.budgets["int8"], method, reduce_range, log=self.log, floor=floor,
                                        score_budget=self.score_budget("int8"))

    def fp16(self, tmp: Path, windows) -> dict:
        from .accuracy_control import accuracy_controlled_fp16

        return accuracy_controlled_fp16(tmp / "models" / "fp32.onnx", windows, tmp / "models" / "fp16.onnx", self.reference,
                                        self.score_variant, self.budgets["fp16"], log=self.log, score_budget=self.score_budget("fp16"))


def export_bundle(
    run_dir: str | Path,
    out: str | Path,
    fp16: bool = False,
    int8: bool = False,
    calib_data: str | Path | None = None,
    calib_windows: int = 512,
    calib_method: str = "minmax",
    int8_reduce_range: bool = False,
    int8_exclude: list[str] | None = None,
    accuracy_budget: dict[str, float] | None = None,
    engine: bool = False,
    force: bool = False,
    int8_floor: float = DEFAULT_INT8_FLOOR,
    reference_clips: int = 8,
    progress: bool = True,
    log=print,
    val_data: str | Path | None = None,
    notice=None,
) -> dict:
    """Export a trained run to a bundle directory ``out``; returns the manifest.

    Three disjoint clip sets, recorded in the manifest's ``data_sets``: INT8 calibrates on
    training normals of ``calib_data``; accuracy control (``accuracy_budget``) selects on the
    labelled validation clips of ``val_data`` (default: ``calib_data``'s ``val`` split), or
    without them on score drift over the training normals calibration held out (said in one
    line through ``notice``, default ``log``); the reference set for on-device parity is
    ``calib_data``'s test clips, less any clip of the other two.

    The bundle is assembled in a temporary sibling directory and renamed into place, so a
    failed export never leaves half a bundle (and never destroys an existing one).
    """
    from .data_sets import clip_set

    run_dir, out = Path(run_dir), Path(out)
    notice = notice or log
    run = load_run(run_dir)
    if int8 and calib_data is None:
        raise ConfigError("--int8 needs --calib-data DATA: training normals to calibrate activation ranges on")
    validation = None
    if accuracy_budget:
        validation = find_validation(val_data, calib_data, run.stats.class_map)  # before any work: a bad --val-data is one line
        if validation is None and calib_data is None:
            raise ConfigError("--accuracy-budget needs labelled validation clips (--val-data, or a <type>/val/ split under "
                              "--calib-data) or --calib-data (its held-out training normals for the score-drift fallback)")
    elif val_data is not None:
        notice(f"note: --val-data {val_data} is not used without --accuracy-budget")
    model_free = not run.stats.needs_model
    if model_free and (fp16 or int8 or engine or accuracy_budget):
        asked = [flag for flag, on in (("--fp16", fp16), ("--int8", int8), ("--engine", engine), ("--accuracy-budget", accuracy_budget)) if on]
        raise ConfigError(f"{' '.join(asked)}: the run's score ({', '.join(run.stats.components)}) is model-free, so its bundle carries no "
                          "network to convert; for the learned fusion, export a run refitted with mtad-eval --refit --components recon,acoustic")
    if engine:
        from .tensorrt_build import require_tensorrt

        require_tensorrt()  # fail before any work, with the reason
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force to replace it")

    # a model-free bundle ships no network: nothing to export, calibrate or check, and its reference
    # scores come from the same statistics the device computes
    reference = NoModelRunner() if model_free else TorchRunner(model_from_checkpoint(run.ckpt))
    mcfg = run.model_cfg
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in (f".{out.name}.tmp-", f".{out.name}.old-"):  # left by a killed export
        sweep_stale(out.parent, stale)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        calib: CalibrationSet | None = None
        variants, checks = {}, {}
        heldout_source = None
        if not model_free:
            if calib_data is not None:
                calib = build_calibration_set(calib_data, norms_from_checkpoint(run.ckpt), run.stats.class_map, mcfg.window, calib_windows,
                                              model_digest=sha256_file(run_dir / CHECKPOINT), progress=progress)
                save_calibration_set(calib, run_dir / "calibration")
                heldout, heldout_source = calib.heldout, "held-out training-normal windows (clips not used for calibration)"
            else:
                heldout = np.random.default_rng(0).standard_normal((32, mcfg.n_mels, mcfg.window)).astype(np.float32)
                heldout_source = "random normal windows (no --calib-data given)"
            log("export: FP32 ONNX")
            (tmp / "models").mkdir()
            fp32_proto = export_fp32(reference.model, tmp / "models" / "fp32.onnx")
            variants["fp32"] = {"precision": "fp32", "kind": "onnx", "file": "models/fp32.onnx"}
        else:
            log(f"export: no model (the score, {', '.join(run.stats.components)}, is model-free)")
        calibration_digests = [c["sha256"] for c in calibration_roles(calib)[0]] if calib is not None else []
        calibration_record = None
        if int8:  # the training normals whose windows calibrate INT8
            calibration_record = clip_set("training_normals", calibration_digests, source=f"{_root_name(calib_data)} (train split)",
                                          n_windows=int(calib.manifest["n_windows"]))
        control = None
        if accuracy_budget:
            control = _AccuracyControl(run, accuracy_budget, log, validation, calib, calib_data)
            shared = set(control.digests) & set(calibration_digests) if calibration_record else set()
            if shared:
                raise ConfigError(f"--val-data: {len(shared)} of its {len(control.digests)} validation clips are training normals "
                                  f"the INT8 calibration uses; the sets must be disjoint")
            say = notice if control.drift else log  # the fallback is said even with --quiet
            say(control.announce([p for p in ("fp16", "int8") if p in accuracy_budget and (fp16 if p == "fp16" else int8)]))
        fp16_info = None
        if fp16 and control and "fp16" in accuracy_budget:
            log(f"export: FP16 ONNX with accuracy control ({control.describe('fp16')})")
            fp16_info = control.fp16(tmp, heldout)
        elif fp16:
            log("export: FP16 ONNX")
            onnx.save(convert_fp16(fp32_proto), str(tmp / "models" / "fp16.onnx"))
        if fp16:
            variants["fp16"] = {"precision": "fp16", "kind": "onnx", "file": "models/fp16.onnx"}
        int8_info = None
        if int8 and control and "int8" in accuracy_budget:
            log(f"export: INT8 ONNX with accuracy control ({control.describe('int8')})")
            int8_info = control.int8(tmp, calib, calib_method, int8_reduce_range, int8_floor)
        elif int8:
            log(f"export: INT8 ONNX (calibrating on {len(calib.windows)} windows, {calib_method})")
            int8_info = quantize_int8(tmp / "models" / "fp32.onnx", calib, tmp / "models" / "int8.onnx", calib_method, int8_reduce_range, int8_exclude)
            require_int8_floor(int8_info, int8_floor)  # never a float model labelled int8
        if int8:
            variants["int8"] = {"precision": "int8", "kind": "onnx", "file": "models/int8.onnx", "reduce_range": int8_reduce_range,
                                "quantized_mac_fraction": int8_info["quantized_mac_fraction"]}
        for v in variants.values():  # the runner picks ONNX Runtime's optimisation level from this
            v["has_qdq"] = has_qdq(tmp / v["file"])
        for name, v in variants.items():
            runner = OnnxRuntimeRunner(tmp / v["file"], v["precision"], "CPUExecutionProvider", reduce_range=v.get("reduce_range", False), qdq=v["has_qdq"])
            checks[name] = compare_outputs(runner, reference, heldout)
            checks[name]["runner"] = runner.describe()
            c = checks[name]
            log(f"check {name}: logits max|err| {c['logits']['max_abs']:.2e}, prediction mean|err| {c['prediction']['mean_abs']:.2e}, argmax agreement {c['argmax_agreement']:.1%}")

        run.stats.save(tmp / STATS)
        reference_set = None
        if calib_data is not None:
            from .reference_set import build_reference_set, save_reference_set

            seen = set(control.digests if control else []) | set(calibration_digests)
            reference_set = build_reference_set(Path(calib_data), run.stats.class_map, mcfg.window, per_class=reference_clips, exclude=seen)
            if reference_set is not None:
                save_reference_set(reference_set, tmp)
                if reference_set["n_excluded"]:
                    notice(f"reference set: passed over {reference_set['n_excluded']} test clip(s) of --calib-data that are in the "
                           f"calibration or accuracy-control set")
            else:
                log(f"reference set: {calib_data} has no labelled test clips outside the calibration and accuracy-control sets; "
                    f"the bundle ships none")
        if engine:
            from .tensorrt_build import build_engines_into

            variants.update(build_engines_into(tmp, variants, mcfg, log=log))

        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "mtad_version": __version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "source_run": run_dir.resolve().name,  # a name: a build machine's path means nothing on the device
            "task": run.task,
            "feature_config": FeatureConfig().to_dict(),
            "model_config": mcfg.to_dict(),
            "inference": {"input": INPUT, "outputs": list(OUTPUTS), "window": mcfg.window, "warmup": mcfg.warmup, "opset": OPSET},
            "class_map": list(run.stats.class_map),
            "scoring": scoring_summary(run),
            "variants": variants,
            "files": files,
            "sizes_bytes": {name: (tmp / v["file"]).stat().st_size for name, v in variants.items()},
            "calibration": None if calib is None else {**{k: calib.manifest[k] for k in ("key", "settings", "n_windows", "per_machine")},
                                                       "n_sources": len(calib.manifest["sources"]), "quantization": int8_info},
            "export_check": None if model_free else {"inputs": heldout_source, "variants": checks},
            "fp16": fp16_info,
            "data_sets": {  # three disjoint sets; mtad-parity refuses to report on clips of the first two
                "calibration": calibration_record,
                "accuracy_control": None if control is None else control.record,
                "report": None if reference_set is None else clip_set(
                    "reference_test_clips", reference_set["sha256"], [int(v) for v in reference_set["labels"]],
                    source=f"{_root_name(calib_data)} (test split)"),
            },
        }
        (tmp / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        bundle = load_bundle(tmp)  # the bundle we wrote must pass our own loader
        if reference_set is not None:
            manifest["reference"] = record_reference_scores(bundle, reference, reference_set)
            (tmp / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        replace_dir(tmp, out)  # with --force the old bundle stays whole until this step
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
