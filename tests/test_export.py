import shutil

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from mtad.edge_runtime.bundle import SCHEMA_VERSION, load_bundle
from mtad.edge_runtime.errors import BundleError, ConfigError
from mtad.edge_runtime.runners import OnnxRuntimeRunner, cpu_int8_features
from mtad.export.bundle_writer import export_bundle
from mtad.export.cli import main as export_main
from mtad.export.quantize import qdq_zero_points
from mtad.train.checkpoint import load_checkpoint, model_from_checkpoint


def windows(bundle, n=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 128, bundle.window)).astype(np.float32)


def test_all_variants_run_on_ort_cpu_and_fp32_matches_pytorch(tiny_bundle, tiny_run):
    bundle = load_bundle(tiny_bundle)
    assert {v.precision for v in bundle.variants.values()} == {"fp32", "fp16", "int8"}
    model = model_from_checkpoint(load_checkpoint(tiny_run))
    x = windows(bundle)
    with torch.no_grad():
        ref_pred, ref_logits, _ = (t.numpy() for t in model(torch.from_numpy(x)))
    for precision, tol in (("fp32", 1e-4), ("fp16", 0.05), ("int8", 1.0)):
        runner = bundle.onnx_runner(precision, "CPUExecutionProvider")
        pred, logits, embedding = runner.infer(x)
        assert embedding.shape[0] == x.shape[0]
        assert pred.shape == ref_pred.shape and logits.shape == ref_logits.shape
        assert np.abs(logits - ref_logits).max() < tol, precision
        assert np.abs(pred - ref_pred).max() < (1e-4 if precision == "fp32" else 10 * tol), precision


def test_int8_is_symmetric_qdq(tiny_bundle):
    zps = qdq_zero_points(tiny_bundle / "models" / "int8.onnx")
    assert len(zps) > 50 and set(zps) == {0}


def test_manifest_is_self_describing(tiny_bundle):
    m = yaml.safe_load((tiny_bundle / "manifest.yaml").read_text())
    assert m["schema_version"] == 12 and m["feature_config"]["n_fft"] == 2048
    assert m["source_run"] == "tiny"  # a name, not a path of the build machine
    assert m["scoring"]["method"] == "fusion" and m["scoring"]["components"] == ["recon", "acoustic"] and m["scoring"]["covariance"] == "factor"
    assert m["scoring"]["stats_holdout"] == 0.25 and set(m["scoring"]["heldout_clips_per_machine"].values()) == {4}
    assert m["scoring"]["thresholds_from"] == "held_out_normals"  # recon is a model output: only clips the model never saw
    assert m["inference"]["opset"] == 17 and m["inference"]["window"] == m["model_config"]["window"]
    assert set(m["files"]) >= {"models/fp32.onnx", "models/fp16.onnx", "models/int8.onnx", "stats.npz"}
    cal = m["calibration"]
    assert cal["n_windows"] >= 100 and cal["quantization"]["calibration_method"] == "minmax" and len(cal["per_machine"]) == 16
    checks = m["export_check"]["variants"]
    assert checks["fp32"]["logits"]["max_abs"] < 1e-4 and checks["int8"]["n_windows"] > 0
    assert m["sizes_bytes"]["int8"] < m["sizes_bytes"]["fp16"] < m["sizes_bytes"]["fp32"]
    sets = m["data_sets"]  # no accuracy control: calibration and the reference (report) set only
    assert sets["accuracy_control"] is None and sets["calibration"]["kind"] == "training_normals"
    assert sets["report"]["n_clips"] == m["reference"]["n_clips"] and not set(sets["report"]["clip_digests"]) & set(sets["calibration"]["clip_digests"])


