"""``mtad-export``'s library side: write a self-describing, hash-checked edge bundle."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import yaml

from mtad.calibration.calibration_set import CalibrationSet, build_calibration_set, save_calibration_set
from mtad.edge_runtime import __version__
from mtad.edge_runtime.atomic import replace_dir, sweep_stale
from mtad.edge_runtime.bundle import FORMAT, MANIFEST, SCHEMA_VERSION, STATS, load_bundle
from mtad.edge_runtime.hashing import sha256_file
from mtad.edge_runtime.errors import ConfigError
from mtad.edge_runtime.features import FeatureConfig
from mtad.edge_runtime.runners import OnnxRuntimeRunner, has_qdq
from mtad.train.checkpoint import CHECKPOINT, model_from_checkpoint, norms_from_checkpoint
from mtad.train.evaluate import load_run
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
        "false_alarm_rate": float(run.stats.false_alarm_rate),
        "stats_holdout": None if held is None else held["stats_holdout"],
        "heldout_clips_per_machine": None if held is None else {m: len(v) for m, v in held["held_out"].items()},
    }


def record_reference_scores(bundle, reference: TorchRunner, ref: dict) -> dict:
    """Scores of the shipped reference clips by PyTorch and by each ONNX variant, at export time."""
    from mtad.edge_runtime.pipeline import EdgeScorer

    from .reference_set import REFERENCE_FILE

    runners = {"pytorch": reference}
    runners.update({name: bundle.onnx_runner(v.precision, "CPUExecutionProvider") for name, v in bundle.variants.items() if v.kind == "onnx"})
    scores = {}
    for name, runner in runners.items():
        scorer = EdgeScorer(bundle, runner)
        scores[name] = [float(scorer.score_audio(a.astype(np.float32) / 32768.0, str(m)).score) for a, m in zip(ref["audio"], ref["machines"])]
    per_machine = {str(m): [int(((ref["machines"] == m) & (ref["labels"] == lab)).sum()) for lab in (0, 1)] for m in np.unique(ref["machines"])}
    return {"file": REFERENCE_FILE, "n_clips": int(len(ref["keys"])), "seconds": float(ref["audio"].shape[1] / 16000),
            "bytes": int((bundle.root / REFERENCE_FILE).stat().st_size), "normal_anomalous_per_machine": per_machine,
            "keys": [str(k) for k in ref["keys"]], "labels": [int(v) for v in ref["labels"]], "scores": scores}


class _AccuracyControl:
    """Validation for accuracy-controlled variants: PyTorch scores of DATA's labelled test clips."""

    def __init__(self, run, data, budgets: dict[str, float], log):
        from mtad.edge_runtime.dataset import scan_dataset
        from mtad.train.evaluate import score_split

        if data is None:
            raise ConfigError("--accuracy-budget needs --calib-data with labelled test clips to validate on")
        self.index = scan_dataset(data)
        if len({c.label for c in self.index.select("test")}) < 2:
            raise ConfigError("--accuracy-budget needs labelled test clips (normal and anomaly) in --calib-data to validate on")
        self.run, self.budgets, self.log = run, budgets, log

        def scored(runner=None):  # ClipScores carry what parity.compare reads (key, machine, label, score, threshold)
            return score_split(run, self.index, runner=runner, progress=False)[0]

        self.score_variant = scored
        self.reference = scored()

    def int8(self, tmp: Path, calib, method, reduce_range, floor: float = DEFAULT_INT8_FLOOR) -> dict:
        from .accuracy_control import accuracy_controlled_int8

        return accuracy_controlled_int8(tmp / "models" / "fp32.onnx", calib, tmp / "models" / "int8.onnx", self.reference,
                                        self.score_variant, self.budgets["int8"], method, reduce_range, log=self.log, floor=floor)

    def fp16(self, tmp: Path, windows) -> dict:
        from .accuracy_control import accuracy_controlled_fp16

        return accuracy_controlled_fp16(tmp / "models" / "fp32.onnx", windows, tmp / "models" / "fp16.onnx", self.reference,
                                        self.score_variant, self.budgets["fp16"], log=self.log)


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
) -> dict:
    """Export a trained run to a bundle directory ``out``; returns the manifest.

    The bundle is assembled in a temporary sibling directory and renamed into place, so a
    failed export never leaves half a bundle (and never destroys an existing one).
    """
    run_dir, out = Path(run_dir), Path(out)
    run = load_run(run_dir)
    if int8 and calib_data is None:
        raise ConfigError("--int8 needs --calib-data DATA: training normals to calibrate activation ranges on")
    if engine:
        from .tensorrt_build import require_tensorrt

        require_tensorrt()  # fail before any work, with the reason
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force to replace it")

    model = model_from_checkpoint(run.ckpt)
    norms = norms_from_checkpoint(run.ckpt)
    reference = TorchRunner(model)
    mcfg = run.model_cfg
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in (f".{out.name}.tmp-", f".{out.name}.old-"):  # left by a killed export
        sweep_stale(out.parent, stale)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "models").mkdir(parents=True)
    try:
        calib: CalibrationSet | None = None
        if calib_data is not None:
            calib = build_calibration_set(calib_data, norms, run.stats.class_map, mcfg.window, calib_windows,
                                          model_digest=sha256_file(run_dir / CHECKPOINT), progress=progress)
            save_calibration_set(calib, run_dir / "calibration")
            heldout, heldout_source = calib.heldout, "held-out training-normal windows (clips not used for calibration)"
        else:
            heldout = np.random.default_rng(0).standard_normal((32, mcfg.n_mels, mcfg.window)).astype(np.float32)
            heldout_source = "random normal windows (no --calib-data given)"

        variants, checks = {}, {}
        log("export: FP32 ONNX")
        fp32_proto = export_fp32(model, tmp / "models" / "fp32.onnx")
        variants["fp32"] = {"precision": "fp32", "kind": "onnx", "file": "models/fp32.onnx"}
        control = _AccuracyControl(run, calib_data, accuracy_budget, log) if accuracy_budget else None
        fp16_info = None
        if fp16 and control and "fp16" in accuracy_budget:
            log(f"export: FP16 ONNX with accuracy control (|dAUC| <= {accuracy_budget['fp16']} per machine on the labelled test clips)")
            fp16_info = control.fp16(tmp, heldout)
        elif fp16:
            log("export: FP16 ONNX")
            onnx.save(convert_fp16(fp32_proto), str(tmp / "models" / "fp16.onnx"))
        if fp16:
            variants["fp16"] = {"precision": "fp16", "kind": "onnx", "file": "models/fp16.onnx"}
        int8_info = None
        if int8 and control and "int8" in accuracy_budget:
            log(f"export: INT8 ONNX with accuracy control (|dAUC| <= {accuracy_budget['int8']} per machine on the labelled test clips)")
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

            reference_set = build_reference_set(Path(calib_data), run.stats.class_map, mcfg.window, per_class=reference_clips)
            if reference_set is not None:
                save_reference_set(reference_set, tmp)
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
            "export_check": {"inputs": heldout_source, "variants": checks},
            "fp16": fp16_info,
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
