"""Log-mel features of a list of clips, computed once with the edge front end and cached.

The cache is a memory-mapped ``.npy`` holding all clips one after another along time
(``(total_frames, n_mels)``, so a window is one contiguous read), keyed by the sha256 of the
feature settings and of every file's bytes: changed data or settings never reuse a stale cache.
It is built once, by one process at a time (a file lock), optionally with a pool of worker
processes that write each clip straight into its place in a temp file (the main process only
collects small status tuples), and renamed into place when whole; readers share it read-only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from mtad.edge_runtime.allocator import keep_freed_memory
from mtad.edge_runtime.atomic import atomic_path, atomic_write
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


def cache_key(clips: list[Clip], cfg: FeatureConfig, workers: int = 1) -> str:
    """The key of ``clips``' features under ``cfg``; ``workers`` threads hash the files (hashlib
    and file reads release the GIL), the key is the same for any number."""
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **cfg.to_dict()}, sort_keys=True).encode())
    with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
        digests = (pool.map if pool else map)(sha256_file, [c.path for c in clips])
        for c, digest in zip(clips, digests):
            h.update(f"{c.machine}/{c.split}/{c.label}/{c.index}:".encode())
            h.update(digest.encode())
    return h.hexdigest()[:32]


def load_features(
    clips: list[Clip], cfg: FeatureConfig | None = None, cache_dir: Path | None = None, progress: bool = True, workers: int = 1
) -> FeatureStore:
    """Features for ``clips``: from the cache when its key matches, else computed and cached.

    ``workers`` > 1 hashes the files in that many threads and extracts in that many processes;
    the result is byte-identical. Concurrent callers
    (the ranks of a distributed run) wait for the one that builds. Unreadable clips are left out
    and reported in ``failed``, never filled with zeros.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    cfg = cfg or FeatureConfig()
    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(clips, cfg, workers)
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


def _extractor(cfg: FeatureConfig) -> LogMelExtractor:
    return _EXTRACTORS.get(cfg) or _EXTRACTORS.setdefault(cfg, LogMelExtractor(cfg))


def _clip_features(path: str, cfg: FeatureConfig) -> tuple[np.ndarray | None, str | None]:
    """Time-major log-mel ``(frames, n_mels)`` of one file, or the reason it cannot be read."""
    try:
        feat = np.ascontiguousarray(_extractor(cfg)(load_audio(path, cfg.sample_rate)).T, dtype=DTYPE)
    except AudioError as exc:
        return None, str(exc)
    if feat.shape[1] != cfg.n_mels:
        raise AssertionError(f"extractor returned {feat.shape[1]} mel bins, expected {cfg.n_mels}")
    return feat, None