@pytest.mark.parametrize("tamper, message", [
    (lambda b: (b / "models" / "fp16.onnx").write_bytes((b / "models" / "fp16.onnx").read_bytes()[:-10] + b"0123456789"), "does not match its sha256"),
    (lambda b: _edit(b, lambda m: m.update(schema_version=SCHEMA_VERSION + 1)), "newer than this runtime supports"),
    (lambda b: _edit(b, lambda m: m.update(schema_version=SCHEMA_VERSION - 1)), "older than this runtime supports.*re-export"),
    (lambda b: _edit(b, lambda m: m["feature_config"].update(n_fft=1024)), "feature settings differ.*n_fft 1024 != 2048"),
    (lambda b: (b / "stats.npz").unlink(), "stats.npz is listed in the manifest but missing"),
    (lambda b: _edit(b, lambda m: m["scoring"].update(covariance="ledoit-wolf")), "covariance 'factor' differs from the manifest's 'ledoit-wolf'"),
    (lambda b: _edit(b, lambda m: m["scoring"].update(covariance="graphical-lasso")), "covariance"),
    (lambda b: (b / "manifest.yaml").unlink(), "not a bundle"),
    (lambda b: _edit(b, lambda m: m.update(variants={})), "variants: bundle has no FP32 ONNX model"),  # recon reads the network
])
def test_loader_refuses_bad_bundles(tiny_bundle, tmp_path, tamper, message):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    tamper(bad)
    with pytest.raises(BundleError, match=message):
        load_bundle(bad)


def _edit(bundle, change):
    m = yaml.safe_load((bundle / "manifest.yaml").read_text())
    change(m)
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(m))


def test_export_refusals_leave_nothing_behind(tiny_run, tiny_synth, tmp_path):
    with pytest.raises(ConfigError, match="--calib-data"):
        export_bundle(tiny_run, tmp_path / "b", int8=True, progress=False, log=lambda m: None)
    from mtad.calibration.calibration_set import CalibrationError

    with pytest.raises(CalibrationError, match="below the minimum"):
        export_bundle(tiny_run, tmp_path / "b", int8=True, calib_data=tiny_synth, calib_windows=4, progress=False, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []  # no bundle, no temp dir
    (tmp_path / "exists").mkdir()
    res = CliRunner().invoke(export_main, ["--run", str(tiny_run), "--out", str(tmp_path / "exists"), "--quiet"])
    assert res.exit_code == 1 and "already exists" in res.output


@pytest.mark.skipif(bool(cpu_int8_features()), reason="this CPU has int8 dot products: ORT's fused int8 kernels do not saturate here")
def test_int8_fused_kernels_would_be_wrong_on_this_cpu_and_runner_avoids_them(tiny_bundle):
    """The hazard from the export issue: ORT_ENABLE_ALL fuses Q/DQ into u8s8 kernels that
    saturate on AVX2 without VNNI. Our runner must pick BASIC, and the fused result differs."""
    import onnxruntime as ort

    bundle = load_bundle(tiny_bundle)
    ours = bundle.onnx_runner("int8", "CPUExecutionProvider")
    assert ours.optimization_level == "ORT_ENABLE_BASIC"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    fused = ort.InferenceSession(str(tiny_bundle / "models" / "int8.onnx"), so, providers=["CPUExecutionProvider"])
    fp32 = bundle.onnx_runner("fp32", "CPUExecutionProvider")
    x = windows(bundle, 32)
    ref = fp32.infer(x)[1]
    good = ours.infer(x)[1]
    bad = fused.run(None, {"logmel": x})[1]
    assert np.abs(good - ref).mean() < np.abs(bad - ref).mean()


def test_cli_export_fp16_only(tiny_run, tmp_path):
    res = CliRunner().invoke(export_main, ["--run", str(tiny_run), "--out", str(tmp_path / "b"), "--fp16", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "fp16" in res.output and load_bundle(tmp_path / "b").variant("fp16").file == "models/fp16.onnx"
    with pytest.raises(BundleError, match="no onnx variant at int8"):
        load_bundle(tmp_path / "b").variant("int8")


def test_runner_refuses_unknown_provider(tiny_bundle):
    with pytest.raises(BundleError, match="not available"):
        OnnxRuntimeRunner(tiny_bundle / "models" / "fp32.onnx", provider="NoSuchExecutionProvider")


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_methods(tiny_run, tiny_synth, tmp_path, method):
    # the histogram calibrators stack batches: a short last batch once crashed them
    export_bundle(tiny_run, tmp_path / "b", int8=True, calib_data=tiny_synth, calib_windows=100, calib_method=method,
                  progress=False, log=lambda m: None)
    m = yaml.safe_load((tmp_path / "b" / "manifest.yaml").read_text())
    assert m["calibration"]["quantization"]["calibration_method"] == method
    assert set(qdq_zero_points(tmp_path / "b" / "models" / "int8.onnx")) == {0}
