import shutil

import numpy as np

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
