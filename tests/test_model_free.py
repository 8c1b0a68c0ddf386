"""A bundle whose scores are model-free (``--components acoustic``) runs no inference on the device."""

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.cli import main as edge_main
from mtad.edge_runtime.dataset import scan_dataset
from mtad.edge_runtime.pipeline import EdgeScorer, choose_runner
from mtad.edge_runtime.runners import NoModelRunner

from .test_imports import run_edge_blocked


class _Refuses:
    backend, precision = "onnxruntime", "fp32"

    def infer(self, batch):
        raise AssertionError("a model-free bundle ran the model")


@pytest.fixture(scope="module")
def model_free(tiny_synth, tmp_path_factory):
    """(run dir, bundle dir) of a tiny run scored by the `acoustic` component alone."""
    from mtad.export.bundle_writer import export_bundle
    from mtad.train.config import load_config
    from mtad.train.trainer import train_run

    root = tmp_path_factory.mktemp("model-free")
    train_run(tiny_synth, root / "run", load_config("tiny", epochs=1, seed=0, components="acoustic"), progress=False)
    export_bundle(root / "run", root / "bundle", progress=False, log=lambda m: None)
    return root / "run", root / "bundle"


def test_default_bundle_needs_the_model(tiny_bundle):
    assert load_bundle(tiny_bundle).stats.needs_model


def test_model_free_bundle_carries_no_model(model_free, tiny_synth, tmp_path):
    """Nothing on the device would run a network, so the export writes none (bundle schema 12):
    no models/, no variants, and asking for converted variants of one is a one-line refusal."""
    import shutil

    import yaml

    from mtad.edge_runtime.errors import BundleError, ConfigError
    from mtad.export.bundle_writer import export_bundle

    run_dir, bundle_dir = model_free
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    assert bundle.variants == {} and m["variants"] == {} and not (bundle_dir / "models").exists()
    assert set(m["files"]) == {"stats.npz"} and m["export_check"] is None and m["sizes_bytes"] == {}
    for flags in ({"fp16": True}, {"int8": True, "calib_data": tiny_synth}, {"accuracy_budget": {"fp16": 0.01}, "calib_data": tiny_synth}):
        with pytest.raises(ConfigError, match="model-free, so its bundle carries no network"):
            export_bundle(run_dir, tmp_path / "b", progress=False, log=lambda m: None, **flags)
    assert list(tmp_path.iterdir()) == []
    # a model-free manifest that lists a model is refused: nothing would run it
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir, bad)
    manifest = yaml.safe_load((bad / "manifest.yaml").read_text())
    manifest["variants"] = {"fp32": {"precision": "fp32", "kind": "onnx", "file": "stats.npz"}}
    (bad / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(BundleError, match="a model-free bundle .* carries no model, but lists fp32"):
        load_bundle(bad)
    from mtad.export.cli import main as export_main

    res = CliRunner().invoke(export_main, ["--run", str(run_dir), "--out", str(tmp_path / "cli"), "--quiet"])
    assert res.exit_code == 0 and "model-free (acoustic): no network, statistics" in res.output, res.output
    res = CliRunner().invoke(export_main, ["--run", str(run_dir), "--out", str(tmp_path / "cli2"), "--int8", "--calib-data", str(tiny_synth)])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "--int8: the run's score (acoustic) is model-free" in res.output, res.output
    res = CliRunner().invoke(edge_main, ["build-engine", "--bundle", str(bundle_dir)])
    assert res.exit_code == 1 and "no engine to build" in res.output and "Traceback" not in res.output


def test_model_free_bundle_parity_on_the_device(model_free, tiny_synth, tmp_path):
    """With --calib-data the model-free bundle ships reference clips and their export-time scores;
    the device's parity check compares its one scorer against them."""
    from mtad.export.bundle_writer import export_bundle
    from mtad.export.parity import device_parity

    out = tmp_path / "b"
    export_bundle(model_free[0], out, calib_data=tiny_synth, progress=False, log=lambda m: None)
    bundle = load_bundle(out)
    assert set(bundle.manifest["reference"]["scores"]) == {"model-free"} and bundle.variants == {}
    results, skipped, reference, scored = device_parity(out, {"fp32": 0.001, "fp16": 0.005, "int8": 0.01}, log=lambda m: None)
    assert list(results) == ["model-free"] and not skipped and len(reference) == bundle.manifest["reference"]["n_clips"]
    assert results["model-free"]["max_rel_error"] < 1e-6 and results["model-free"]["decision_agreement"] == 1.0
    from mtad.export.parity_cli import main as parity_main

    res = CliRunner().invoke(parity_main, ["--bundle", str(out), "--quiet"])
    assert res.exit_code == 0 and "parity (recorded statistics scores on the bundle's reference set): 1 variant(s)" in res.output, res.output


def test_model_free_scores_equal_evaluation_without_inference(model_free, tiny_synth):
    from mtad.train.evaluate import load_run, score_split

    run_dir, bundle_dir = model_free
    bundle = load_bundle(bundle_dir)
    assert not bundle.stats.needs_model and bundle.stats.components == ("acoustic",)
    assert bundle.manifest["scoring"]["thresholds_from"] == "all_training_normals"
    assert isinstance(choose_runner(bundle, "auto"), NoModelRunner)
    scorer = EdgeScorer(bundle, _Refuses())
    scores, _ = score_split(load_run(run_dir), scan_dataset(tiny_synth), progress=False)
    for s in scores[::5]:
        edge = scorer.score_file(s.path)
        assert edge.inference_ms == 0 and set(edge.components) == {"acoustic"}
        assert edge.score == pytest.approx(s.score, rel=1e-6, abs=1e-6)
        assert edge.threshold == pytest.approx(s.threshold) and edge.anomaly == s.anomaly


def test_model_free_blocks_give_the_whole_file_score(model_free, tiny_synth, tmp_path):
    scorer = EdgeScorer(load_bundle(model_free[1]), _Refuses())
    clips = sorted((tiny_synth / "pump" / "test").glob("*.wav"))
    y = np.resize(np.concatenate([load_audio(c) for c in clips]), 16000 * 17)
    path = tmp_path / "long.wav"
    sf.write(path, y, 16000, subtype="FLOAT")
    whole = scorer.score_audio(load_audio(path), "pump/id_02")
    blocks = scorer.score_file_blocks(path, "pump/id_02", block_seconds=2.3)
    assert blocks.score == pytest.approx(whole.score, rel=1e-6, abs=1e-6)
    assert blocks.components["acoustic"] == pytest.approx(whole.components["acoustic"], rel=1e-6)


def test_edge_cli_and_bench_report_no_backend_and_load_no_torch(model_free, tiny_synth):
    bundle_dir = model_free[1]
    clip = sorted((tiny_synth / "fan" / "test").glob("*.wav"))[0]
    res = run_edge_blocked(["--bundle", bundle_dir, "--backend", "onnxruntime", clip],
                           after="assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules\n")
    assert res.returncode == 0, res.stderr
    rec = json.loads(res.stdout.splitlines()[0])
    assert rec["backend"] == "none" and np.isfinite(rec["score"]) and "model-free" in res.stderr
    res = CliRunner().invoke(edge_main, ["bench", "--bundle", str(bundle_dir), "--clip", str(clip), "--repeats", "2"])
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith("| none")]
    assert len(rows) == 1, res.stdout


