import multiprocessing
import os
import shutil

import numpy as np
import pytest

from mtad.edge_runtime.dataset import scan_dataset
from mtad.edge_runtime.features import FeatureConfig
from mtad.train.feature_cache import cache_key, load_features


def test_cache_hit_is_identical_and_changed_data_changes_key(tiny_synth, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(tiny_synth, data)
    clips = scan_dataset(data).select("train")
    a = load_features(clips, cache_dir=tmp_path / "cache", progress=False)
    b = load_features(clips, cache_dir=tmp_path / "cache", progress=False)  # from the memmap
    assert isinstance(b.data, np.memmap)
    np.testing.assert_array_equal(a.data, b.data)
    key = cache_key(clips, FeatureConfig())
    raw = bytearray(clips[0].path.read_bytes())
    raw[-2:] = b"\x01\x02"  # change one sample
    clips[0].path.write_bytes(bytes(raw))
    assert cache_key(clips, FeatureConfig()) != key
    assert cache_key(clips, FeatureConfig(pad_mode="reflect")) != cache_key(clips, FeatureConfig())


def test_parallel_build_equals_serial_and_concurrent_callers_share_one_build(tiny_synth, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import mtad.train.feature_cache as fc

    clips = scan_dataset(tiny_synth).select("train")[:24]
    serial = load_features(clips, cache_dir=tmp_path / "a", progress=False, workers=1)
    parallel = load_features(clips, cache_dir=tmp_path / "b", progress=False, workers=2)
    np.testing.assert_array_equal(serial.data, parallel.data)
    np.testing.assert_array_equal(serial.offsets, parallel.offsets)
    assert parallel.data.shape == (serial.offsets[-1], 128) and not parallel.data.flags.writeable
    np.testing.assert_array_equal(serial.get(3), np.asarray(parallel.get(3)))
    assert serial.get(3).shape == (128, serial.offsets[4] - serial.offsets[3])
    builds = []
    real_build = fc._build
    monkeypatch.setattr(fc, "_build", lambda *a: (builds.append(1), real_build(*a)))
    with ThreadPoolExecutor(3) as pool:  # three callers at once (like ranks): one builds, the others wait and read it
        stores = list(pool.map(lambda _: load_features(clips, cache_dir=tmp_path / "c", progress=False, workers=2), range(3)))
    assert len(builds) == 1
    for s in stores:
        np.testing.assert_array_equal(s.data, serial.data)
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [".json", ".lock", ".npy"]  # no temp files left


def _damaged_copy(tiny_synth, tmp_path, n=24):
    """The first ``n`` training clips copied, one made unreadable (garbage bytes), one made
    silent (a valid header, so the pool plans a slot for it that then stays empty)."""
    import soundfile as sf

    data = tmp_path / "d"
    shutil.copytree(tiny_synth, data)
    clips = scan_dataset(data).select("train")[:n]
    clips[5].path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    sf.write(clips[11].path, np.zeros(3 * 16000, np.float32), 16000, subtype="PCM_16")
    return clips


def _cache_files(folder):
    files = sorted(p for p in folder.iterdir() if p.suffix in (".npy", ".json"))
    assert [p.suffix for p in files] == [".json", ".npy"], files
    return files


def test_workers_write_their_slots_byte_identical_and_report_failures_alike(tiny_synth, tmp_path, monkeypatch):
    import mtad.train.feature_cache as fc

    clips = _damaged_copy(tiny_synth, tmp_path)
    stores = {w: load_features(clips, cache_dir=tmp_path / f"w{w}", progress=False, workers=w) for w in (1, 2, 3)}
    files = {w: _cache_files(tmp_path / f"w{w}") for w in stores}
    for w in (2, 3):  # the cache files themselves, header and meta included, are byte-identical
        assert [p.name for p in files[w]] == [p.name for p in files[1]]
        for a, b in zip(files[1], files[w]):
            assert a.read_bytes() == b.read_bytes(), (a.name, w)
        assert stores[w].failed == stores[1].failed
    failed = stores[1].failed
    assert sorted(failed) == sorted(str(clips[i].path) for i in (5, 11))
    assert "unreadable audio" in failed[str(clips[5].path)] and "digital silence" in failed[str(clips[11].path)]
    assert [c.path for c in stores[2].clips] == [c.path for i, c in enumerate(clips) if i not in (5, 11)]

    # Slots planned too long, too short (the clip then comes back to the main process) or empty:
    # the pool closes them up into the same file.
    real_plan = fc._planned_frames
    deltas = iter(np.random.default_rng(0).integers(-3, 4, len(clips)).tolist())
    monkeypatch.setattr(fc, "_planned_frames", lambda p, cfg: max(0, real_plan(p, cfg) + next(deltas)))
    load_features(clips, cache_dir=tmp_path / "wrong-plans", progress=False, workers=2)
    for a, b in zip(files[1], _cache_files(tmp_path / "wrong-plans"), strict=True):
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="the failure is patched into forked workers")
def test_a_failing_worker_leaves_no_cache_behind(tiny_synth, tmp_path, monkeypatch):
    import mtad.train.feature_cache as fc

    clips = scan_dataset(tiny_synth).select("train")[:24]
    real = fc._clip_features
    bad = str(clips[7].path)

    def crash(path, cfg):  # runs in the (forked) workers
        if path == bad:
            raise RuntimeError("worker bug")
        return real(path, cfg)

    def die(path, cfg):
        if path == bad:
            os._exit(3)  # a worker killed mid-build (OOM killer, kill -9)
        return real(path, cfg)

    cache = tmp_path / "cache"
    for fail, error in ((crash, RuntimeError), (die, Exception)):
        monkeypatch.setattr(fc, "_clip_features", fail)
        with pytest.raises(error):
            load_features(clips, cache_dir=cache, progress=False, workers=2)
        assert [p.name for p in cache.iterdir() if p.suffix != ".lock"] == []  # no cache, no temp file
    monkeypatch.setattr(fc, "_clip_features", real)
    store = load_features(clips, cache_dir=cache, progress=False, workers=2)
    assert len(store) == 24 and not store.failed
