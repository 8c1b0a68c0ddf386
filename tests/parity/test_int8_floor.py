"""A file labelled int8 is INT8: MAC coverage from the graph, the floor, and an export that
cannot meet its accuracy budget above the floor writes nothing."""

import sys

import numpy as np
import onnx
import pytest
import yaml
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from mtad.export.cli import main as export_main
from mtad.export.quantize import Int8FloorError, mac_coverage, node_macs, require_int8_floor


def _two_conv_model(path, quantize_first: bool):
    """x (N, 4, T) -> Conv 4->8 k3 (96 MACs/frame) -> Conv 8->2 k1 (16 MACs/frame) -> y."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 4, 3)).astype(np.float32), rng.standard_normal((2, 8, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.float32(0.05), "s")]
    nodes = []
    if quantize_first:  # x -> Q -> DQ and int8 weights -> DQ feed conv1: the pattern ORT/TensorRT run in int8
        inits += [numpy_helper.from_array(np.round(w1 / 0.05).astype(np.int8), "w1_q"), numpy_helper.from_array(np.int8(0), "zp")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["x_q"], name="q_x"),
                  helper.make_node("DequantizeLinear", ["x_q", "s", "zp"], ["x_dq"], name="dq_x"),
                  helper.make_node("DequantizeLinear", ["w1_q", "s", "zp"], ["w1"], name="dq_w1")]
        conv1_in = "x_dq"
    else:
        inits.append(numpy_helper.from_array(w1, "w1"))
        conv1_in = "x"
    nodes += [helper.make_node("Conv", [conv1_in, "w1"], ["h"], name="conv1", pads=[1, 1]),
              helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "frames"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "frames"])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_mac_coverage_counts_quantised_convs(tmp_path):
    q = _two_conv_model(tmp_path / "q.onnx", quantize_first=True)
    assert node_macs(onnx.load(str(q)), window=10) == {"conv1": ("Conv", 8 * 10 * 4 * 3), "conv2": ("Conv", 2 * 10 * 8)}
    cov = mac_coverage(q, window=10)
    assert cov["macs_per_window"] == 1120 and cov["n_mac_layers"] == 2
    assert cov["quantized_mac_fraction"] == pytest.approx(960 / 1120, abs=1e-5)
    assert [layer["name"] for layer in cov["float_layers"]] == ["conv2"]
    f = mac_coverage(_two_conv_model(tmp_path / "f.onnx", quantize_first=False), window=10)
    assert f["quantized_mac_fraction"] == 0.0 and len(f["float_layers"]) == 2
    require_int8_floor(cov, 0.80)
    with pytest.raises(Int8FloorError, match=r"only 85.7% of its MACs are quantised \(floor 90%; 1 of 2 .* stay float\)"):
        require_int8_floor(cov, 0.90)


def test_tiny_int8_export_records_its_quantised_fraction(tiny_bundle):
    m = yaml.safe_load((tiny_bundle / "manifest.yaml").read_text())
    q = m["calibration"]["quantization"]
    assert q["quantized_mac_fraction"] >= 0.80 and m["variants"]["int8"]["quantized_mac_fraction"] == q["quantized_mac_fraction"]
    assert q["n_mac_layers"] == len(node_macs(onnx.load(str(tiny_bundle / "models" / "fp32.onnx")), m["inference"]["window"]))
    assert all(layer["name"] and layer["mac_fraction"] >= 0 for layer in q["float_layers"])
    assert m["variants"]["int8"]["has_qdq"] is True and m["variants"]["fp32"]["has_qdq"] is False


def _no_int8_anywhere(root):
    return not any(p.name == "int8.onnx" for p in root.rglob("*"))


@pytest.mark.slow
def test_export_refuses_int8_below_the_floor_in_one_line(tiny_run, tiny_synth, tiny_bundle, tmp_path):
    convs = list(node_macs(onnx.load(str(tiny_bundle / "models" / "fp32.onnx")), 10))
    res = CliRunner().invoke(export_main, ["--run", str(tiny_run), "--out", str(tmp_path / "b"), "--int8", "--calib-data", str(tiny_synth),
                                           "--calib-windows", "128", "--int8-exclude", ",".join(convs), "--quiet"])
    assert res.exit_code == 1, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("error: refusing to label this model int8: only 0.0% of its MACs")
    assert not (tmp_path / "b").exists() and _no_int8_anywhere(tmp_path)


@pytest.mark.slow
def test_accuracy_control_that_cannot_meet_the_budget_above_the_floor_writes_no_int8(tiny_run, tiny_synth, tiny_val, tmp_path, monkeypatch):
    import mtad.export.accuracy_control as ac

    real_compare = ac.compare

    def never_within_budget(reference, variant, budget):  # a budget no INT8 build can meet
        res = real_compare(reference, variant, budget)
        return {**res, "max_abs_dauc": max(res["max_abs_dauc"] or 0.0, 0.5), "over_budget": ["fan/id_00"]}

    monkeypatch.setattr(ac, "compare", never_within_budget)
    res = CliRunner().invoke(export_main, ["--run", str(tiny_run), "--out", str(tmp_path / "b"), "--int8", "--calib-data", str(tiny_synth),
                                           "--calib-windows", "128", "--accuracy-budget", "0.01", "--int8-floor", "0.9",
                                           "--val-data", str(tiny_val), "--quiet"])
    assert res.exit_code == 1, res.output
    line = res.output.strip()
    assert "\n" not in line and line.startswith("error: INT8 cannot meet the accuracy budget 0.01 with >= 90% of MACs quantised")
    assert "best found: max |dAUC| 0.5000 with" in line and "no int8 variant written" in line
    assert not (tmp_path / "b").exists() and _no_int8_anywhere(tmp_path)


def test_missing_polygraphy_is_one_line(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "polygraphy", None)
    res = CliRunner().invoke(export_main, ["--run", str(tiny_run), "--out", str(tmp_path / "b"), "--int8", "--calib-data", str(tmp_path),
                                           "--accuracy-budget", "0.01"])
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert res.output.startswith("error: --accuracy-budget needs Polygraphy") and "mtad[train]" in res.output