def test_model_free_enrollment_loads_neither_torch_nor_onnxruntime(model_free, tiny_synth, tmp_path):
    import shutil

    bundle_dir = tmp_path / "b"
    shutil.copytree(model_free[1], bundle_dir)
    train = sorted((tiny_synth / "fan" / "train").glob("normal_id_00_*.wav"))  # 8 clips of 3 s -> 16 of 1.5 s
    res = run_edge_blocked(["enroll", "--bundle", bundle_dir, "--machine", "fan/id_99", "--seconds-per-clip", "1.5", *train],
                           before="sys.modules['onnxruntime'] = None\n")
    assert res.returncode == 0, res.stderr
    bundle = load_bundle(bundle_dir)
    assert "fan/id_99" in bundle.stats.enrolled and not bundle.stats.needs_model
    clip = sorted((tiny_synth / "fan" / "test").glob("*id_00*.wav"))[0]
    r = EdgeScorer(bundle, _Refuses()).score_file(clip, "fan/id_99")
    assert np.isfinite(r.score) and r.inference_ms == 0
    # the enrolled reference clips carry one set of scores, by the bundle's one scorer
    ref = bundle.manifest["reference_enrolled"]["scores"]
    assert set(ref) == {"model-free"} and len(ref["model-free"]) == len(bundle.manifest["reference_enrolled"]["keys"])


