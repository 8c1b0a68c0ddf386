"""QA parity suite: AUC drift of every exported variant vs the PyTorch model.

Uses the session's tiny run and bundle (conftest). Budgets are the defaults of mtad-parity.
"""

import json
import shutil

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner
from onnx import numpy_helper
from sklearn.metrics import roc_auc_score

from mtad.edge_runtime.hashing import sha256_file
from mtad.edge_runtime.constants import DEFAULT_BUDGETS
from mtad.edge_runtime.parity import roc_auc
from mtad.export.parity import device_parity, full_parity
from mtad.export.parity_cli import EXIT_OVER_BUDGET
from mtad.export.parity_cli import main as parity_main

from ..conftest import shared_data
from ..test_imports import run_blocked


def rehash(bundle, rel):
    m = yaml.safe_load((bundle / "manifest.yaml").read_text())
    m["files"][rel] = sha256_file(bundle / rel)
    (bundle / "manifest.yaml").write_text(yaml.safe_dump(m, sort_keys=False))


@pytest.fixture(scope="module")
def healthy_parity(tiny_run, tiny_bundle, tiny_synth):
    return full_parity(tiny_run, tiny_bundle, tiny_synth, DEFAULT_BUDGETS, progress=False, log=lambda m: None)


def test_every_variant_within_budget_on_synthetic_test_clips(healthy_parity):
    results, skipped, reference, scored = healthy_parity
    assert set(results) == {"onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-int8"}
    assert "tensorrt" in skipped  # no TensorRT here: the row says why
    for name, res in results.items():
        assert res["over_budget"] == [], (name, res["over_budget"])
        assert res["n_missing"] == 0 and len(res["machines"]) == 16
        assert all(e["n"] == 8 for e in res["machines"].values())
        for e in res["machines"].values():
            assert e["decision_agreement"] >= (0.99 if "fp32" in name else 0.75)
    fp32 = results["onnxruntime-fp32"]["machines"]
    assert max(e["max_abs_diff"] for e in fp32.values()) < 1e-3


def test_real_mimii_clips_scored_by_every_variant(tiny_run, tiny_bundle):
    pairs = shared_data("mimii-pairs-0db")
    results, _, reference, scored = full_parity(tiny_run, tiny_bundle, pairs, DEFAULT_BUDGETS, progress=False, log=lambda m: None)
    assert len(reference) == 32
    for name, res in results.items():
        assert len(scored[name]) == 32
        assert res["over_budget"] == [], (name, res["over_budget"])


def test_cli_exit_zero_json_and_plot(tiny_run, tiny_bundle, tiny_synth, tmp_path):
    res = CliRunner().invoke(parity_main, ["--run", str(tiny_run), "--bundle", str(tiny_bundle), "--data", str(tiny_synth),
                                           "--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "all within budget" in res.output and "tensorrt: skipped" in res.output
    sets = next(line for line in res.output.splitlines() if line.startswith("sets: "))
    assert "accuracy control none" in sets and "report 128 labelled test clips (64 normal + 64 anomalous)" in sets
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["data_sets"]["report"]["n_clips"] == 128 and report["data_sets"]["calibration"]["kind"] == "training_normals"
    assert report["budgets"] == DEFAULT_BUDGETS and "onnxruntime-int8" in report["variants"]
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_wrong_normalisation_in_bundle_is_caught(tiny_run, tiny_bundle, tiny_synth, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    with np.load(broken / "stats.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for k in arrays:
        if k.endswith("/norm_std"):
            arrays[k] = arrays[k] * 1.5  # a plausible-looking but wrong normalisation
    np.savez(broken / "stats.npz", **arrays)
    rehash(broken, "stats.npz")
    res = CliRunner().invoke(parity_main, ["--run", str(tiny_run), "--bundle", str(broken), "--data", str(tiny_synth), "--quiet"])
    assert res.exit_code == EXIT_OVER_BUDGET, res.output
    assert "OVER BUDGET" in res.output and "onnxruntime-fp32" in res.output.split("OVER BUDGET")[-1]


def test_corrupted_int8_scales_are_caught(tiny_run, tiny_bundle, tiny_synth, tmp_path, healthy_parity):
    """A Q/DQ scale mismatch: the input's DequantizeLinear reads a scale 2.5x its QuantizeLinear's,
    so the INT8 model sees a rescaled spectrogram while its tensors still look plausible."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    model = onnx.load(str(broken / "models" / "int8.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    quantized_input = next(n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "logmel")
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == quantized_input)
    scale = numpy_helper.to_array(inits[dq.input[1]])
    model.graph.initializer.append(numpy_helper.from_array((scale * 2.5).astype(np.float32), "logmel_scale_corrupted"))
    dq.input[1] = "logmel_scale_corrupted"
    onnx.save(model, str(broken / "models" / "int8.onnx"))
    rehash(broken, "models/int8.onnx")
    results, *_ = full_parity(tiny_run, broken, tiny_synth, DEFAULT_BUDGETS, progress=False, log=lambda m: None)
    # the tiny model separates its test clips perfectly, so the AUC cannot move; the scores do
    int8 = results["onnxruntime-int8"]
    assert int8["over_budget"] or int8["score_over_budget"], "a Q/DQ scale mismatch must push INT8 over budget"
    healthy = healthy_parity[0]["onnxruntime-int8"]
    assert int8["max_rel_error"] > 3 * healthy["max_rel_error"]  # the scores drift far more than honest INT8 noise
    assert results["onnxruntime-fp32"]["over_budget"] == [] and results["onnxruntime-fp32"]["score_over_budget"] == []


def test_device_parity_runs_without_torch(tiny_bundle):
    results, *_ = device_parity(tiny_bundle, DEFAULT_BUDGETS, log=lambda m: None)
    assert results["onnxruntime-fp32"]["over_budget"] == []
    res = run_blocked(
        "import sys\nfrom mtad.export.parity_cli import main\n"
        f"try:\n    main(['--bundle', {str(tiny_bundle)!r}, '--quiet'])\n"
        "except SystemExit as e:\n    code = e.code\n"
        "assert 'torch' not in sys.modules\nprint('exit', code)\n"
    )
    assert res.returncode == 0, res.stderr
    assert "recorded pytorch scores" in res.stdout and res.stdout.strip().endswith("exit 0")


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.standard_normal(60) + y, 1)  # rounding makes ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_auc(y, s, 0.1) == pytest.approx(roc_auc_score(y, s, max_fpr=0.1), abs=1e-12)
