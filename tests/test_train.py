import csv

import pytest
import torch
from click.testing import CliRunner

from mtad.edge_runtime.errors import ConfigError, DatasetError
from mtad.train.checkpoint import load_checkpoint, model_from_checkpoint
from mtad.train.cli import main as train_main
from mtad.train.config import load_config
from mtad.train.trainer import train_run

from .conftest import TINY_MACHINES, TINY_TYPES


def test_run_holds_everything_and_losses_fall(tiny_run):
    for name in ("checkpoint.pt", "config.yaml", "train_log.csv", "loss_curve.png", "stats.npz"):
        assert (tiny_run / name).exists(), name
    rows = list(csv.DictReader(open(tiny_run / "train_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    ckpt = load_checkpoint(tiny_run)  # weights_only=True inside
    assert ckpt["class_map"] == TINY_MACHINES
    assert set(ckpt["normalization"]) == set(TINY_TYPES)
    assert ckpt["feature_config"]["n_fft"] == 2048


def test_checkpoint_round_trip(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    model = model_from_checkpoint(ckpt)
    again = model_from_checkpoint(torch.load(tiny_run / "checkpoint.pt", weights_only=True))
    x = torch.randn(2, 128, model.cfg.window)
    with torch.no_grad():
        for a, b in zip(model(x), again(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_equals_uninterrupted(tiny_synth, tmp_path):
    full = tmp_path / "full"
    part = tmp_path / "part"
    train_run(tiny_synth, full, load_config("tiny", epochs=2), progress=False)
    train_run(tiny_synth, part, load_config("tiny", epochs=1), progress=False)
    ckpt = torch.load(part / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["train"]["covariance"]  # as a run made before that setting existed: still resumable
    torch.save(ckpt, part / "checkpoint.pt")
    train_run(tiny_synth, part, load_config("tiny", epochs=2), resume=True, progress=False)
    a, b = load_checkpoint(full), load_checkpoint(part)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


@pytest.mark.parametrize("task", ["recon", "classify"])
def test_ablations_train_with_their_single_loss(tiny_synth, tmp_path, task):
    result = train_run(tiny_synth, tmp_path / task, load_config("tiny", epochs=1, task=task), progress=False)
    h = result.history[0]
    if task == "recon":
        assert h["recon_loss"] > 0 and h["class_loss"] == 0
    else:
        assert h["class_loss"] > 0 and h["recon_loss"] == 0
    assert result.stats.task == task


def test_bad_inputs(tmp_path, tiny_synth, tiny_run):
    with pytest.raises(DatasetError, match="no clips"):
        train_run(tmp_path, tmp_path / "o", load_config("tiny"), progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_run(tiny_synth, tiny_run, load_config("tiny"), progress=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key.*learning_rate"):
        load_config("tiny", cfg)
    with pytest.raises(ConfigError, match="receptive field"):
        cfg.write_text("model:\n  window: 5\n")
        load_config("tiny", cfg)


def test_cli_errors_are_one_line(tmp_path, tiny_synth, tiny_run):
    runner = CliRunner()
    res = runner.invoke(train_main, ["--data", str(tmp_path), "--out", str(tmp_path / "r"), "--preset", "tiny"])
    assert res.exit_code == 1 and res.output.startswith("error: ") and "Traceback" not in res.output
    res = runner.invoke(train_main, ["--data", str(tiny_synth), "--out", str(tiny_run), "--preset", "tiny"])
    assert res.exit_code == 1 and "already holds a run" in res.output
    unlabelled = tmp_path / "unlabelled" / "fan" / "train"
    unlabelled.mkdir(parents=True)
    (unlabelled / "recording_01.wav").write_bytes(b"RIFF")
    res = runner.invoke(train_main, ["--data", str(tmp_path / "unlabelled"), "--out", str(tmp_path / "r2"), "--preset", "tiny"])
    assert res.exit_code == 1 and "no clips in the DCASE2020 layout" in res.output


def test_arcface_head_trains_exports_and_scores_embed(tiny_synth, tmp_path):
    """The ArcFace option end to end: YAML config, training, ONNX export with the embedding
    output, and the embed score on the held-out normals."""
    import numpy as np

    from mtad.edge_runtime.runners import OnnxRuntimeRunner
    from mtad.export.onnx_export import OUTPUTS, export_fp32
    from mtad.train.reference import TorchRunner

    cfg_file = tmp_path / "arc.yaml"
    cfg_file.write_text("model:\n  head: arcface\ntrain:\n  components: [recon, embed, spectral]\n")
    cfg = load_config("tiny", cfg_file, epochs=1)
    result = train_run(tiny_synth, tmp_path / "run", cfg, progress=False)
    assert result.history[0]["class_loss"] > 0 and result.stats.components == ("recon", "embed", "spectral")
    model = model_from_checkpoint(load_checkpoint(tmp_path / "run"))
    export_fp32(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((3, 128, cfg.model.window)).astype(np.float32)
    ours, ref = OnnxRuntimeRunner(tmp_path / "m.onnx").infer(x), TorchRunner(model).infer(x)
    assert len(ours) == len(OUTPUTS) == 3
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_early_stopping_state_machine():
    from mtad.train.early_stopping import EarlyStopping

    model = torch.nn.Linear(2, 1)
    es = EarlyStopping(patience=2)
    assert [es.update(e, loss, model) for e, loss in enumerate([1.0, 0.5, 0.7, 0.6, 0.9], 1)] == [False, False, False, True, True]
    assert es.best_epoch == 2 and es.best_loss == 0.5
    again = EarlyStopping.from_dict(es.to_dict())
    assert (again.best_epoch, again.patience) == (2, 2) and set(again.best_state) == {"weight", "bias"}


def test_early_stopping_stops_on_the_heldout_loss_and_keeps_the_best_weights(tiny_synth, tmp_path, monkeypatch):
    """Held-out losses 1.0, 0.5, 0.7, 0.8: patience 2 stops after epoch 4 of 8 and keeps epoch 2's
    weights, in the checkpoint the scoring statistics and the export read."""
    from mtad.train import trainer

    scripted, seen = iter([1.0, 0.5, 0.7, 0.8, 0.9]), []
    real = trainer.heldout_loss

    def fake(loss_fn, model, x, target, device):
        real(loss_fn, model, x, target, device)  # the real path runs too
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    monkeypatch.setattr(trainer, "heldout_loss", fake)
    cfg = load_config("tiny", epochs=8, early_stopping=2)
    result = train_run(tiny_synth, tmp_path / "run", cfg, progress=False, log=lambda m: None)
    assert len(result.history) == 4 and result.best_epoch == 2
    assert [h["val_loss"] for h in result.history] == [1.0, 0.5, 0.7, 0.8]
    ckpt = load_checkpoint(tmp_path / "run")
    for k, v in ckpt["model_state"].items():
        torch.testing.assert_close(v, seen[1][k], rtol=0, atol=0)
    assert any(not torch.equal(v, seen[3][k]) for k, v in ckpt["model_state"].items())
    rows = list(csv.DictReader(open(tmp_path / "run" / "train_log.csv")))
    assert [float(r["val_loss"]) for r in rows] == [1.0, 0.5, 0.7, 0.8]
    # resuming a stopped run trains nothing more
    again = train_run(tiny_synth, tmp_path / "run", cfg, resume=True, progress=False, log=lambda m: None)
    assert len(again.history) == 4 and again.best_epoch == 2


def test_heldout_loss_is_real_and_early_stopping_needs_a_holdout(tiny_synth, tmp_path):
    cfg = load_config("tiny", epochs=2, early_stopping=5)
    result = train_run(tiny_synth, tmp_path / "run", cfg, progress=False, log=lambda m: None)
    vals = [h["val_loss"] for h in result.history]
    assert len(vals) == 2 and all(0 < v < 10 for v in vals) and result.best_epoch in (1, 2)
    with pytest.raises(ConfigError, match="stats-holdout"):
        train_run(tiny_synth, tmp_path / "in", load_config("tiny", epochs=1, early_stopping=1, stats_holdout=0.0), progress=False, log=lambda m: None)


def test_in_sample_warning_only_where_a_model_output_is_scored(tiny_synth, tmp_path):
    # --stats-holdout 0 puts the model's training clips into the model-based statistics; a
    # model-free score is out of sample on every training normal either way, so it gets no warning
    for components, warned in (("recon,acoustic", True), ("acoustic", False)):
        logs = []
        train_run(tiny_synth, tmp_path / components, load_config("tiny", epochs=1, stats_holdout=0.0, components=components),
                  progress=False, log=logs.append)
        assert any("in-sample" in m for m in logs) == warned, logs
        # out of sample (model-free): all 8 training normals of each id set its threshold, and the log says how far that may miss
        ranges = [m for m in logs if m.startswith("thresholds from")]
        assert ranges == ([] if warned else ["thresholds from 8 out-of-sample normals an id: for 8 ids in 10 the false-alarm rate on new "
                                             "normals lies in an unknown range (8 normals: too few for a distribution-free threshold) "
                                             "(target 0.1); about 69 an id keep it within +-0.05"]), logs
