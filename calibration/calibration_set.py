"""Calibration spectrograms for INT8 quantisation, built from training normals.

Windows are drawn evenly over machine types and ids, through the edge front end and the
run's per-type normalisation, so the quantiser sees exactly what the model sees. Each
machine's clips are split: most feed the calibration set, the rest give held-out windows
for the export-time check (and, without a labelled validation set, the normals on which
accuracy control measures score drift). The manifest records which clips took which role.
Stored as ``.npz`` plus a JSON manifest (sources, settings, sha256), and cached under a key of
every input's content.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtad.edge_runtime.atomic import atomic_path, atomic_write
from mtad.edge_runtime.dataset import Clip, scan_dataset
from mtad.edge_runtime.errors import MtadError
from mtad.edge_runtime.features import FeatureConfig, Normalization
from mtad.edge_runtime.hashing import sha256_file

MIN_WINDOWS = 32
HELDOUT_FRACTION = 0.2


class CalibrationError(MtadError):
    """The calibration data cannot support quantisation (too few or malformed windows)."""


@dataclass
class CalibrationSet:
    windows: np.ndarray  # (N, n_mels, window) float32, normalised
    machines: list[str]
    heldout: np.ndarray  # (M, n_mels, window) windows from clips not used for calibration
    manifest: dict

    def batches(self, batch_size: int = 32):
        """Equal-size batches (the histogram calibrators stack them); the remainder is dropped
        unless the set is smaller than one batch."""
        n = len(self.windows)
        if n <= batch_size:
            yield self.windows
            return
        for i in range(0, n - batch_size + 1, batch_size):
            yield self.windows[i : i + batch_size]


def _sample(store, indices, n, window, norms, rng, used: set | None = None):
    """``n`` windows spread round-robin over the clips ``indices`` of one machine; the clips
    drawn from are added to ``used``."""
    out = []
    usable = [i for i in indices if store.offsets[i + 1] - store.offsets[i] >= window]
    if not usable:
        return out
    order = rng.permutation(usable)
    for k in range(n):
        i = int(order[k % len(order)])
        x = np.asarray(store.get(i))
        s = int(rng.integers(0, x.shape[1] - window + 1))
        out.append(norms[store.clips[i].machine_type].apply(x[:, s : s + window]))
        if used is not None:
            used.add(i)
    return out


def validate_windows(windows: np.ndarray, n_mels: int, window: int, minimum: int = MIN_WINDOWS) -> None:
    if windows.ndim != 3 or windows.shape[1:] != (n_mels, window):
        raise CalibrationError(f"calibration windows must have shape (N, {n_mels}, {window}), got {windows.shape}")
    if windows.shape[0] < minimum:
        raise CalibrationError(f"only {windows.shape[0]} calibration windows; INT8 calibration needs at least {minimum}")
    if not np.isfinite(windows).all():
        raise CalibrationError("calibration windows contain NaN or inf")
    if float(windows.std()) == 0.0:
        raise CalibrationError("calibration windows are constant; they cannot calibrate activation ranges")


def build_calibration_set(
    data: str | Path,
    norms: dict[str, Normalization],
    machines: list[str],
    window: int,
    n_windows: int = 512,
    seed: int = 0,
    model_digest: str = "",
    cache_dir: Path | None = None,
    progress: bool = True,
) -> CalibrationSet:
    """Build (or load from cache) the calibration set for a run's machines."""
    from mtad.train.feature_cache import default_cache_dir, load_features

    index = scan_dataset(data)
    clips: list[Clip] = [c for c in index.select("train", label=0) if c.machine in set(machines)]
    if not clips:
        raise CalibrationError(f"{data}: no training normals of the run's machines ({', '.join(machines)}) to calibrate on")
    if n_windows < MIN_WINDOWS:
        raise CalibrationError(f"--calib-windows {n_windows} is below the minimum of {MIN_WINDOWS}")
    sources = [{"path": str(c.path), "sha256": sha256_file(c.path)} for c in clips]
    settings = {
        "n_windows": n_windows, "window": window, "seed": seed, "heldout_fraction": HELDOUT_FRACTION,
        "feature_config": FeatureConfig().to_dict(), "model_sha256": model_digest,
        "normalization_sha256": hashlib.sha256(b"".join(norms[t].mean.tobytes() + norms[t].std.tobytes() for t in sorted(norms))).hexdigest(),
    }
    key = hashlib.sha256(json.dumps({"settings": settings, "sources": [s["sha256"] for s in sources]}, sort_keys=True).encode()).hexdigest()[:32]
    cache_dir = cache_dir or default_cache_dir().parent / "calibration"
    npz, man = cache_dir / f"{key}.npz", cache_dir / f"{key}.json"
    cached = json.loads(man.read_text()) if npz.exists() and man.exists() else None
    if cached is not None and "calibration_clips" in cached:  # entries written before the clip roles were recorded are rebuilt
        cached["sources"] = sources  # the same files by the key (their sha256, in order), where they are now
        with np.load(npz, allow_pickle=False) as z:
            cs = CalibrationSet(z["windows"], [str(m) for m in z["machines"]], z["heldout"], cached)
        validate_windows(cs.windows, cs.windows.shape[1], window)
        return cs

    store = load_features(clips, progress=progress)
    rng = np.random.default_rng(seed)
    per_machine = max(1, n_windows // len(machines))
    position = {str(c.path): k for k, c in enumerate(clips)}
    windows, labels, heldout = [], [], []
    used: set[int] = set()  # clips the calibration windows were cut from
    held_clips: list[int] = []  # clips kept out of calibration: held-out windows, and the drift check's normals
    for m in sorted(machines):
        idx = [i for i, c in enumerate(store.clips) if c.machine == m]
        if not idx:
            continue
        perm = [idx[j] for j in rng.permutation(len(idx))]
        n_held = max(1, int(round(HELDOUT_FRACTION * len(perm)))) if len(perm) > 1 else 0
        cal_idx, held_idx = perm[n_held:], perm[:n_held]
        got = _sample(store, cal_idx, per_machine, window, norms, rng, used)
        windows += got
        labels += [m] * len(got)
        heldout += _sample(store, held_idx, max(1, per_machine // 4), window, norms, rng)
        held_clips += held_idx
    if not windows:
        raise CalibrationError(f"no training clip is at least {window} frames long; cannot cut calibration windows")
    w = np.stack(windows).astype(np.float32)
    validate_windows(w, w.shape[1], window)
    h = np.stack(heldout).astype(np.float32) if heldout else w[:0]
    manifest = {"key": key, "settings": settings, "sources": sources, "n_windows": int(len(w)), "n_heldout": int(len(h)),
                "per_machine": {m: labels.count(m) for m in sorted(set(labels))},
                # positions in "sources" of the clips the calibration windows came from, and of the clips held out of it
                "calibration_clips": sorted(position[str(store.clips[i].path)] for i in used),
                "heldout_clips": sorted(position[str(store.clips[i].path)] for i in held_clips)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(npz) as tmp:
        np.savez(tmp, windows=w, machines=np.array(labels), heldout=h)
    with atomic_write(man, "w") as f:  # written last: its presence marks the cache entry whole
        f.write(json.dumps(manifest, indent=1))
    return CalibrationSet(w, labels, h, manifest)


def save_calibration_set(cs: CalibrationSet, out_dir: Path) -> tuple[Path, Path]:
    """Write the set into a bundle/run folder: ``calibration.npz`` and ``calibration.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    npz, man = out_dir / "calibration.npz", out_dir / "calibration.json"
    with atomic_path(npz) as tmp:
        np.savez_compressed(tmp, windows=cs.windows, machines=np.array(cs.machines), heldout=cs.heldout)
    with atomic_write(man, "w") as f:
        f.write(json.dumps(cs.manifest, indent=1))
    return npz, man


def calibration_roles(cs: CalibrationSet) -> tuple[list[dict], list[dict]]:
    """``(calibration clips, held-out clips)`` of a calibration set: the ``{"path", "sha256"}``
    source entries of the clips its windows came from, and of the clips it held out."""
    sources = cs.manifest["sources"]
    return [sources[i] for i in cs.manifest["calibration_clips"]], [sources[i] for i in cs.manifest["heldout_clips"]]
