"""Detection quality that can fail: a small model on a synthetic set with clear faults must
detect them, and the model's own (reconstruction) score must carry signal, not only the
model-free spectral statistics."""

from __future__ import annotations

import pytest

from mtad.train.config import load_config
from mtad.train.evaluate import evaluate
from mtad.train.synth import SynthConfig
from mtad.train.synth_writer import write_dataset
from mtad.train.trainer import train_run


@pytest.fixture(scope="module")
def clear_faults(tmp_path_factory):
    """fan and pump x 2 ids, faults at 4x the default strength, 16 normal training clips per id
    (12 train the model, 4 are held out for the statistics), 12 + 12 test clips per id."""
    out = tmp_path_factory.mktemp("clear")
    write_dataset(SynthConfig(types=("fan", "pump"), ids=2, train=16, test=12, seconds=4.0, severity=4.0, seed=21), out, workers=2, progress=False)
    run = out / "run"
    train_run(out, run, load_config("tiny", epochs=6, seed=0), progress=False, log=lambda m: None)
    return out, run


@pytest.mark.slow
def test_small_model_detects_clear_faults(clear_faults):
    data, run = clear_faults
    metrics, scores = evaluate(run, data, progress=False)
    assert metrics["mean"]["auc"] >= 0.8, metrics["types"]
    recon = [m["component_auc"]["recon"] for m in metrics["machines"]]
    assert sum(recon) / len(recon) >= 0.75, recon  # the learned score alone, not just the spectral statistics
    assert all(m["false_alarm_rate"] is not None for m in metrics["machines"])
