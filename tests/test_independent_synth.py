"""The independently written generator (benchmarks/independent_synth.py): a complete DCASE-layout
set that mtad reads, reproducible clip by clip, with audible faults."""

import csv
import sys

import numpy as np
import soundfile as sf

from mtad.edge_runtime.dataset import scan_dataset

from .conftest import benchmark_module

gen = benchmark_module("independent_synth.py", "independent_synth")


def test_writes_a_set_mtad_reads_with_a_manifest_last(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["independent_synth.py", str(tmp_path), "--seed", "3", "--train", "2", "--test", "1", "--seconds", "2"])
    gen.main()
    index = scan_dataset(tmp_path)
    assert len(index.select("train", label=0)) == 4 * 2 * 2 and len(index.select("test", label=1)) == 4 * 2
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv")))
    assert len(rows) == 4 * 2 * 4 and not (tmp_path / "manifest.csv.tmp").exists()
    info = sf.info(tmp_path / rows[0]["path"])
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 32000)
    # each clip can be made again alone (up to the file's 16-bit rounding)
    r = next(r for r in rows if r["label"] == "anomaly")
    x, fault = gen.make_clip(3, r["machine_type"], int(r["machine_id"][3:]), "test", "anomaly", 0, 2.0)
    assert fault == r["fault"] and np.abs(sf.read(tmp_path / r["path"], dtype="float32")[0] - x).max() <= 1 / 32768


def test_a_fault_changes_the_sound():
    # same seed and index, normal and anomalous: the fault must move the clip's spectrum
    normal, _ = gen.make_clip(0, "pump", 0, "test", "normal", 0, 2.0)
    leak, fault = gen.make_clip(0, "pump", 0, "test", "anomaly", 1, 2.0)
    assert fault == "leak"
    band = lambda x: np.abs(np.fft.rfft(x))[2500 * 2 : 6000 * 2].mean()  # 2.5-6 kHz, where the leak hisses (0.5 Hz bins)
    assert band(leak) > 1.3 * band(normal)  # 1.46 here
