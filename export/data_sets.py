"""The three disjoint clip sets of an export, recorded in the bundle manifest (``data_sets``).

- ``calibration``: training normals whose windows calibrated INT8;
- ``accuracy_control``: what ``--accuracy-budget`` selected on: labelled validation clips, or,
  without them, held-out training normals on which score drift against FP32 was measured;
- ``report``: the labelled test clips shipped in the bundle for on-device parity.

A clip is identified by the sha256 of its file's bytes, so a copy under another path or another
data root is the same clip. The manifest keeps, per set, the count, the sha256 of the sorted
list of clip digests, and the first 16 hex digits of each clip's digest, which is enough for
``mtad-parity`` to refuse a report set that overlaps the other two. No torch: the device reads it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mtad.edge_runtime.errors import MtadError
from mtad.edge_runtime.hashing import sha256_file

DIGEST_CHARS = 16  # per-clip digest prefix kept in the manifest: 64 bits, no accidental collisions at any data-set size

KINDS = {
    "training_normals": "training normals",
    "labelled_validation": "labelled validation clips",
    "normals_drift": "held-out training normals",
    "reference_test_clips": "labelled test clips of the bundle's reference set",
    "test_clips": "labelled test clips",
}


class OverlapError(MtadError):
    """A report set shares clips with the calibration or accuracy-control set."""


def clip_digests(paths) -> list[str]:
    """sha256 of each file's bytes (hex), in the order given."""
    return [sha256_file(Path(p)) for p in paths]


def clip_set(kind: str, digests: list[str], labels: list[int] | None = None, source: str | None = None, **extra) -> dict:
    """The manifest record of one set from its clips' full sha256 digests (and labels, if any)."""
    full = sorted(digests)
    record = {"kind": kind, "n_clips": len(full)}
    if labels is not None:
        record.update(n_normal=sum(1 for v in labels if v == 0), n_anomalous=sum(1 for v in labels if v == 1))
    if source is not None:
        record["source"] = source
    record.update(extra)
    record["clips_sha256"] = hashlib.sha256("\n".join(full).encode()).hexdigest()
    record["clip_digests"] = [d[:DIGEST_CHARS] for d in full]
    return record


def describe(record: dict | None) -> str:
    """``'96 training normals'``, ``'64 labelled validation clips (32 normal + 32 anomalous)'``."""
    if not record:
        return "none"
    text = f"{record['n_clips']} {KINDS.get(record['kind'], record['kind'])}"
    if record.get("n_anomalous"):  # a labelled set: both counts (a set of normals says so in its kind)
        text += f" ({record['n_normal']} normal + {record['n_anomalous']} anomalous)"
    return text


def overlaps(digests: list[str], record: dict | None) -> int:
    """How many of ``digests`` (full or prefix) are clips of the recorded set."""
    if not record:
        return 0
    recorded = {str(d)[:DIGEST_CHARS] for d in record.get("clip_digests") or []}
    return sum(1 for d in digests if d[:DIGEST_CHARS] in recorded)


def refuse_overlap(what: str, digests: list[str], data_sets: dict | None, guarded=("calibration", "accuracy_control")) -> None:
    """:class:`OverlapError` (one line) when any of ``digests`` lies in a guarded set of ``data_sets``."""
    for name in guarded:
        record = (data_sets or {}).get(name)
        n = overlaps(digests, record)
        if n:
            label = {"calibration": "calibration set", "accuracy_control": "accuracy-control set"}.get(name, name)
            raise OverlapError(
                f"refusing to report on {what}: {n} of its {len(digests)} clips are in the bundle's {label} "
                f"({describe(record)}), so the report would be in-sample; use clips the export did not see"
            )
