import json
import shutil

import pytest

from click.testing import CliRunner

from mtad.train.eval_cli import main as eval_main
from mtad.train.evaluate import evaluate


def test_eval_cli_json_plots_and_schema(tiny_run, tiny_synth, tmp_path):
    res = CliRunner().invoke(eval_main, ["--run", str(tiny_run), "--data", str(tiny_synth), "--json", str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots"), "--baseline", "--quiet"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert {"machines", "types", "mean"} <= set(m)
    assert len(m["machines"]) == 16
    for e in m["machines"]:
        assert {"machine_type", "machine_id", "auc", "pauc", "n_normal", "n_anomaly"} <= set(e)
        assert e["n_normal"] == e["n_anomaly"] == 4 and 0 <= e["auc"] <= 1
        assert e["fp"] + e["tn"] == 4 and e["tp"] + e["fn"] == 4 and e["false_alarm_rate"] == e["fp"] / 4
        assert set(e["component_auc"]) == {"recon", "acoustic"}
    assert set(m["types"]) == {"fan", "pump", "slider", "valve"} and 0 <= m["mean"]["auc"] <= 1
    assert (tmp_path / "plots" / "roc.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "score_histograms.png").stat().st_size > 1000
    assert "mean AUC" in res.output and "false-alarm rate" in res.output and "simple baseline AUC" in res.output
    assert set(m["baseline"]["types"]) == {"fan", "pump", "slider", "valve"}


def test_unreadable_clip_is_excluded_and_counted(tiny_run, tiny_synth, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    broken = sorted((data / "fan" / "test").glob("anomaly_*.wav"))[0]
    broken.write_bytes(b"not audio at all")
    metrics, scores = evaluate(tiny_run, data, progress=False)
    assert metrics["n_excluded"] == 1 and metrics["excluded"][0]["path"] == str(broken)
    assert str(broken) not in {s.path for s in scores}
    assert len(scores) == 16 * 8 - 1
    fan00 = next(m for m in metrics["machines"] if m["machine_id"] == "id_00" and m["machine_type"] == "fan")
    assert broken.name.startswith("anomaly_id_00") and fan00["n_anomaly"] == 3


def test_refit_and_compare(tiny_run, tiny_synth, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "stats.npz").unlink()
    res = CliRunner().invoke(eval_main, ["--run", str(run), "--data", str(tiny_synth), "--quiet"])
    assert res.exit_code == 1 and "--refit" in res.output
    res = CliRunner().invoke(eval_main, ["--run", str(run), "--data", str(tiny_synth), "--refit", "--quiet", "--compare", str(tiny_run)])
    assert res.exit_code == 0, res.output
    assert (run / "stats.npz").exists() and "AUC/pAUC per type" in res.output
    # the refit reuses the run's held-out split, so it reproduces the training-time statistics
    from mtad.edge_runtime.scoring import ScoringStats

    a, b = ScoringStats.load(run / "stats.npz"), ScoringStats.load(tiny_run / "stats.npz")
    assert a.thresholds == pytest.approx(b.thresholds) and a.components == b.components
    # how many out-of-sample normals set each threshold is recorded with the split: 4 held out of 8 an id
    from mtad.train.trainer import read_threshold_clips

    assert read_threshold_clips(tiny_run) == read_threshold_clips(run) == {m: 4 for m in b.class_map}
    res = CliRunner().invoke(eval_main, ["--run", str(run), "--data", str(tiny_synth), "--refit", "--components", "acoustic", "--quiet"])
    assert res.exit_code == 0 and read_threshold_clips(run) == {m: 8 for m in b.class_map}, res.output  # model-free: all 8
    # the paper's scoring is one flag away, and other hold-out fractions are refused (training clips would leak in)
    res = CliRunner().invoke(eval_main, ["--run", str(run), "--data", str(tiny_synth), "--refit", "--scoring", "paper", "--quiet"])
    assert res.exit_code == 0 and "paper scoring" in res.output, res.output
    assert read_threshold_clips(run) == {}  # gamma-fit thresholds promise no rate
    res = CliRunner().invoke(eval_main, ["--run", str(run), "--data", str(tiny_synth), "--refit", "--stats-holdout", "0.5", "--quiet"])
    assert res.exit_code == 1 and "held out 0.25" in res.output
    res = CliRunner().invoke(eval_main, ["--run", str(run), "--data", str(tiny_synth), "--scoring", "paper", "--quiet"])
    assert res.exit_code == 1 and "--refit" in res.output
    # the covariance rule is selectable on refit and recorded with the statistics
    assert b.covariance == "factor"
    res = CliRunner().invoke(eval_main, ["--run", str(run), "--data", str(tiny_synth), "--refit", "--covariance", "ledoit-wolf", "--quiet"])
    assert res.exit_code == 0, res.output
    assert ScoringStats.load(run / "stats.npz").covariance == "ledoit-wolf"
    res = CliRunner().invoke(eval_main, ["--run", str(run), "--data", str(tiny_synth), "--refit", "--quiet"])
    assert res.exit_code == 0 and ScoringStats.load(run / "stats.npz").covariance == "ledoit-wolf"  # a plain refit keeps the rule
    res = CliRunner().invoke(eval_main, ["--run", str(run), "--data", str(tiny_synth), "--covariance", "factor", "--quiet"])
    assert res.exit_code == 1 and "--refit" in res.output
