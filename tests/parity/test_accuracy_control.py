"""Accuracy control for INT8 and FP16: Polygraphy layer ranking and the AUC-driven exclusion loop."""

import numpy as np
import onnx
import pytest
import yaml

from mtad.calibration.calibration_set import build_calibration_set
from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.errors import MtadError
from mtad.edge_runtime.parity import Scored
from mtad.export.bundle_writer import export_bundle
from mtad.export.accuracy_control import accuracy_controlled_fp16, accuracy_controlled_int8, rank_layers
from mtad.export.quantize import preprocess, quantize_int8
from mtad.train.checkpoint import load_checkpoint, norms_from_checkpoint


@pytest.fixture(scope="module")
def calib(tiny_run, tiny_synth):
    ckpt = load_checkpoint(tiny_run)
    window = ckpt["config"]["model"]["window"]
    return build_calibration_set(tiny_synth, norms_from_checkpoint(ckpt), ckpt["class_map"], window, 128, progress=False)


def test_rank_layers_names_real_nodes(tiny_bundle, calib, tmp_path):
    pre = preprocess(tiny_bundle / "models" / "fp32.onnx", tmp_path / "pre.onnx")
    quantize_int8(pre, calib, tmp_path / "int8.onnx", preprocessed=True)
    ranked = rank_layers(pre, tmp_path / "int8.onnx", calib.heldout)
    names = {n.name for n in onnx.load(str(pre)).graph.node}
    assert len(ranked) > 20 and all(n in names for n, _ in ranked)
    errors = [e for _, e in ranked]
    assert errors == sorted(errors, reverse=True) and np.isfinite(errors).all() and errors[0] > 0


def test_loop_keeps_layers_in_float_until_within_budget(tiny_bundle, calib, tmp_path):
    reference = [Scored(f"c{i}", "fan/id_00", i % 2, float(i % 2) + 0.01 * i, 0.5) for i in range(20)]
    calls = []

    def score_variant(runner):  # over budget until layers are excluded, then perfect
        calls.append(runner)
        if len(calls) == 1:
            return [Scored(r.key, r.machine, r.label, -r.score, r.threshold) for r in reference]
        return list(reference)

    info = accuracy_controlled_int8(tiny_bundle / "models" / "fp32.onnx", calib, tmp_path / "int8.onnx", reference, score_variant,
                                    budget=0.01, log=lambda m: None)
    assert len(calls) == 2 and len(info["excluded_nodes"]) == 2
    assert [r["over_budget"] for r in info["accuracy_rounds"]] == [["fan/id_00"], []]
    # the excluded nodes really stay float: no DequantizeLinear feeds their weights
    model = onnx.load(str(tmp_path / "int8.onnx"))
    excluded = [n for n in model.graph.node if n.name in info["excluded_nodes"]]
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    assert excluded and all(producers.get(i) != "DequantizeLinear" for n in excluded for i in n.input[1:2])


def test_drift_loop_judges_rank_and_relative_error_on_normals(tiny_bundle, calib, tmp_path):
    reference = [Scored(f"c{i}", "fan/id_00", 0, float(i), 0.5) for i in range(10)]
    calls = []

    def score_variant(runner):  # first build: ranks reversed (rho -1); then within 1 % of the spread
        calls.append(runner)
        if len(calls) == 1:
            return [Scored(r.key, r.machine, 0, -r.score, r.threshold) for r in reference]
        return [Scored(r.key, r.machine, 0, r.score + 0.01, r.threshold) for r in reference]

    logs = []
    info = accuracy_controlled_int8(tiny_bundle / "models" / "fp32.onnx", calib, tmp_path / "int8.onnx", reference, score_variant,
                                    budget=0.01, log=logs.append, score_budget={"min_spearman": 0.95, "max_rel_error": 0.25})
    rounds = info["accuracy_rounds"]
    assert [r["over_budget"] for r in rounds] == [["fan/id_00"], []] and rounds[0]["min_spearman"] == pytest.approx(-1)
    assert rounds[1]["max_rel_error"] < 0.01 and info["accuracy_criterion"] == "score_drift" and len(info["excluded_nodes"]) == 2
    assert "max relative score error" in logs[0] and "dAUC" not in logs[0]


def test_loop_gives_up_with_a_clear_error(tiny_bundle, calib, tmp_path):
    reference = [Scored(f"c{i}", "fan/id_00", i % 2, float(i % 2), 0.5) for i in range(10)]
    never = lambda runner: [Scored(r.key, r.machine, r.label, -r.score, r.threshold) for r in reference]  # noqa: E731
    with pytest.raises(MtadError, match="stays over the accuracy budget"):
        accuracy_controlled_int8(tiny_bundle / "models" / "fp32.onnx", calib, tmp_path / "int8.onnx", reference, never,
                                 budget=0.01, max_rounds=1, log=lambda m: None)


def test_export_with_accuracy_budget_records_it(tiny_run, tiny_synth, tmp_path):
    # tiny_synth has no labelled validation split: INT8 is selected on score drift over held-out normals
    export_bundle(tiny_run, tmp_path / "b", int8=True, calib_data=tiny_synth, calib_windows=128, accuracy_budget={"int8": 0.05},
                  progress=False, log=lambda m: None)
    m = yaml.safe_load((tmp_path / "b" / "manifest.yaml").read_text())
    q = m["calibration"]["quantization"]
    assert q["accuracy_budget"] == 0.05 and isinstance(q["excluded_nodes"], list)
    assert q["accuracy_criterion"] == "score_drift" and q["score_budget"] == {"min_spearman": 0.95, "max_rel_error": 0.25}
    assert q["accuracy_rounds"][-1]["over_budget"] == [] and q["accuracy_rounds"][0]["max_rel_error"] < 0.25
    assert m["data_sets"]["accuracy_control"]["kind"] == "normals_drift"
    load_bundle(tmp_path / "b").onnx_runner("int8", "CPUExecutionProvider")


def test_fp16_loop_keeps_nodes_in_float32(tiny_bundle, calib, tmp_path):
    reference = [Scored(f"c{i}", "fan/id_00", i % 2, float(i % 2) + 0.01 * i, 0.5) for i in range(20)]
    calls = []

    def score_variant(runner):
        calls.append(runner)
        return [Scored(r.key, r.machine, r.label, -r.score if len(calls) == 1 else r.score, r.threshold) for r in reference]

    info = accuracy_controlled_fp16(tiny_bundle / "models" / "fp32.onnx", calib.heldout, tmp_path / "fp16.onnx", reference,
                                    score_variant, budget=0.005, log=lambda m: None)
    assert len(info["excluded_nodes"]) == 2
    model = onnx.load(str(tmp_path / "fp16.onnx"))
    kept = {n.name: n for n in model.graph.node if n.name in info["excluded_nodes"]}
    assert len(kept) == 2
    weights = {i.name: i.data_type for i in model.graph.initializer}
    for node in kept.values():  # their weights stayed float32
        assert all(weights.get(i, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for i in node.input[1:])