def _single_threaded_blas():
    """One BLAS thread, in workers and in the serial build alike: one process per core, and the
    mel products sum in the same order whatever ``workers`` is, so the cache is bit-identical."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


_WORKER: dict = {}  # a pool worker's output file, header size and feature settings


def _worker_init(out: str, header_size: int, cfg: FeatureConfig) -> None:
    # One thread per worker: the environment for any library that starts a thread pool later,
    # threadpoolctl for those already loaded (numpy's BLAS; it applies the limit when made).
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    _WORKER["blas"] = _single_threaded_blas()
    keep_freed_memory()  # also when the caller is library code that never set it (a benchmark, a notebook)
    _WORKER.update(out=open(out, "r+b"), header_size=header_size, cfg=cfg)


def _write_at(f, pos: int, feat: np.ndarray) -> None:
    f.seek(pos)
    f.write(memoryview(feat).cast("B"))


def _extract_range(items: list[tuple[int, str, int, int]]) -> list[tuple[int, int, str | None, np.ndarray | None]]:
    """In a pool worker: extract clips ``(index, path, slot, reserved frames)`` and write each
    straight into its slot of the output file. Returns ``(index, frames, failure, None)`` per clip;
    a clip longer than its slot (its header under-stated it) comes back as the array instead."""
    f, header_size, cfg = _WORKER["out"], _WORKER["header_size"], _WORKER["cfg"]
    row = cfg.n_mels * DTYPE.itemsize
    done = []
    for i, path, slot, reserved in items:
        feat, why = _clip_features(path, cfg)
        if feat is None:
            done.append((i, 0, why, None))
        elif len(feat) <= reserved:
            _write_at(f, header_size + slot * row, feat)
            done.append((i, len(feat), None, None))
        else:
            done.append((i, len(feat), None, feat))
    f.flush()
    return done


def _planned_frames(path: str, cfg: FeatureConfig) -> int:
    """Frames a clip will give, from its header alone (0 if that cannot be read). Only a plan:
    the build checks every clip's real length and moves data if the header was wrong."""
    try:
        with sf.SoundFile(path) as f:
            frames, rate = min(f.frames, os.path.getsize(path) * 64), f.samplerate  # (a corrupt header's absurd length)
        samples = (2 * frames * cfg.sample_rate + rate) // (2 * rate)  # libsoxr's output length (half rounds up)
    except Exception:  # unreadable: the worker finds out why and reports it, as the serial build does
        return 0
    return cfg.n_frames(samples) if samples > 0 else 0


def _ranges(n: int, workers: int, most: int = 32):
    """Contiguous index ranges, shrinking towards the end (guided scheduling): few messages, and
    the workers finish within about one clip of each other."""
    start = 0
    while start < n:
        size = max(1, min(most, (n - start) // (4 * workers)))
        yield start, start + size
        start += size


class _Writeback:
    """Pushes a file that is being written to disk in a background thread, a batch at a time, so
    that the fsync finalising it (``atomic_path``) has little left to wait for: without this the
    whole file waits for that last fsync, while no core is busy."""

    BATCH = 32 << 20

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_RDONLY)
        self._pending, self._stop = 0, False
        self._due = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feature-cache-writeback", daemon=True)
        self._thread.start()

    def wrote(self, nbytes: int) -> None:
        self._pending += nbytes
        if self._pending >= self.BATCH:
            self._pending = 0
            self._due.set()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)
        while True:
            self._due.wait()
            self._due.clear()
            if self._stop:
                return
            with contextlib.suppress(OSError):  # only a head start: the final fsync reports errors
                sync(self._fd)

    def __enter__(self) -> "_Writeback":
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._due.set()
        self._thread.join()
        os.close(self._fd)


