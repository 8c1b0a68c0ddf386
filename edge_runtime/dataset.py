"""Index of a DCASE2020 Task 2 layout: ``<type>/{train,test}/{normal,anomaly}_id_XX_NNNNNNNN.wav``.

mtad adds one split DCASE does not have: ``<type>/val/`` holds labelled validation clips
(``mtad-synth --val N`` writes it). ``mtad-export --accuracy-budget`` selects on them, so the
test split stays untouched for ``mtad-parity``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError

DCASE2020_TYPES = ("ToyCar", "ToyConveyor", "fan", "pump", "slider", "valve")
SPLITS = ("train", "val", "test")  # "val": labelled validation clips (not in DCASE2020)

_NAME = re.compile(r"^(?P<label>normal|anomaly)_(?P<id>id_\d+)_(?P<index>\d+)\.wav$", re.IGNORECASE)


@dataclass(frozen=True, order=True)
class Clip:
    """One labelled clip; ``label`` is 0 for normal, 1 for anomaly."""

    machine_type: str
    machine_id: str
    split: str
    label: int
    index: int
    path: Path = field(compare=False)

    @property
    def machine(self) -> str:
        return f"{self.machine_type}/{self.machine_id}"


@dataclass
class DatasetIndex:
    """Clips found under a root, and the files that were skipped (with reasons)."""

    root: Path
    clips: list[Clip]
    skipped: dict[str, int]

    def select(self, split: str | None = None, machine_type: str | None = None, label: int | None = None) -> list[Clip]:
        return [
            c
            for c in self.clips
            if (split is None or c.split == split)
            and (machine_type is None or c.machine_type == machine_type)
            and (label is None or c.label == label)
        ]

    @property
    def machine_types(self) -> list[str]:
        return sorted({c.machine_type for c in self.clips})

    def machines(self, split: str | None = None) -> list[tuple[str, str]]:
        return sorted({(c.machine_type, c.machine_id) for c in self.select(split)})

    def summary(self) -> str:
        counts = Counter((c.machine_type, c.split) for c in self.clips)
        shown = [s for s in SPLITS if s != "val" or any(c.split == "val" for c in self.clips)]  # DCASE roots have no val
        parts = [f"{t}: " + ", ".join(f"{s} {counts[(t, s)]}" for s in shown) for t in self.machine_types]
        skipped = sum(self.skipped.values())
        return "; ".join(parts) + (f" (skipped {skipped} files)" if skipped else "")


def parse_clip_path(path: Path) -> Clip | None:
    """Parse type, id, label and split from ``.../<type>/<split>/<label>_id_XX_NNNNNNNN.wav``
    (split: train, val or test)."""
    m = _NAME.match(path.name)
    if m is None:
        return None
    split = path.parent.name
    if split not in SPLITS:
        return None
    machine_type = path.parent.parent.name
    if not machine_type:
        return None
    return Clip(
        machine_type=machine_type,
        machine_id=m.group("id").lower(),
        split=split,
        label=int(m.group("label").lower() == "anomaly"),
        index=int(m.group("index")),
        path=path,
    )


def parse_machine_from_path(path: Path) -> tuple[str, str] | None:
    """Best-effort ``(type, id)`` from a DCASE-style file path, also outside a train/val/test folder."""
    m = _NAME.match(path.name)
    if m is None:
        m2 = re.search(r"(id_\d+)", path.name)
        if m2 is None:
            return None
        machine_id = m2.group(1)
    else:
        machine_id = m.group("id").lower()
    parent = path.parent
    if parent.name in SPLITS:
        parent = parent.parent
    return (parent.name, machine_id) if parent.name else None


def scan_dataset(root: str | Path) -> DatasetIndex:
    """Find every clip under ``root`` (a data root, a ``dev_data`` folder or one type folder).

    Files that do not follow the layout are skipped and counted by reason.
    Raises :class:`DatasetError` when the root is missing or holds no clips.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data root is not a directory")
    clips: list[Clip] = []
    skipped: Counter[str] = Counter()
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix.lower() != ".wav":
            skipped["not a .wav file"] += 1
            continue
        clip = parse_clip_path(path)
        if clip is None:
            skipped["name or folder not in the DCASE2020 layout"] += 1
            continue
        clips.append(clip)
    if not clips:
        raise DatasetError(
            f"{root}: no clips in the DCASE2020 layout <type>/{{train,val,test}}/{{normal,anomaly}}_id_XX_NNNNNNNN.wav"
            + (f" ({sum(skipped.values())} other files skipped)" if skipped else "")
        )
    clips.sort()
    return DatasetIndex(root=root, clips=clips, skipped=dict(skipped))
