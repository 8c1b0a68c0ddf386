"""A small labelled reference set shipped inside the bundle, for parity checks on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.dataset import scan_dataset
from mtad.edge_runtime.errors import AudioError

REFERENCE_FILE = "reference/reference.npz"


def build_reference_set(data: Path, machines: list[str], window_frames: int, hop: int = 512, seconds: float = 4.0) -> dict | None:
    """One normal and one anomalous test clip per machine, cut to a few seconds (int16).

    Returns None when ``data`` has no labelled test clips of the bundle's machines.
    """
    try:
        index = scan_dataset(data)
    except Exception:
        return None
    needed = (window_frames + 8) * hop  # a few windows' worth for the model
    chosen = []
    for machine in machines:
        for label in (0, 1):
            for c in (c for c in index.select("test", machine.split("/")[0], label) if c.machine == machine):
                try:
                    y = load_audio(c.path)
                except AudioError:
                    continue
                if len(y) >= needed:
                    chosen.append((c, machine, label, y))
                    break
    if not chosen:
        return None
    n = max(needed, min(int(seconds * 16000), min(len(y) for *_, y in chosen)))
    audio, keys, mlist, labels = [], [], [], []
    for c, machine, label, y in chosen:
        if len(y) < n:
            continue
        audio.append(np.round(np.clip(y[:n], -1, 1) * 32767).astype(np.int16))
        keys.append(f"{c.machine}/{c.path.name}")
        mlist.append(machine)
        labels.append(label)
    if not audio or len(set(labels)) < 2:
        return None
    return {"audio": np.stack(audio), "keys": np.array(keys), "machines": np.array(mlist), "labels": np.array(labels, np.int8)}


def save_reference_set(ref: dict, bundle_dir: Path) -> Path:
    path = bundle_dir / REFERENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **ref)
    return path


def load_reference_set(bundle_dir: Path) -> dict:
    with np.load(bundle_dir / REFERENCE_FILE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
