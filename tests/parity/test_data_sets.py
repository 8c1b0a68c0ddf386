"""Three disjoint sets: INT8 calibrates on training normals, accuracy control selects on labelled
validation clips (or, without them, on score drift over held-out normals, and says so), and
mtad-parity reports on test clips, refusing any that overlap the first two."""

import hashlib
import shutil

import pytest
import yaml
from click.testing import CliRunner

from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.errors import BundleError
from mtad.edge_runtime.hashing import sha256_file
from mtad.export import bundle_writer
from mtad.export.bundle_writer import export_bundle
from mtad.export.cli import main as export_main
from mtad.export.data_sets import DIGEST_CHARS
from mtad.export.parity_cli import main as parity_main

from ..conftest import TINY_MACHINES


def _spy(monkeypatch):
    """Record every clip accuracy control scores (for the reference and for each variant)."""
    given = []
    real = bundle_writer.score_clips

    def spy(run, clips, runner=None):
        given.extend(clips)
        return real(run, clips, runner)

    monkeypatch.setattr(bundle_writer, "score_clips", spy)
    return given


def _manifest(bundle):
    return yaml.safe_load((bundle / "manifest.yaml").read_text())


def _digests(paths):
    return {sha256_file(p)[:DIGEST_CHARS] for p in paths}


@pytest.fixture(scope="module")
def val_bundle(tiny_run, tiny_synth, tiny_val, tmp_path_factory, monkeypatch_module):
    """INT8 selected on the labelled validation clips of ``tiny_val``; the clips it scored."""
    given = _spy(monkeypatch_module)
    lines = []
    out = tmp_path_factory.mktemp("valbundle") / "b"
    export_bundle(tiny_run, out, int8=True, calib_data=tiny_synth, calib_windows=128, accuracy_budget={"int8": 0.05},
                  val_data=tiny_val, progress=False, log=lines.append)
    return out, list(given), lines


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_accuracy_control_selects_on_validation_clips_only(val_bundle, tiny_synth, tiny_val):
    bundle, given, lines = val_bundle
    val_paths = sorted(tiny_val.rglob("*.wav"))
    assert given, "accuracy control scored nothing"
    assert {c.split for c in given} == {"val"} and {str(c.path) for c in given} == {str(p) for p in val_paths}
    test_paths = {str(p) for p in tiny_synth.rglob("test/*.wav")}
    assert not test_paths & {str(c.path) for c in given}  # never a test clip
    assert any(line.startswith("accuracy control: selecting on 96 labelled validation clips (48 normal + 48 anomalous)") for line in lines)
    q = _manifest(bundle)["calibration"]["quantization"]
    assert q["accuracy_criterion"] == "dauc" and q["accuracy_rounds"][-1]["over_budget"] == []


def test_manifest_records_three_disjoint_sets(val_bundle, tiny_synth, tiny_val):
    bundle, _, _ = val_bundle
    sets = _manifest(bundle)["data_sets"]
    cal, acc, rep = sets["calibration"], sets["accuracy_control"], sets["report"]
    assert (cal["kind"], acc["kind"], rep["kind"]) == ("training_normals", "labelled_validation", "reference_test_clips")
    assert acc["n_clips"] == 96 and (acc["n_normal"], acc["n_anomalous"]) == (48, 48) and acc["criterion"] == "dauc"
    assert rep["n_clips"] == 16 * 8 and (rep["n_normal"], rep["n_anomalous"]) == (64, 64)  # 4 + 4 test clips per machine
    # calibration: the training normals its windows came from, never the clips it held out
    assert 0 < cal["n_clips"] < 16 * 8 and cal["n_windows"] == _manifest(bundle)["calibration"]["n_windows"]
    assert set(cal["clip_digests"]) <= _digests(tiny_synth.rglob("train/*.wav"))
    assert set(acc["clip_digests"]) == _digests(tiny_val.rglob("*.wav"))
    assert set(rep["clip_digests"]) <= _digests(tiny_synth.rglob("test/*.wav"))
    assert not (set(cal["clip_digests"]) & set(acc["clip_digests"]) or set(acc["clip_digests"]) & set(rep["clip_digests"])
                or set(cal["clip_digests"]) & set(rep["clip_digests"]))
    full = sorted(sha256_file(p) for p in tiny_val.rglob("*.wav"))
    assert acc["clips_sha256"] == hashlib.sha256("\n".join(full).encode()).hexdigest()
    assert all(len(s["clip_digests"]) == s["n_clips"] for s in (cal, acc, rep))
    load_bundle(bundle)  # the schema takes the section


