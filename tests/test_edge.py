import json
import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mtad.edge_runtime.audio import load_audio, resample
from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.cli import EXIT_INPUTS_FAILED
from mtad.edge_runtime.cli import main as edge_main
from mtad.edge_runtime.dataset import scan_dataset
from mtad.edge_runtime.pipeline import EdgeScorer
from mtad.train.evaluate import load_run, score_split

from .conftest import shared_data
from .test_imports import run_edge_blocked


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_one_json_line_per_real_mimii_clip(tiny_bundle):
    pairs = shared_data("mimii-pairs-0db")
    res = CliRunner().invoke(edge_main, ["--bundle", str(tiny_bundle), str(pairs)])
    assert res.exit_code == 0, res.output
    lines = json_lines(res.stdout)
    assert len(lines) == len(list(pairs.rglob("*.wav"))) == 32
    for rec in lines:
        assert {"time", "machine", "score", "threshold", "anomaly", "backend", "precision", "latency_ms", "dropped_samples"} <= set(rec)
        assert np.isfinite(rec["score"]) and rec["dropped_samples"] == 0
    assert {r["machine"] for r in lines} == {f"{t}/id_{i:02d}" for t in ("fan", "pump", "slider", "valve") for i in (0, 2, 4, 6)}


def test_whole_file_pipeline_runs_with_torch_blocked(tiny_bundle, tiny_synth):
    clip = sorted((tiny_synth / "fan" / "test").glob("*.wav"))[0]
    res = run_edge_blocked(["--bundle", tiny_bundle, "--precision", "int8", clip], after="assert 'torch' not in sys.modules\nprint('no torch')\n")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[0])["precision"] == "int8" and res.stdout.strip().endswith("no torch")


def test_edge_scores_equal_eval_scores_for_same_variant(tiny_bundle, tiny_run, tiny_synth):
    bundle = load_bundle(tiny_bundle)
    runner = bundle.onnx_runner("fp32", "CPUExecutionProvider")
    scorer = EdgeScorer(bundle, runner)
    run = load_run(tiny_run)
    eval_ort, _ = score_split(run, scan_dataset(tiny_synth), runner=runner, progress=False)
    eval_torch, _ = score_split(run, scan_dataset(tiny_synth), progress=False)
    for e_ort, e_torch in list(zip(eval_ort, eval_torch))[:12]:
        edge = scorer.score_file(e_ort.path)
        # same variant: the same numbers up to float32 rounding (abs: a fused z-score can sit near 0)
        assert edge.score == pytest.approx(e_ort.score, rel=1e-6, abs=1e-6)
        assert edge.score == pytest.approx(e_torch.score, rel=1e-3, abs=1e-3)  # ONNX FP32 vs PyTorch


def test_bad_inputs_are_reported_and_the_rest_scored(tiny_bundle, tiny_synth, tmp_path):
    good = sorted((tiny_synth / "fan" / "test").glob("*.wav"))[0]
    folder = tmp_path / "fan" / "test"
    folder.mkdir(parents=True)
    (folder / "normal_id_00_00000001.wav").write_bytes(b"garbage")
    sf.write(folder / "normal_id_00_00000002.wav", np.zeros(48000, np.float32), 16000)
    sf.write(folder / "normal_id_00_00000003.wav", np.zeros(800, np.float32) + 0.1, 16000)
    y = load_audio(good)
    sf.write(folder / "normal_id_00_00000004.wav", resample(y, 16000, 44100), 44100, subtype="FLOAT")
    res = CliRunner().invoke(edge_main, ["--bundle", str(tiny_bundle), str(good), str(folder)])
    assert res.exit_code == EXIT_INPUTS_FAILED
    lines = json_lines(res.stdout)
    assert len(lines) == 2
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 3 and any("unreadable" in e for e in errors) and any("silence" in e for e in errors) and any("too short" in e for e in errors)
    # a 44.1 kHz copy of the clip scores close to the 16 kHz original
    assert lines[1]["score"] == pytest.approx(lines[0]["score"], rel=0.1, abs=0.5)


def test_eight_channel_file_and_bundle_errors(tiny_bundle, tmp_path):
    eight = shared_data("mimii-8ch") / "fan_id_00_normal_00000000_8ch.wav"
    res = CliRunner().invoke(edge_main, ["--bundle", str(tiny_bundle), "--machine", "fan/id_00", "--channel", "mean", str(eight)])
    assert res.exit_code == 0, res.output
    assert json_lines(res.stdout)[0]["machine"] == "fan/id_00"
    res = CliRunner().invoke(edge_main, ["--bundle", str(tmp_path / "nope"), str(eight)])
    assert res.exit_code == 1 and res.output.startswith("error: ") and "not a bundle" in res.output
    res = CliRunner().invoke(edge_main, ["--bundle", str(tiny_bundle), "--channel", "left", str(eight)])
    assert res.exit_code == 2 and "--channel takes a channel number" in res.output
    res = CliRunner().invoke(edge_main, ["--bundle", str(tiny_bundle), "--machine", "robot/id_00", str(eight)])
    assert res.exit_code == EXIT_INPUTS_FAILED and "not in this bundle" in res.output


def test_bench_reports_every_variant(tiny_bundle, tiny_synth):
    clip = sorted((tiny_synth / "valve" / "test").glob("normal_*.wav"))[0]
    res = CliRunner().invoke(edge_main, ["bench", "--bundle", str(tiny_bundle), "--clip", str(clip), "--repeats", "2"])
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.stdout.splitlines() if ln.startswith("| onnxruntime")]
    assert len(rows) == 3 and "real-time factor" in res.stdout
