"""A small labelled reference set shipped inside the bundle, for parity checks on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.dataset import scan_dataset
from mtad.edge_runtime.errors import AudioError
from mtad.edge_runtime.hashing import sha256_file

REFERENCE_FILE = "reference/reference.npz"


DEFAULT_CLIPS_PER_CLASS = 8  # normal and anomalous clips per machine: AUC steps of 1/64, not 0 or 1


def build_reference_set(data: Path, machines: list[str], window_frames: int, hop: int = 512, seconds: float | None = None,
                        per_class: int = DEFAULT_CLIPS_PER_CLASS, exclude: set[str] | frozenset = frozenset()) -> dict | None:
    """Up to ``per_class`` normal and ``per_class`` anomalous test clips per machine (int16), all
    cut to one length: ``seconds``, or by default just enough audio for the model window plus a
    few frames (the reference set ships in every bundle, so its size is kept down).

    Clips whose file sha256 is in ``exclude`` (the calibration and accuracy-control sets) are
    passed over and counted in ``n_excluded``; ``sha256`` holds the digests of the chosen clips.
    Neither is saved into the bundle's ``.npz``. Returns None when ``data`` has no labelled test
    clips of the bundle's machines.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    try:
        index = scan_dataset(data)
    except Exception:
        return None
    needed = (window_frames + 8) * hop  # a few windows' worth for the model
    chosen = []
    n_excluded = 0
    for machine in machines:
        for label in (0, 1):
            taken = 0
            for c in (c for c in index.select("test", machine.split("/")[0], label) if c.machine == machine):
                if taken == per_class:
                    break
                digest = sha256_file(c.path)
                if digest in exclude:
                    n_excluded += 1
                    continue
                try:
                    y = load_audio(c.path)
                except AudioError:
                    continue
                if len(y) >= needed:
                    chosen.append((c, machine, label, y, digest))
                    taken += 1
    if not chosen:
        return None
    n = needed if seconds is None else max(needed, min(int(seconds * 16000), min(len(y) for _, _, _, y, _ in chosen)))
    audio, keys, mlist, labels, digests = [], [], [], [], []
    for c, machine, label, y, digest in chosen:
        if len(y) < n:
            continue
        audio.append(np.round(np.clip(y[:n], -1, 1) * 32767).astype(np.int16))
        keys.append(f"{c.machine}/{c.path.name}")
        mlist.append(machine)
        labels.append(label)
        digests.append(digest)
    if not audio or len(set(labels)) < 2:
        return None
    return {"audio": np.stack(audio), "keys": np.array(keys), "machines": np.array(mlist), "labels": np.array(labels, np.int8),
            "sha256": digests, "n_excluded": n_excluded}


SAVED = ("audio", "keys", "machines", "labels")  # what reference.npz holds


def save_reference_set(ref: dict, bundle_dir: Path) -> Path:
    from mtad.edge_runtime.atomic import atomic_path

    path = bundle_dir / REFERENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **{k: ref[k] for k in SAVED})
    return path


def load_reference_set(bundle_dir: Path) -> dict:
    with np.load(bundle_dir / REFERENCE_FILE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
