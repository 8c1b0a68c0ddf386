"""Log-mel features of a list of clips, computed once with the edge front end and cached.

The cache is a memory-mapped ``.npy`` holding all clips one after another along time
(``(total_frames, n_mels)``, so a window is one contiguous read), keyed by the sha256 of the
feature settings and of every file's bytes: changed data or settings never reuse a stale cache.
It is built once, by one process at a time (a file lock), optionally with a pool of worker
processes, streamed to disk and renamed into place; readers share it read-only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mtad.edge_runtime.atomic import atomic_write
from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.dataset import Clip
from mtad.edge_runtime.errors import AudioError, ConfigError
from mtad.edge_runtime.features import FeatureConfig, LogMelExtractor
from mtad.edge_runtime.hashing import sha256_file


CACHE_FORMAT = 3  # bump when the on-disk layout changes; it is part of every key
DTYPE = np.dtype("<f4")


def default_cache_dir() -> Path:
    base = os.environ.get("MTAD_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "mtad")
    return Path(base) / "features"


@dataclass
class FeatureStore:
    """Features of ``clips`` (those that could be read); ``failed`` maps path -> reason."""

    clips: list[Clip]
    data: np.ndarray  # (total_frames, n_mels), usually a read-only memmap
    offsets: np.ndarray  # (n_clips + 1,)
    failed: dict[str, str]

    def get(self, i: int) -> np.ndarray:
        """Clip ``i``'s log-mel, ``(n_mels, frames)`` (a view)."""
        return self.data[self.offsets[i] : self.offsets[i + 1]].T

    @property
    def n_mels(self) -> int:
        return self.data.shape[1]

    def __len__(self) -> int:
        return len(self.clips)

    def __getstate__(self):
        # Worker processes that are not forked receive the file name, not a copy of the data.
        state = dict(self.__dict__)
        if isinstance(self.data, np.memmap) and self.data.filename:
            state["data"] = ("memmap", self.data.filename)
        return state

    def __setstate__(self, state):
        if isinstance(state["data"], tuple):
            state["data"] = np.load(state["data"][1], mmap_mode="r")
        self.__dict__.update(state)


def cache_key(clips: list[Clip], cfg: FeatureConfig) -> str:
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **cfg.to_dict()}, sort_keys=True).encode())
    for c in clips:
        h.update(f"{c.machine}/{c.split}/{c.label}/{c.index}:".encode())
        h.update(sha256_file(c.path).encode())
    return h.hexdigest()[:32]


def load_features(
    clips: list[Clip], cfg: FeatureConfig | None = None, cache_dir: Path | None = None, progress: bool = True, workers: int = 1
) -> FeatureStore:
    """Features for ``clips``: from the cache when its key matches, else computed and cached.

    ``workers`` > 1 extracts in that many processes; the result is the same. Concurrent callers
    (the ranks of a distributed run) wait for the one that builds. Unreadable clips are left out
    and reported in ``failed``, never filled with zeros.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    cfg = cfg or FeatureConfig()
    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(clips, cfg)
    npy, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if not (npy.exists() and meta_path.exists()):
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(cache_dir / f"{key}.lock"):
            if not (npy.exists() and meta_path.exists()):  # another process may have built it meanwhile
                _build(clips, cfg, npy, meta_path, progress, workers)
    # The key covers contents, not paths: the same files elsewhere hit the cache, so the
    # cache stores positions in the clip list and paths are taken from the caller's clips.
    meta = json.loads(meta_path.read_text())
    kept = [clips[i] for i in meta["kept"]]
    failed = {str(clips[int(i)].path): why for i, why in meta["failed"].items()}
    return FeatureStore(kept, np.load(npy, mmap_mode="r"), np.array(meta["offsets"], dtype=np.int64), failed)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock (fcntl) on ``path``, held for the block; none where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, concurrent builders then write identical files
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_EXTRACTORS: dict[FeatureConfig, LogMelExtractor] = {}


def _clip_features(job: tuple[str, FeatureConfig]) -> tuple[np.ndarray | None, str | None]:
    """Time-major log-mel ``(frames, n_mels)`` of one file, or the reason it cannot be read."""
    path, cfg = job
    extract = _EXTRACTORS.get(cfg) or _EXTRACTORS.setdefault(cfg, LogMelExtractor(cfg))
    try:
        return np.ascontiguousarray(extract(load_audio(path, cfg.sample_rate)).T, dtype=DTYPE), None
    except AudioError as exc:
        return None, str(exc)


def _single_threaded_blas():
    """One BLAS thread, in workers and in the serial build alike: one process per core, and the
    mel products sum in the same order whatever ``workers`` is, so the cache is bit-identical."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def _worker_init() -> None:
    _single_threaded_blas()


def _npy_header(shape: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _build(clips: list[Clip], cfg: FeatureConfig, npy: Path, meta_path: Path, progress: bool, workers: int) -> None:
    """Extract every clip (in order, so the file does not depend on ``workers``) and stream it
    into ``npy``; the header, written last, is the same size for any frame count."""
    header_size = len(_npy_header((10**15, cfg.n_mels)))
    jobs = [(str(c.path), cfg) for c in clips]
    kept, failed, offsets = [], {}, [0]
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # fork: workers start in milliseconds and run only numpy/scipy code (spawn and
            # forkserver would re-import the caller's __main__, often torch, in every worker)
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_worker_init))
            results = pool.map(_clip_features, jobs, chunksize=max(1, min(16, len(jobs) // (8 * workers))))
        else:
            stack.enter_context(_single_threaded_blas())
            results = map(_clip_features, jobs)
        bar = stack.enter_context(tqdm(results, total=len(jobs), desc=f"log-mel ({workers} worker{'s' * (workers > 1)})", unit="clip", disable=None if progress else True))
        f = stack.enter_context(atomic_write(npy, "wb"))
        f.seek(header_size)
        for i, (feat, why) in enumerate(bar):
            if feat is None:
                failed[i] = why
                continue
            if feat.shape[1] != cfg.n_mels:
                raise AssertionError(f"extractor returned {feat.shape[1]} mel bins, expected {cfg.n_mels}")
            f.write(feat.tobytes())
            kept.append(i)
            offsets.append(offsets[-1] + feat.shape[0])
        header = _npy_header((offsets[-1], cfg.n_mels))
        assert len(header) == header_size, (len(header), header_size)
        f.seek(0)
        f.write(header)
    with atomic_write(meta_path, "w") as f:
        f.write(json.dumps({"kept": kept, "offsets": offsets, "failed": failed}))
