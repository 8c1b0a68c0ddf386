import csv
import hashlib

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from mtad.edge_runtime.dataset import scan_dataset
from mtad.edge_runtime.features import LogMelExtractor
from mtad.train.synth import MACHINE_TYPES, MODELS, SR, SynthConfig, band_level, fault_band_level, render_clip, render_with_levels
from mtad.train.synth_cli import main as synth_main
from mtad.train.synth_writer import write_dataset


def digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.wav"))}


def test_all_six_types_layout_and_determinism(tmp_path):
    cfg = SynthConfig(ids=3, train=1, test=1, seconds=1.0, seed=3)
    a, b = tmp_path / "a", tmp_path / "b"
    write_dataset(cfg, a, workers=1, progress=False)
    write_dataset(cfg, b, workers=2, progress=False)
    da = digest(a)
    assert da == digest(b)  # byte-identical whatever the worker count
    index = scan_dataset(a)
    assert index.machine_types == sorted(MACHINE_TYPES)
    assert len(index.clips) == 6 * 3 * 3 and not index.skipped.get("name or folder not in the DCASE2020 layout")
    y, sr = sf.read(next(iter(a.rglob("*.wav"))))
    info = sf.info(next(iter(a.rglob("*.wav"))))
    assert sr == 16000 and y.ndim == 1 and info.subtype == "PCM_16" and len(y) == 16000
    rows = list(csv.DictReader(open(a / "synth_manifest.csv")))
    assert {r["fault"] for r in rows if r["label"] == "anomaly"} <= {f for m in MODELS.values() for f in m.faults}


def test_other_seed_gives_other_audio():
    a = render_clip(SynthConfig(seconds=1.0, seed=0), "fan", "id_00", "train", None, 0)
    b = render_clip(SynthConfig(seconds=1.0, seed=1), "fan", "id_00", "train", None, 0)
    assert not np.allclose(a, b)


def test_ids_differ_and_faults_change_the_sound():
    extract = LogMelExtractor()
    cfg = SynthConfig(seconds=4.0, snr_db=(30.0, 30.0))  # nearly clean, to see the machine itself
    for mtype, model in MODELS.items():
        assert len(model.faults) >= 2
        ids = ["id_01", "id_02"] if mtype.startswith("Toy") else ["id_00", "id_02"]
        m0 = extract(render_clip(cfg, mtype, ids[0], "train", None, 0)).mean(axis=1)
        m1 = extract(render_clip(cfg, mtype, ids[1], "train", None, 0)).mean(axis=1)
        assert np.abs(m0 - m1).mean() > 0.5, mtype  # dB: ids differ physically
        for fault in model.faults:
            normal = render_clip(cfg, mtype, ids[0], "test", None, 5)
            faulty = render_clip(cfg, mtype, ids[0], "test", fault, 5)
            assert not np.allclose(normal, faulty), (mtype, fault)


def test_cli_rejects_bad_options(tmp_path):
    res = CliRunner().invoke(synth_main, [str(tmp_path / "o"), "--types", "fan,robot"])
    assert res.exit_code == 1 and "unknown machine type(s) robot" in res.output
    res = CliRunner().invoke(synth_main, [str(tmp_path / "o"), "--snr", "abc"])
    assert res.exit_code == 1 and "--snr" in res.output


