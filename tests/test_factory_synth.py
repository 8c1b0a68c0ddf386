"""The third, independently written generator (benchmarks/factory_synth.py): a complete DCASE-layout
set that mtad reads, reproducible clip by clip, whose faults change the sound."""

import csv
import sys

import numpy as np
import soundfile as sf

from mtad.edge_runtime.dataset import scan_dataset

from .conftest import benchmark_module

gen = benchmark_module("factory_synth.py", "factory_synth")


def test_writes_a_set_mtad_reads_with_a_manifest_last(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["factory_synth.py", str(tmp_path), "--seed", "2", "--train", "2", "--test", "1", "--seconds", "2"])
    gen.main()
    index = scan_dataset(tmp_path)
    assert len(index.select("train", label=0)) == 4 * 3 * 2 and len(index.select("test", label=1)) == 4 * 3
    assert sorted({t for t, _ in index.machines()}) == ["compressor", "fan", "gearbox", "pump"]
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv")))
    assert len(rows) == 4 * 3 * 4 and not (tmp_path / "manifest.csv.tmp").exists()
    info = sf.info(tmp_path / rows[0]["path"])
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 32000)
    r = next(r for r in rows if r["label"] == "anomaly")
    x, fault = gen.render(2, r["machine_type"], int(r["machine_id"]), "test", "anomaly", 0, 2.0)
    assert fault == r["fault"] and np.abs(sf.read(tmp_path / r["path"], dtype="float32")[0] - x).max() <= 1 / 32768


def test_every_fault_kind_adds_its_own_sound_to_the_machine():
    # each fault function returns a finite signal of its own, not silence and not a scaled copy of
    # the machine (the generator then sets its level against the machine's)
    n = 2 * gen.SR
    for mtype in gen.TYPES:
        _, normal_fn, faults = gen.MACHINES[mtype]
        spec = gen.machine_spec(0, mtype, 0)
        for kind, (fn, (lo, hi)) in faults.items():
            rng = np.random.default_rng(0)
            x, ctx = normal_fn(rng, spec, n)
            fx, _ = fn(rng, spec, ctx, n)
            assert np.isfinite(fx).all() and gen.rms(fx) > 1e-6 * gen.rms(x), (mtype, kind)
            assert abs(np.corrcoef(x, fx)[0, 1]) < 0.9, (mtype, kind)
            assert -30 <= lo < hi <= 5, (mtype, kind)  # stated severity range, dB against the machine
