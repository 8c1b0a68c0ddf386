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