def test_val_split_is_written_scanned_and_leaves_train_and_test_unchanged(tmp_path):
    base = SynthConfig(types=("fan", "valve"), ids=1, train=1, test=1, seconds=1.0, seed=3)
    write_dataset(base, tmp_path / "plain", workers=1, progress=False)
    res = CliRunner().invoke(synth_main, [str(tmp_path / "val"), "--types", "fan,valve", "--ids", "1", "--train", "1", "--test", "1",
                                          "--val", "2", "--seconds", "1", "--seed", "3", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "wrote 14 clips" in res.output
    assert "(8 of them labelled validation clips in <type>/val/)" in res.output
    with_val = digest(tmp_path / "val")
    assert {k: v for k, v in with_val.items() if "/val/" not in k} == digest(tmp_path / "plain")  # byte-identical
    index = scan_dataset(tmp_path / "val")
    val = index.select("val")
    assert len(val) == 8 and {c.machine_type for c in val} == {"fan", "valve"}
    assert sorted((c.machine, c.label) for c in val).count(("fan/id_00", 1)) == 2 and sum(c.label for c in val) == 4
    assert all(c.path.parent.name == "val" for c in val) and len(index.select("test")) == 4 and len(index.select("train")) == 2
    rows = list(csv.DictReader(open(tmp_path / "val" / "synth_manifest.csv")))
    assert sum(r["split"] == "val" for r in rows) == 8 and all(r["fault"] for r in rows if r["split"] == "val" and r["label"] == "anomaly")
    assert "fan: train 1, val 4, test 2" in index.summary() and ", val " not in scan_dataset(tmp_path / "plain").summary()


def test_cli_rejects_a_negative_val(tmp_path):
    res = CliRunner().invoke(synth_main, [str(tmp_path / "o"), "--val", "-1"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "--val >= 0" in res.output


def test_fault_levels_are_measured_and_written_to_the_manifest(tmp_path):
    cfg = SynthConfig(types=("fan", "slider"), ids=1, train=1, test=3, seconds=2.0, seed=4)
    write_dataset(cfg, tmp_path, workers=1, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "synth_manifest.csv")))
    for r in rows:
        index = int(r["path"].rsplit("_", 1)[1].split(".")[0])
        audio, fault_db, snr_db = render_with_levels(cfg, r["machine_type"], r["machine_id"], r["split"], r["fault"] or None, index)
        assert np.array_equal(audio, render_clip(cfg, r["machine_type"], r["machine_id"], r["split"], r["fault"] or None, index))
        assert 0.0 <= snr_db <= 6.0 and float(r["snr_db"]) == pytest.approx(snr_db, abs=0.005)
        assert (r["fault_db"] == "") == (fault_db is None) == (r["label"] == "normal")
        if fault_db is not None:
            assert float(r["fault_db"]) == pytest.approx(fault_db, abs=0.005)
    level = {(r["machine_type"], r["fault"]): float(r["fault_db"]) for r in rows if r["fault"]}
    # the generator's faults span over 40 dB: a fan's bearing impacts are far below its sound, stick-slip changes most of a slider's
    assert level[("fan", "bearing")] < -40 and level[("slider", "stick_slip")] > -6


def test_a_fan_rub_is_never_silent():
    # fan/id_00 anomaly 35 of the benchmark's seed 1: the rub's slow on/off level stays below 0 for
    # the whole clip, which used to leave the gate shut (fault_db about -240 dB: a normal clip labelled anomalous)
    cfg = SynthConfig(seed=1, test=50)
    _, fault_db, _ = render_with_levels(cfg, "fan", "id_00", "test", "rubbing", 35)
    assert -30 < fault_db < -10
    # a clip whose gate opens on its own is unchanged by that fallback (its level as written before it)
    _, fault_db, _ = render_with_levels(SynthConfig(seed=0, test=50), "fan", "id_00", "test", "rubbing", 2)
    assert fault_db == pytest.approx(-21.21, abs=0.005)


def test_band_level_of_a_tone_in_white_noise_by_hand():
    rng = np.random.default_rng(0)
    n = 4 * SR
    tone = 0.1 * np.sin(2 * np.pi * 1000.0 * np.arange(n) / SR)  # power 0.005
    noise = rng.standard_normal(n)  # unit power spread over 0-8 kHz
    level, centre = band_level(tone, noise)
    assert abs(centre - 1000.0) <= SR / 1024  # within one Welch bin
    # the noise within +-15 % of 1 kHz: 300 Hz of 8000, so 0.0375; 10 log10(0.005 / 0.0375) = -8.75 dB
    assert level == pytest.approx(-8.75, abs=0.5)


def test_fault_band_level_finds_a_buried_fault_where_it_is_strongest():
    cfg = SynthConfig(seed=0, test=50)
    _, fault_db, _ = render_with_levels(cfg, "fan", "id_00", "test", "bearing", 1)
    level, centre = fault_band_level(cfg, "fan", "id_00", "test", "bearing", 1)
    # bearing impacts ring at the id's bearing resonance (3-6 kHz): far below the fan overall, about 12 dB less so there
    assert fault_db < -45 and fault_db + 8 < level < -30
    assert 3000 * 0.85 <= centre <= 6000 * 1.15
    with pytest.raises(ValueError, match="needs a fault"):
        fault_band_level(cfg, "fan", "id_00", "test", None, 1)
