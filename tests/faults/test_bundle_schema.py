"""The bundle schema's named refusals (one line each), device-built engine hashes, and the
shared budget parser."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import yaml

from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.bundle_schema import ENGINE_DIGEST, engine_digest, read_stats_arrays
from mtad.edge_runtime.constants import DEFAULT_BUDGETS, parse_budgets
from mtad.edge_runtime.errors import BundleError, ConfigError
from mtad.edge_runtime.hashing import sha256_file


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit(b, change):
    m = yaml.safe_load((b / "manifest.yaml").read_text())
    change(m)
    (b / "manifest.yaml").write_text(yaml.safe_dump(m, sort_keys=False))


def _resave_stats(b, change):
    with np.load(b / "stats.npz") as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    np.savez(b / "stats.npz", **arrays)
    _edit(b, lambda m: m["files"].update({"stats.npz": sha256_file(b / "stats.npz")}))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["variants"]["fp16"].update(precision="bf16"), r"variants\.fp16\.precision: Input should be 'fp32', 'fp16' or 'int8' \(got 'bf16'\)"),
    (lambda m: m["variants"]["fp16"].pop("precision"), r"variants\.fp16\.precision: Field required"),
    (lambda m: m["variants"]["fp16"].update(kind="tflite"), r"variants\.fp16\.kind: Input should be 'onnx' or 'tensorrt'"),
    (lambda m: m.update(task="detect"), r"task: Input should be 'multitask', 'recon' or 'classify'"),
    (lambda m: m["scoring"].update(method="knn"), r"scoring\.method: Input should be 'fusion' or 'paper'"),
    (lambda m: m.update(files=list(m["files"])), r"files: Input should be a valid dictionary"),
    (lambda m: m["files"].update({"../x": "0" * 64}), r"files\.\.\./x\.\[key\]: must not contain '\.\.'"),
    (lambda m: m["variants"]["fp16"].update(file="/etc/passwd"), r"variants\.fp16\.file: .*not absolute"),
    (lambda m: m["inference"].update(window="32"), r"inference\.window: Input should be a valid integer"),
    (lambda m: m["model_config"].update(n_classes=3), r"n_classes: 3 is not a multiple of the 16 entries in class_map"),
    (lambda m: m["variants"]["fp16"].update(file="models/other.onnx"), r"variants\.fp16\.file: models/other\.onnx is not covered"),
])
def test_manifest_refusals_name_the_field(fault_bundle, tmp_path, change, message):
    b = _copy(fault_bundle, tmp_path / "b")
    _edit(b, change)
    with pytest.raises(BundleError, match=message) as err:
        load_bundle(b)
    assert "\n" not in str(err.value)


def test_symlink_out_of_the_bundle_is_refused_even_with_matching_hash(fault_bundle, tmp_path):
    b = _copy(fault_bundle, tmp_path / "b")
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(b / "models" / "fp16.onnx", outside)
    (b / "models" / "fp16.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match=r"files\.models/fp16\.onnx: models/fp16\.onnx leaves the bundle"):
        load_bundle(b)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update({"precision|recon|fan": a["precision|recon|fan"][:-1, :-1]}), r"precision\|recon\|fan: shape \(15, 15\), expected \(16, 16\)"),
    (lambda a: a.update({"type/fan/norm_mean": a["type/fan/norm_mean"][:-1]}), r"type/fan/norm_mean: shape \(127,\), expected \(128,\) \(n_mels\)"),
    (lambda a: a.pop("calibration|acoustic|pump/id_02"), r"calibration\|acoustic\|pump/id_02: missing"),
    (lambda a: a.update({"precision|acoustic|fan": a["precision|acoustic|fan"][:-1, :-1]}), r"precision\|acoustic\|fan: shape \(291, 291\), expected \(292, 292\)"),
    (lambda a: a.update(threshold_values=a["threshold_values"][:-1]), r"threshold_values: 15 values for 16 threshold_machines"),
    (lambda a: a.update(component_weights=np.array([1.0])), r"component_weights: \[1\.0\] must be one positive weight per component \(2\)"),
    (lambda a: a.update(task=np.array("segment")), r"task: 'segment' is not one of multitask, recon, classify"),
    (lambda a: a.update({"centre|recon|fan/id_00": np.full(4, np.nan)}), r"centre\|recon\|fan/id_00: holds NaN"),
    (lambda a: a.update(class_map=a["class_map"][::-1]), r"stats\.npz: class_map .* differs from the manifest's"),
    (lambda a: a.update({"type/drill/final_mean": np.zeros(2)}), r"type/drill/norm_mean: missing"),  # a type without normalisation
])
def test_stats_refusals_name_the_array(fault_bundle, tmp_path, change, message):
    b = _copy(fault_bundle, tmp_path / "b")
    _resave_stats(b, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(b)


def test_stats_reader_refuses_pickles_and_lying_headers(tmp_path):
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(BundleError, match="object arrays are not allowed"):
        read_stats_arrays(tmp_path / "obj.npz")
    np.savez(tmp_path / "ok.npz", a=np.arange(4.0))
    raw = (tmp_path / "ok.npz").read_bytes()
    bad = raw.replace(b"'shape': (4,)", b"'shape': (9,)")  # also breaks the zip CRC: either refusal is clean
    (tmp_path / "bad.npz").write_bytes(bad)
    with pytest.raises(BundleError, match="bad.npz"):
        read_stats_arrays(tmp_path / "bad.npz")
    assert read_stats_arrays(tmp_path / "ok.npz")["a"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_device_built_engine_is_pinned_by_its_hash(fault_bundle, tmp_path):
    b = _copy(fault_bundle, tmp_path / "b")
    (b / "engines").mkdir()
    engine = b / "engines" / "fp16.engine"
    engine.write_bytes(b"serialized engine bytes")
    key = {"onnx_sha256": "x", **engine_digest(engine.read_bytes())}
    engine.with_suffix(".key.json").write_text(json.dumps(key))
    assert load_bundle(b).engine("fp16") == (engine, key)
    engine.write_bytes(b"serialized engine bytez")  # tampered on disk
    with pytest.raises(BundleError, match="does not match engine_sha256"):
        load_bundle(b).engine("fp16")
    engine.with_suffix(".key.json").write_text(json.dumps({"onnx_sha256": "x"}))  # built before hashes were recorded
    bundle = load_bundle(b)  # the ONNX variants stay usable
    assert bundle.onnx_runner("fp32") is not None
    with pytest.raises(BundleError, match=f"no {ENGINE_DIGEST}; rebuild it"):
        bundle.engine("fp16")
    engine.with_suffix(".key.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable key file"):
        load_bundle(b).engine("fp16")
    os.unlink(engine.with_suffix(".key.json"))
    assert load_bundle(b).engine("fp16") == (None, None)


def test_one_budget_parser():
    assert parse_budgets("fp16=0.002", defaults=DEFAULT_BUDGETS) == {"fp32": 0.001, "fp16": 0.002, "int8": 0.01}
    assert parse_budgets("0.02", "--accuracy-budget", ("fp16", "int8"), bare="int8") == {"int8": 0.02}
    assert parse_budgets("fp16=0.005,int8=0.01", "--accuracy-budget", ("fp16", "int8"), bare="int8") == {"fp16": 0.005, "int8": 0.01}
    assert parse_budgets(None) == {}
    for bad in ("fp32=0.1", "int8=x", "0.1,", "int8=-1", "int8=nan"):
        with pytest.raises(ConfigError, match="--accuracy-budget takes a number"):
            parse_budgets(bad, "--accuracy-budget", ("fp16", "int8"), bare="int8")
    with pytest.raises(ConfigError, match="--budget takes 'fp32=0.001,fp16=0.005,int8=0.01', got '0.1'"):
        parse_budgets("0.1")
