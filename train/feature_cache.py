"""Log-mel features of a list of clips, computed once with the edge front end and cached.

The cache is a memory-mapped ``.npy`` holding all clips side by side along time, keyed by
the sha256 of the feature settings and of every file's bytes: changed data or settings
never reuse a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.dataset import Clip
from mtad.edge_runtime.errors import AudioError
from mtad.edge_runtime.features import FeatureConfig, LogMelExtractor
from mtad.edge_runtime.hashing import sha256_file


CACHE_FORMAT = 2  # bump when the on-disk layout changes; it is part of every key


def default_cache_dir() -> Path:
    base = os.environ.get("MTAD_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "mtad")
    return Path(base) / "features"


@dataclass
class FeatureStore:
    """Features of ``clips`` (those that could be read); ``failed`` maps path -> reason."""

    clips: list[Clip]
    data: np.ndarray  # (n_mels, total_frames), usually a read-only memmap
    offsets: np.ndarray  # (n_clips + 1,)
    failed: dict[str, str]

    def get(self, i: int) -> np.ndarray:
        return self.data[:, self.offsets[i] : self.offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.clips)


def cache_key(clips: list[Clip], cfg: FeatureConfig) -> str:
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **cfg.to_dict()}, sort_keys=True).encode())
    for c in clips:
        h.update(f"{c.machine}/{c.split}/{c.label}/{c.index}:".encode())
        h.update(sha256_file(c.path).encode())
    return h.hexdigest()[:32]


def load_features(
    clips: list[Clip], cfg: FeatureConfig | None = None, cache_dir: Path | None = None, progress: bool = True
) -> FeatureStore:
    """Features for ``clips``: from the cache when its key matches, else computed and cached.

    Unreadable clips are left out and reported in ``failed``, never filled with zeros.
    """
    cfg = cfg or FeatureConfig()
    cache_dir = cache_dir or default_cache_dir()
    key = cache_key(clips, cfg)
    npy, meta_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    if npy.exists() and meta_path.exists():
        # The key covers contents, not paths: the same files elsewhere hit the cache, so the
        # cache stores positions in the clip list and paths are taken from the caller's clips.
        meta = json.loads(meta_path.read_text())
        kept = [clips[i] for i in meta["kept"]]
        failed = {str(clips[int(i)].path): why for i, why in meta["failed"].items()}
        return FeatureStore(kept, np.load(npy, mmap_mode="r"), np.array(meta["offsets"]), failed)

    extract = LogMelExtractor(cfg)
    feats, kept, failed = [], [], {}
    for i, c in enumerate(tqdm(clips, desc="log-mel", unit="clip", disable=None if progress else True)):
        try:
            feats.append(extract(load_audio(c.path, cfg.sample_rate)))
            kept.append(i)
        except AudioError as exc:
            failed[i] = str(exc)
    data = np.concatenate(feats, axis=1) if feats else np.zeros((cfg.n_mels, 0), np.float32)
    offsets = np.concatenate([[0], np.cumsum([f.shape[1] for f in feats])]).astype(np.int64)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f"{key}.{os.getpid()}.tmp.npy"
    np.save(tmp, data)
    os.replace(tmp, npy)
    tmp_meta = cache_dir / f"{key}.{os.getpid()}.tmp.json"
    tmp_meta.write_text(json.dumps({"kept": kept, "offsets": offsets.tolist(), "failed": failed}))
    os.replace(tmp_meta, meta_path)
    return FeatureStore([clips[i] for i in kept], np.load(npy, mmap_mode="r"), offsets, {str(clips[i].path): why for i, why in failed.items()})
