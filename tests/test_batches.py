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


def test_partners_uniform_over_same_type_other_ids_like_before(tiny_synth):
    """Every clip's partner is drawn uniformly from the clips of its type with another id (what the
    per-clip partner lists of the quadratic sampler held), each window exactly windows_per_clip times."""
    from scipy.stats import chisquare

    sampler, _ = make_sampler(tiny_synth)
    clips = sampler.store.clips
    plan = sampler.plan(np.random.default_rng(3), windows_per_clip=240, mixup_prob=1.0)
    assert np.bincount(plan.clip, minlength=len(clips))[sampler.indices].tolist() == [240] * len(sampler.indices)
    assert (plan.partner >= 0).all() and ((plan.lam > 0) & (plan.lam < 1)).all()
    lengths = np.diff(sampler.store.offsets)
    assert (plan.start >= 0).all() and (plan.start + 32 <= lengths[plan.clip]).all()
    assert (plan.partner_start + 32 <= lengths[plan.partner]).all()
    p_values = []
    for machine in sorted({c.machine for c in clips}):
        own = [i for i in sampler.indices if clips[i].machine == machine]
        legacy = [j for j in sampler.indices if clips[j].machine_type == clips[own[0]].machine_type and clips[j].machine != machine]
        drawn = plan.partner[np.isin(plan.clip, own)]
        assert set(drawn.tolist()) == set(legacy)  # same support
        p_values.append(chisquare([np.sum(drawn == j) for j in legacy]).pvalue)
    assert min(p_values) > 1e-3, p_values  # and uniform on it


def test_plan_is_seeded_and_mixup_rate(tiny_synth):
    sampler, _ = make_sampler(tiny_synth)
    a = sampler.plan(np.random.default_rng([0, 1]), 4, 0.5)
    b = sampler.plan(np.random.default_rng([0, 1]), 4, 0.5)
    c = sampler.plan(np.random.default_rng([0, 2]), 4, 0.5)
    for field in ("clip", "start", "partner", "partner_start", "lam"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.clip, c.clip)
    assert 0.45 < np.mean(a.partner >= 0) < 0.55


def _fake_store(n_clips, frames=8, n_mels=4, types=6, ids=7):
    from pathlib import Path

    from mtad.edge_runtime.dataset import Clip
    from mtad.train.feature_cache import FeatureStore

    clips = [Clip(f"t{k % types}", f"id_{(k // types) % ids:02d}", "train", 0, k, Path(f"/x/{k}.wav")) for k in range(n_clips)]
    offsets = np.arange(n_clips + 1, dtype=np.int64) * frames
    return FeatureStore(clips, np.zeros((n_clips * frames, n_mels), np.float16), offsets, {})


def test_sampler_memory_is_linear_in_clips():
    """The partner index is O(clips): at 20,000 clips (6 types x 7 ids) the quadratic partner lists
    held ~57 M entries (~460 MB); now every array is one entry per clip."""
    from mtad.edge_runtime.features import Normalization

    n = 20_000
    store = _fake_store(n)
    norm = Normalization(np.zeros(4, np.float32), np.ones(4, np.float32))
    sampler = WindowSampler(store, list(range(n)), {c.machine: k for k, c in enumerate({c.machine: c for c in store.clips}.values())},
                            {t: norm for t in {c.machine_type for c in store.clips}}, window=4)
    arrays = [v for v in vars(sampler).values() if isinstance(v, np.ndarray)]
    assert max(a.size for a in arrays) == n and sum(a.nbytes for a in arrays) < 100 * n
    expected = np.array([sum(1 for d in store.clips if d.machine_type == c.machine_type and d.machine_id != c.machine_id) for c in store.clips[:50]])
    np.testing.assert_array_equal(sampler.n_partners[:50], expected)
    plan = sampler.plan(np.random.default_rng(0), 1, 1.0)
    own, part = [store.clips[i] for i in plan.clip[:500]], [store.clips[j] for j in plan.partner[:500]]
    assert all(a.machine_type == b.machine_type and a.machine_id != b.machine_id for a, b in zip(own, part))


def test_rank_slices_split_global_batches_without_overlap():
    from mtad.train.batches import rank_slices

    one = rank_slices(23, 8)
    two = [rank_slices(23, 8, r, 2) for r in range(2)]
    assert [s for _, s in one] == [8, 8, 7]
    for b, (items, size) in enumerate(one):
        parts = [two[r][b][0] for r in range(2)]
        np.testing.assert_array_equal(np.concatenate(parts), items)  # disjoint, together the global batch
        assert abs(len(parts[0]) - len(parts[1])) <= 1 and two[0][b][1] == size
    assert [s for _, s in rank_slices(17, 8, 0, 2)] == [8, 8]  # a last batch smaller than the world is dropped


def test_dataloader_batches_equal_in_process_batches_with_workers_and_ranks(tiny_synth):
    import torch

    from mtad.train.batches import EpochBatches

    sampler, _ = make_sampler(tiny_synth)
    plan = sampler.plan(np.random.default_rng(9), 2, 0.5)
    direct = list(sampler.epoch(np.random.default_rng(9), 2, 16, 0.5))
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(EpochBatches(sampler, plan, 16), batch_size=None, num_workers=workers)
        got = list(loader)
        assert len(got) == len(direct)
        for (x, t, w), ref in zip(got, direct):
            np.testing.assert_array_equal(x.numpy(), ref.x)
            np.testing.assert_array_equal(t.numpy(), ref.target)
            assert w == 1.0
    plan = sampler.plan(np.random.default_rng(9), 1, 0.5)  # 128 windows: last global batch of 13 is split 7 + 6
    direct = list(sampler.epoch(np.random.default_rng(9), 1, 23, 0.5))
    ranks = [list(EpochBatches(sampler, plan, 23, r, 2)) for r in range(2)]
    assert len(direct[-1].x) == 13
    for b, ref in enumerate(direct):
        np.testing.assert_array_equal(np.concatenate([ranks[r][b][0].numpy() for r in range(2)]), ref.x)
        # DDP averages the ranks' gradients: the mean of the weighted rank-mean losses is the global mean
        per_item = [ranks[r][b][0].double().mean(dim=(1, 2)) for r in range(2)]
        ddp = sum(ranks[r][b][2] * per_item[r].mean() for r in range(2)) / 2
        assert abs(float(ddp) - ref.x.astype(np.float64).mean()) < 1e-9
