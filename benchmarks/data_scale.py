"""The training data path at DCASE2020 size: sampler memory and set-up, batch throughput, cache build.

    nice .venv/bin/python benchmarks/data_scale.py [--clips 27000] [--audio-clips 160]

1. A synthetic index of ``--clips`` clips (6 types, 41 ids) and a feature memmap of
   ``clips x 313 frames x 128 mels`` float16 in a temp dir (deleted afterwards).
2. Sampler memory (tracemalloc peak) and epoch set-up time (sampler + first epoch plan) of the
   per-type index sampler, against the previous per-clip partner lists ("legacy") in the same
   run. The legacy sampler is quadratic; it is measured at 1/8 and 1/4 of the size and
   extrapolated (x16 from 1/4) unless ``--legacy-full``.
3. Batch throughput (windows/s, batch 64, the paper's 313-frame window) from a DataLoader over
   the memmap with 0, 1 and 2 workers.
4. Feature-cache build time on real synthesised audio (``mtad.train.synth``, 10 s clips) with
   1 and 2 worker processes, alternated ``--repeats`` times (wall time on a shared machine varies
   from run to run), with the CPU time of the main process and of the workers and the load
   average. ``--audio DIR`` keeps the synthesised clips there and reuses them on the next run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from mtad.edge_runtime.dataset import Clip, scan_dataset
from mtad.edge_runtime.features import Normalization
from mtad.train.batches import EpochBatches, WindowSampler
from mtad.train.feature_cache import FeatureStore, load_features

TYPES = ("fan", "pump", "slider", "valve", "ToyCar", "ToyConveyor")
IDS_PER_TYPE = (7, 7, 7, 7, 7, 6)  # 41 ids, as DCASE2020 dev + additional training sets


class LegacySampler:
    """The partner index of the sampler before issue #13: every clip's array of all its partners."""

    def __init__(self, store: FeatureStore, indices: list[int], window: int):
        self.indices = [i for i in indices if store.offsets[i + 1] - store.offsets[i] >= window]
        self.partners = {}
        for i in self.indices:
            c = store.clips[i]
            self.partners[i] = np.array(
                [j for j in self.indices if store.clips[j].machine_type == c.machine_type and store.clips[j].machine_id != c.machine_id]
            )


def synthetic_store(n_clips: int, frames: int, n_mels: int, folder: Path) -> FeatureStore:
    machines = [(t, f"id_{k:02d}") for t, n in zip(TYPES, IDS_PER_TYPE) for k in range(n)]
    clips = [Clip(*machines[i % len(machines)], "train", 0, i, Path(f"/synthetic/{i}.wav")) for i in range(n_clips)]
    clips.sort()
    data = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=(n_clips * frames, n_mels))
    block = np.random.default_rng(0).normal(-40, 10, (frames * 64, n_mels)).astype(np.float16)
    for s in range(0, len(data), len(block)):
        data[s : s + len(block)] = block[: len(data) - s]
    data.flush()
    del data
    offsets = np.arange(n_clips + 1, dtype=np.int64) * frames
    return FeatureStore(clips, np.load(folder / "features.npy", mmap_mode="r"), offsets, {})