def test_parity_of_a_model_free_bundle_is_one_exact_scorer(model_free, tiny_synth):
    from mtad.export.parity import full_parity

    run_dir, bundle_dir = model_free
    results, skipped, reference, scored = full_parity(run_dir, bundle_dir, tiny_synth, {"fp32": 0.001, "fp16": 0.005, "int8": 0.01},
                                                      progress=False, log=lambda m: None)
    assert list(results) == ["model-free"] and not skipped
    res = results["model-free"]
    assert res["max_abs_dauc"] == 0 and not res["over_budget"] and not res["score_over_budget"] and res["n_missing"] == 0
    assert res["max_rel_error"] < 1e-6 and res["decision_agreement"] == 1.0


def test_benchmark_model_free_rows_score_as_a_model_free_run(model_free, tiny_synth):
    """benchmarks/accuracy.py scores its model-free rows (the default's among them) without training
    anything; they must be the scores and thresholds mtad-train gives a model-free run."""
    from mtad.train.evaluate import load_run, score_split
    from mtad.train.feature_cache import load_features

    from .conftest import benchmark_module

    acc = benchmark_module("accuracy.py", "accuracy_benchmark")
    index = scan_dataset(tiny_synth)
    train_store = load_features(index.select("train", label=0), progress=False)
    test_store = load_features(index.select("test"), progress=False)
    scores, counts = acc.model_free_scorer(train_store, test_store)("fusion", ("acoustic",), None)
    run_scores, _ = score_split(load_run(model_free[0]), index, progress=False)
    by_path = {s.path: s for s in run_scores}
    assert len(scores) == len(run_scores) == len(test_store) and set(counts.values()) == {8}  # every training normal
    for s in scores:
        assert s.score == pytest.approx(by_path[s.path].score, rel=1e-9) and s.threshold == pytest.approx(by_path[s.path].threshold, rel=1e-9)


def test_default_score_ignores_the_microphone_gain(model_free, tiny_synth):
    """Every part of the `acoustic` statistic is level-free (the band means relative to the clip's
    level, bundle schema 7), so the same sound 12 dB quieter scores the same: a new microphone gain
    needs no re-enrollment. The band means' absolute level would move the score.

    Over a microphone's noise floor (-55 dBFS white noise) that holds for 12 dB. The synthetic
    clips' top mel bands are cut by an anti-alias filter down to the front end's fixed log floor
    (16-bit quantisation noise); each frame floored 80 dB below its loudest bin (bundle schema 8)
    lets the statistic follow a 6 dB turn-down of the bare files too, up to the frames too quiet for
    that floor to stay above the fixed one."""
    from mtad.edge_runtime import scoring

    bundle = load_bundle(model_free[1])
    scorer = EdgeScorer(bundle, _Refuses())
    clips = [c for c in scan_dataset(tiny_synth).select("test") if c.machine in bundle.stats.machines][::4]
    noise = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 10 ** (-55 / 20)
    for clip in clips:
        audio = load_audio(clip.path, 16000)
        audio = audio + noise[: len(audio)]
        loud, quiet = scorer.score_audio(audio, clip.machine), scorer.score_audio(audio / 4, clip.machine)
        assert quiet.score == pytest.approx(loud.score, rel=1e-3, abs=1e-3) and quiet.anomaly == loud.anomaly
    moved, default_top_db = {}, scoring.SPECTRAL_TOP_DB
    assert default_top_db == 80.0
    for top_db in (80.0, None):
        scoring.SPECTRAL_TOP_DB = top_db
        try:
            moved[top_db] = []
            for clip in clips:
                audio = load_audio(clip.path, 16000)
                loud, quiet = scorer.score_audio(audio, clip.machine), scorer.score_audio(audio / 2, clip.machine)
                moved[top_db].append(abs(quiet.score - loud.score))
        finally:
            scoring.SPECTRAL_TOP_DB = default_top_db
    # in score units (the ids' thresholds are 1-2): every bare clip moves less under the frame-relative
    # floor than any clip moves under the fixed floor alone, against the same statistics (measured: at
    # most 0.06 against 0.2-1.7)
    assert max(moved[80.0]) < 0.1 < min(moved[None])
    audio = load_audio(clips[0].path, 16000)
    audio = audio + noise[: len(audio)]
    logmel = scorer.extract(audio)
    quiet = scorer.extract(audio / 4)
    assert np.allclose(scoring.spectral_vector(quiet), scoring.spectral_vector(logmel), atol=1e-3)
    scoring.RELATIVE_LEVEL = False
    try:
        levels = scoring.spectral_vector(quiet)[:4] - scoring.spectral_vector(logmel)[:4]
    finally:
        scoring.RELATIVE_LEVEL = True
    assert np.allclose(levels, -20 * np.log10(4), atol=1e-2)  # 12 dB down in every band