def _npy_header(shape: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _build(clips: list[Clip], cfg: FeatureConfig, npy: Path, meta_path: Path, progress: bool, workers: int) -> None:
    """Extract every clip into a temp file next to ``npy`` and rename it into place when whole.

    The layout does not depend on ``workers``: kept clips one after another in list order, then
    the ``.npy`` header (written last; the same size for any frame count). One process streams
    the clips in order; a pool writes each clip straight into a slot sized from its audio header
    and returns only a small status, then any slot left short (a failed clip, a header that was
    wrong) is closed up in place.
    """
    header_size = len(_npy_header((10**15, cfg.n_mels)))
    row = cfg.n_mels * DTYPE.itemsize
    paths = [str(c.path) for c in clips]
    _extractor(cfg)  # built once here; forked workers inherit it
    bar = functools.partial(tqdm, total=len(paths), desc=f"log-mel ({workers} worker{'s' * (workers > 1)})", unit="clip", disable=None if progress else True)
    with atomic_path(npy) as tmp:
        if workers > 1:
            frames, failed, slots, late = _extract_parallel(paths, cfg, tmp, header_size, workers, bar)
        else:
            frames, failed = _extract_serial(paths, cfg, tmp, header_size, bar)
            slots, late = None, {}
        kept = sorted(frames)
        offsets = np.concatenate([[0], np.cumsum([frames[i] for i in kept], dtype=np.int64)]).astype(np.int64)
        with open(tmp, "r+b") as f:
            if slots is not None:
                _close_up(f, header_size, row, [(int(offsets[k]), int(slots[i]), frames[i], late.get(i)) for k, i in enumerate(kept)])
            f.truncate(header_size + int(offsets[-1]) * row)
            header = _npy_header((int(offsets[-1]), cfg.n_mels))
            assert len(header) == header_size, (len(header), header_size)
            f.seek(0)
            f.write(header)
    with atomic_write(meta_path, "w") as f:
        f.write(json.dumps({"kept": kept, "offsets": offsets.tolist(), "failed": {i: failed[i] for i in sorted(failed)}}))


def _extract_serial(paths: list[str], cfg: FeatureConfig, tmp: Path, header_size: int, bar) -> tuple[dict[int, int], dict[int, str]]:
    """This process extracts the clips in order and streams them into ``tmp``; returns the frames
    of each kept clip and the failures. ``bar()`` makes the progress bar."""
    frames, failed = {}, {}
    with _single_threaded_blas(), open(tmp, "r+b") as f, _Writeback(tmp) as writeback, bar() as bar:
        f.seek(header_size)
        for i, path in enumerate(paths):
            feat, why = _clip_features(path, cfg)
            if feat is None:
                failed[i] = why
            else:
                f.write(memoryview(feat).cast("B"))
                frames[i] = len(feat)
                writeback.wrote(feat.nbytes)
            bar.update()
    return frames, failed


def _extract_parallel(paths: list[str], cfg: FeatureConfig, tmp: Path, header_size: int, workers: int, bar):
    """``workers`` processes write clips into slots planned from the audio headers; returns the
    frames of each kept clip, the failures, the slots and the clips that did not fit theirs."""
    # fork: workers start in milliseconds and run only numpy/scipy code (spawn and
    # forkserver would re-import the caller's __main__, often torch, in every worker)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    slots = np.zeros(len(paths) + 1, dtype=np.int64)
    frames, failed, late = {}, {}, {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_worker_init, initargs=(str(tmp), header_size, cfg)) as pool:
        try:
            futures = []
            for start, stop in _ranges(len(paths), workers):  # plan a range's slots, hand it out, plan the next
                planned = [_planned_frames(p, cfg) for p in paths[start:stop]]
                slots[start + 1 : stop + 1] = slots[start] + np.cumsum(planned)
                futures.append(pool.submit(_extract_range, [(i, paths[i], int(slots[i]), n) for i, n in zip(range(start, stop), planned)]))
            with _Writeback(tmp) as writeback, bar() as bar:  # threads: started once the workers are forked
                for future in as_completed(futures):
                    done = future.result()
                    for i, n, why, feat in done:
                        if why is not None:
                            failed[i] = why
                            continue
                        frames[i] = n
                        if feat is not None:
                            late[i] = feat
                        else:
                            writeback.wrote(n * cfg.n_mels * DTYPE.itemsize)
                    bar.update(len(done))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return frames, failed, slots, late


def _close_up(f, header_size: int, row: int, moves: list[tuple[int, int, int, np.ndarray | None]]) -> None:
    """Move each kept clip ``(final offset, slot, frames, array or None)`` from its slot to its final
    place, in place, without overwriting data not yet moved: clips moving down in ascending order,
    clips moving up in descending order, then the arrays that did not fit their slot (every
    final place is disjoint from the others, and a slot holds at most its reserved frames)."""
    down = [m for m in moves if m[3] is None and m[0] < m[1]]
    up = [m for m in moves if m[3] is None and m[0] > m[1]]
    for final, slot, n, _ in down + up[::-1]:
        f.seek(header_size + slot * row)
        data = f.read(n * row)
        f.seek(header_size + final * row)
        f.write(data)
    for final, _, _, feat in moves:
        if feat is not None:
            _write_at(f, header_size + final * row, feat)
