import numpy as np

from mtad.edge_runtime.dataset import scan_dataset
from mtad.edge_runtime.features import fit_normalization
from mtad.train.batches import WindowSampler
from mtad.train.feature_cache import load_features


def make_sampler(tiny_synth, window=32):
    index = scan_dataset(tiny_synth)
    store = load_features(index.select("train", label=0), progress=False)
    class_map = sorted({c.machine for c in store.clips})
    norms = {t: fit_normalization([np.asarray(store.get(i)) for i, c in enumerate(store.clips) if c.machine_type == t]) for t in {c.machine_type for c in store.clips}}
    return WindowSampler(store, list(range(len(store))), {m: k for k, m in enumerate(class_map)}, norms, window), class_map


def test_mixup_soft_labels_same_type_different_ids(tiny_synth):
    sampler, class_map = make_sampler(tiny_synth)
    batches = list(sampler.epoch(np.random.default_rng(0), windows_per_clip=4, batch_size=16, mixup_prob=0.5))
    targets = np.concatenate([b.target for b in batches])
    mixed = np.concatenate([b.mixed for b in batches])
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    assert 0.3 < mixed.mean() < 0.7
    for row, is_mixed in zip(targets, mixed):
        nz = [class_map[k] for k in np.nonzero(row)[0]]
        if is_mixed:
            assert len(nz) == 2 and nz[0].split("/")[0] == nz[1].split("/")[0] and nz[0] != nz[1]
        else:
            assert len(nz) == 1 and row.max() == 1.0
    assert batches[0].x.shape == (16, 128, 32) and batches[0].x.dtype == np.float32


def test_no_mixup_and_seeded(tiny_synth):
    sampler, _ = make_sampler(tiny_synth)
    a = list(sampler.epoch(np.random.default_rng(5), 1, 8, 0.0))
    b = list(sampler.epoch(np.random.default_rng(5), 1, 8, 0.0))
    assert not any(batch.mixed.any() for batch in a)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.x, y.x)