def measure(fn) -> tuple[float, float, object]:
    """(seconds, tracemalloc peak in MB, result)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return seconds, peak, result


def subset(store: FeatureStore, n: int) -> FeatureStore:
    pick = np.linspace(0, len(store) - 1, n).astype(int)
    offsets = np.concatenate([[0], np.cumsum(np.diff(store.offsets)[pick])])
    return FeatureStore([store.clips[i] for i in pick], store.data, offsets, {})  # lengths only matter here


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=27_000)
    ap.add_argument("--frames", type=int, default=313)
    ap.add_argument("--mels", type=int, default=128)
    ap.add_argument("--window", type=int, default=313)
    ap.add_argument("--batches", type=int, default=150, help="batches timed per DataLoader setting")
    ap.add_argument("--audio-clips", type=int, default=160, help="10 s synthetic clips for the cache-build timing")
    ap.add_argument("--legacy-full", action="store_true", help="time the quadratic sampler at full size too (minutes)")
    ap.add_argument("--cache-only", action="store_true", help="only the feature-cache build timing (item 4)")
    ap.add_argument("--repeats", type=int, default=2, help="cache builds per worker count, alternated (best wall time counts)")
    ap.add_argument("--audio", type=Path, default=None, help="folder for the synthesised clips, reused if already there (default: a temp dir)")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the temp files (default: the system temp dir)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mtad-data-scale-", dir=args.tmp))
    try:
        if not args.cache_only:
            scale(args, tmp)
        cache_build(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def scale(args, tmp: Path) -> None:
    t0 = time.perf_counter()
    store = synthetic_store(args.clips, args.frames, args.mels, tmp)
    size_gb = store.data.nbytes / 1e9
    print(f"synthetic store: {args.clips} clips x {args.frames} frames x {args.mels} mels float16 = {size_gb:.2f} GB on disk, written in {time.perf_counter() - t0:.1f}s")
    class_of = {m: k for k, m in enumerate(sorted({c.machine for c in store.clips}))}
    norm = Normalization(np.full(args.mels, -40, np.float32), np.full(args.mels, 10, np.float32))
    norms = {t: norm for t in TYPES}

    print("\n| sampler | clips | epoch set-up (s) | peak memory (MB) |")
    print("|---|---|---|---|")
    for n in (args.clips // 8, args.clips // 4) + ((args.clips,) if args.legacy_full else ()):
        sub = subset(store, n)
        s, mb, _ = measure(lambda: LegacySampler(sub, list(range(n)), args.window))
        print(f"| legacy (per-clip partner lists) | {n} | {s:.2f} | {mb:.1f} |")
        legacy_quarter = (n, s, mb)
    if not args.legacy_full:
        n, s, mb = legacy_quarter
        f = (args.clips / n) ** 2
        print(f"| legacy, extrapolated x{f:.0f} (quadratic) | {args.clips} | ~{s * f:.0f} | ~{mb * f:.0f} |")

    def setup():
        sampler = WindowSampler(store, list(range(args.clips)), class_of, norms, args.window)
        return sampler, sampler.plan(np.random.default_rng([0, 0]), 1, 0.5)

    s, mb, (sampler, plan) = measure(setup)
    print(f"| per-type index (this version) | {args.clips} | {s:.2f} | {mb:.1f} |")
    s2, mb2, _ = measure(lambda: sampler.plan(np.random.default_rng([0, 1]), 1, 0.5))
    print(f"| ... next epoch's plan only | {args.clips} | {s2:.3f} | {mb2:.1f} |")

    print(f"\n| DataLoader workers | windows/s (batch 64, window {args.window}, float16 memmap) |")
    print("|---|---|")
    for workers in (0, 1, 2):
        loader = torch.utils.data.DataLoader(EpochBatches(sampler, plan, 64), batch_size=None, num_workers=workers)
        it = iter(loader)
        next(it)  # worker start-up
        t0 = time.perf_counter()
        n = 0
        for _, (x, _, _) in zip(range(args.batches), it):
            n += len(x)
        print(f"| {workers} | {n / (time.perf_counter() - t0):.0f} |")
        del it, loader


def cache_build(args, tmp: Path) -> None:
    """Wall time, and CPU time of this process and of the workers: on a machine busy with other
    work the wall-time speed-up understates what an idle machine gives, the CPU split does not."""
    import resource

    from mtad.train.synth import SynthConfig
    from mtad.train.synth_writer import write_dataset

    per_type = max(1, args.audio_clips // 4)
    synth = SynthConfig(types=("fan", "pump", "slider", "valve"), ids=1, train=per_type, test=0, seconds=10.0, seed=3)
    audio = args.audio or tmp / "audio"
    marker = audio / f".synth-{per_type}-per-type"
    if not marker.exists():
        shutil.rmtree(audio, ignore_errors=True)
        write_dataset(synth, audio, workers=2, progress=False)
        marker.touch()
    clips = scan_dataset(audio).select("train")
    print(f"\n| cache-build workers | seconds for {len(clips)} synthesised 10 s clips | clips/s | wall speed-up | CPU s: main / workers | idle-machine speed-up (from CPU) | load average (1 min) before / after |")
    print("|---|---|---|---|---|---|---|")
    best, base_cpu = {}, None
    for run in range(args.repeats):
        for workers in (1, 2):
            cache = tmp / f"cache{workers}-{run}"
            load0 = os.getloadavg()[0]
            r0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            load_features(clips, cache_dir=cache, progress=False, workers=workers)
            s = time.perf_counter() - t0
            r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            main_cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
            child_cpu = max(0.0, c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
            best[workers] = min(best.get(workers, s), s)
            if workers == 1:
                base, base_cpu = s, main_cpu
            # on an idle machine: no faster than the busiest process, nor than all the work over the cores
            bound = max(main_cpu, child_cpu / workers, (main_cpu + child_cpu) / os.cpu_count()) if workers > 1 else main_cpu
            print(f"| {workers} | {s:.2f} | {len(clips) / s:.1f} | {base / s:.2f}x | {main_cpu:.2f} / {child_cpu:.2f} | {base_cpu / bound:.2f}x | {load0:.1f} / {os.getloadavg()[0]:.1f} |", flush=True)
        one = [p for p in (tmp / f"cache1-{run}").iterdir() if p.suffix in (".npy", ".json")]
        assert all((cache / p.name).read_bytes() == p.read_bytes() for p in one), "the 2-worker cache differs from the 1-worker cache"
        shutil.rmtree(tmp / f"cache1-{run}")
        shutil.rmtree(cache)
    print(f"\nbest wall time of {args.repeats}: 1 worker {best[1]:.2f} s, 2 workers {best[2]:.2f} s: {best[1] / best[2]:.2f}x (caches byte-identical)")


if __name__ == "__main__":
    main()