def test_fallback_without_validation_selects_on_normals_drift_and_says_so(tiny_run, tiny_synth, tmp_path, monkeypatch):
    given = _spy(monkeypatch)
    res = CliRunner().invoke(export_main, ["--run", str(tiny_run), "--out", str(tmp_path / "b"), "--fp16", "--calib-data", str(tiny_synth),
                                           "--calib-windows", "128", "--accuracy-budget", "fp16=0.005", "--quiet"])
    assert res.exit_code == 0, res.output
    said = [line for line in res.output.splitlines() if line.startswith("accuracy control: no labelled validation set")]
    assert len(said) == 1 and "score drift against FP32 on 32 held-out training normals instead of |dAUC|" in said[0]
    assert "fp16: rho >= 0.99, relative score error <= 0.05" in said[0]
    assert "accuracy control on 32 held-out training normals (score drift vs FP32: no labelled validation set)" in res.output.splitlines()[-1]
    # held-out training normals: two per machine, none of them a calibration clip, no test or validation clip
    assert given and {(c.split, c.label) for c in given} == {("train", 0)}
    assert len({str(c.path) for c in given}) == 32 and {c.machine for c in given} == set(TINY_MACHINES)
    m = _manifest(tmp_path / "b")
    acc, cal = m["data_sets"]["accuracy_control"], m["data_sets"]["calibration"]
    assert acc["kind"] == "normals_drift" and acc["criterion"] == "score_drift" and acc["n_clips"] == 32 and acc["n_anomalous"] == 0
    assert cal is None  # no INT8: nothing was calibrated
    calib = __import__("json").loads((tiny_run / "calibration" / "calibration.json").read_text())
    used = {calib["sources"][i]["sha256"][:DIGEST_CHARS] for i in calib["calibration_clips"]}
    assert not used & set(acc["clip_digests"])
    assert m["fp16"]["accuracy_criterion"] == "score_drift" and m["fp16"]["score_budget"]["min_spearman"] == 0.99
    assert m["fp16"]["accuracy_rounds"][-1]["over_budget"] == []


def test_bad_val_data_is_one_line(tiny_run, tiny_synth, tmp_path):
    for val, message in ((tmp_path / "missing", "data root is not a directory"),
                         (tiny_synth / "fan" / "train", "no labelled validation clips")):
        res = CliRunner().invoke(export_main, ["--run", str(tiny_run), "--out", str(tmp_path / "b"), "--int8", "--calib-data", str(tiny_synth),
                                               "--accuracy-budget", "0.01", "--val-data", str(val), "--quiet"])
        assert res.exit_code == 1 and res.output.count("\n") == 1 and res.output.startswith("error: ") and message in res.output, res.output
    assert not (tmp_path / "b").exists()


def _copy_as_test(sources, root):
    """A data root whose test split holds copies of ``sources`` (renamed into the layout)."""
    for k, p in enumerate(sources):
        machine_type = p.parent.parent.name
        dest = root / machine_type / "test" / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest)
    return root


@pytest.mark.parametrize("which", ["accuracy-control", "calibration"])
def test_parity_refuses_a_test_set_that_overlaps(val_bundle, tiny_run, tiny_synth, tiny_val, tmp_path, which):
    bundle = val_bundle[0]
    if which == "accuracy-control":
        data = _copy_as_test(sorted(tiny_val.rglob("*.wav"))[:5], tmp_path / "data")
        expected = "are in the bundle's accuracy-control set (96 labelled validation clips (48 normal + 48 anomalous))"
    else:
        cal = set(_manifest(bundle)["data_sets"]["calibration"]["clip_digests"])
        normals = [p for p in sorted(tiny_synth.rglob("train/*.wav")) if sha256_file(p)[:DIGEST_CHARS] in cal][:3]
        data = _copy_as_test(normals, tmp_path / "data")
        expected = "are in the bundle's calibration set"
    for extra in (sorted(tiny_synth.rglob("test/anomaly_*.wav"))[:2]):  # honest test clips beside them
        shutil.copyfile(extra, data / extra.parent.parent.name / "test" / extra.name)
    res = CliRunner().invoke(parity_main, ["--run", str(tiny_run), "--bundle", str(bundle), "--data", str(data), "--quiet"])
    assert res.exit_code == 1, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("error: refusing to report on ") and expected in res.output
    assert "Traceback" not in res.output


def test_parity_prints_the_set_sizes(val_bundle):
    res = CliRunner().invoke(parity_main, ["--bundle", str(val_bundle[0]), "--quiet"])
    assert res.exit_code == 0, res.output
    line = next(line for line in res.output.splitlines() if line.startswith("sets: "))
    assert "calibration " in line and "accuracy control 96 labelled validation clips (48 normal + 48 anomalous)" in line
    assert "report 128 labelled test clips of the bundle's reference set (64 normal + 64 anomalous)" in line


def test_device_parity_refuses_a_manifest_whose_report_set_overlaps(val_bundle, tmp_path):
    broken = tmp_path / "b"
    shutil.copytree(val_bundle[0], broken)
    m = _manifest(broken)
    rep = m["data_sets"]["report"]
    rep["clip_digests"][0] = m["data_sets"]["accuracy_control"]["clip_digests"][0]
    (broken / "manifest.yaml").write_text(yaml.safe_dump(m, sort_keys=False))  # the manifest itself is not in files
    res = CliRunner().invoke(parity_main, ["--bundle", str(broken), "--quiet"])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert res.output.startswith("error: refusing to report on the bundle's reference set: 1 of its 128 clips")


def test_bundles_without_data_sets_still_load_and_say_so(tiny_bundle, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    m = _manifest(old)
    del m["data_sets"]
    (old / "manifest.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    load_bundle(old)
    res = CliRunner().invoke(parity_main, ["--bundle", str(old), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "records no calibration or accuracy-control set" in res.output and "not checked" in res.output


@pytest.mark.parametrize("change, message", [
    (lambda s: s["report"].update(n_clips=3), "clip_digests: 128 digests for n_clips 3"),
    (lambda s: s["report"].update(kind="training_normals"), "data_sets.report.kind"),
    (lambda s: s["calibration"]["clip_digests"].__setitem__(0, "xyz"), "data_sets.calibration.clip_digests.0"),
])
def test_schema_checks_the_data_sets(tiny_bundle, tmp_path, change, message):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_bundle, bad)
    m = _manifest(bad)
    change(m["data_sets"])
    (bad / "manifest.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    with pytest.raises(BundleError, match=message):
        load_bundle(bad)
