import numpy as np
import pytest
import torch

from mtad.train import pseudo_anomalies
from mtad.train.checkpoint import load_checkpoint
from mtad.train.config import load_config
from mtad.train.trainer import losses, train_run


def test_each_kind_changes_one_band_only_and_as_described():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 128, 64)
    kinds = torch.arange(4)  # band_noise, impulses, modulation, attenuation
    y = pseudo_anomalies.perturb(x, kinds, gen)
    for i, kind in enumerate(pseudo_anomalies.KINDS):
        changed = (y[i] != x[i]).any(dim=1).nonzero().ravel()
        assert 4 <= changed.numel() <= 24 and (changed.diff() == 1).all(), kind  # one contiguous band
        band = y[i, changed]
        if kind == "band_noise":
            assert (band > 0).all()  # log-adding energy only raises a bin
        elif kind == "impulses":
            hit = (band != 0).any(dim=0).nonzero().ravel()
            assert hit.numel() >= 64 // 12 and (band[:, hit] > 0).all()
            assert len(set(hit.diff().tolist())) == 1  # evenly spaced frames
        elif kind == "modulation":
            assert band.mean().abs() < 0.5 and band.std() > 0.15  # a swing about the original level
        else:
            assert (band < -0.4).all()
    again = pseudo_anomalies.perturb(x, kinds, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y, again)  # seeded


def test_pseudo_targets_move_the_id_mass_to_the_kind_block():
    target = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])
    out = pseudo_anomalies.pseudo_targets(target, torch.tensor([0, 3]))
    assert out.shape == (2, 15) and pseudo_anomalies.n_classes(3, 0.5) == 15 and pseudo_anomalies.n_classes(3, 0.0) == 3
    torch.testing.assert_close(out[0, 3:6], target[0])  # block 1 = band_noise
    torch.testing.assert_close(out[1, 12:15], target[1])  # block 4 = attenuation
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2))


def test_reconstruction_loss_sees_clean_windows_only():
    cfg = load_config("tiny").model
    from dataclasses import replace

    from mtad.train.model import MultitaskModel

    torch.manual_seed(0)
    model = MultitaskModel(replace(cfg, n_classes=2 * (1 + len(pseudo_anomalies.KINDS)))).eval()
    x = torch.randn(6, 128, cfg.window)
    target = torch.eye(2)[torch.tensor([0, 1, 0, 1, 0, 1])]
    with torch.no_grad():
        clean = losses(model, x, target[:, :2].repeat(1, 1), "recon", cfg.warmup)
        mixed = losses(model, x, target, "multitask", cfg.warmup, pseudo=0.5, gen=torch.Generator().manual_seed(1))
    assert mixed[1].item() == pytest.approx(clean[1].item(), rel=1e-6)
    assert mixed[2].item() > 0


@pytest.mark.slow
def test_pseudo_anomaly_classes_train_and_score_the_class_component(tiny_synth, tmp_path):
    cfg = load_config("tiny", epochs=1, pseudo_anomalies=0.5, components="recon,class,spectral")
    result = train_run(tiny_synth, tmp_path / "run", cfg, progress=False)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["config"]["model"]["n_classes"] == 16 * 5  # 16 ids, normal + 4 pseudo-anomaly blocks
    assert result.stats.components == ("recon", "class", "spectral")
    cal = np.array([result.stats.calibration[f"class|{m}"] for m in ckpt["class_map"]])
    assert np.isfinite(cal).all() and (cal[:, 1] > 0).all()
