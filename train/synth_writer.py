"""Write a synthetic data set to disk in parallel, one atomic file at a time."""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from mtad.edge_runtime.atomic import atomic_write

from .synth import SR, ClipJob, SynthConfig, plan_jobs, render_with_levels

MANIFEST = "synth_manifest.csv"


def _write_one(args: tuple[SynthConfig, ClipJob, str]) -> tuple[float | None, float]:
    """Render and write one clip; returns its ``(fault_db, snr_db)`` for the manifest."""
    cfg, job, out = args
    path = Path(out) / job.relpath
    audio, fault_db, snr_db = render_with_levels(cfg, job.machine_type, job.machine_id, job.split, job.fault, job.index)
    buf = io.BytesIO()
    sf.write(buf, audio, SR, subtype="PCM_16", format="WAV")
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return fault_db, snr_db


def write_dataset(cfg: SynthConfig, out: str | Path, workers: int | None = None, progress: bool = True) -> list[ClipJob]:
    """Render every clip of ``cfg`` into ``out`` (DCASE2020 layout, plus ``<type>/val/`` when
    ``cfg.val`` > 0) and a ``synth_manifest.csv``.

    The manifest lists each file's fault kind, which the DCASE names do not carry, how loud the
    fault is against the machine's own sound (``fault_db``) and the machine against the
    background (``snr_db``).
    """
    out = Path(out)
    jobs = plan_jobs(cfg)
    for d in {str(Path(j.relpath).parent) for j in jobs}:
        (out / d).mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    args = [(cfg, j, str(out)) for j in jobs]
    bar = tqdm(total=len(jobs), unit="clip", desc="synthesising", disable=None if progress else True)
    levels = []
    if workers == 1:
        for a in args:
            levels.append(_write_one(a))
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for lv in pool.map(_write_one, args, chunksize=4):
                levels.append(lv)
                bar.update()
    bar.close()
    with atomic_write(out / MANIFEST, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "machine_type", "machine_id", "split", "label", "fault", "severity", "fault_db", "snr_db"])
        for j, (fault_db, snr_db) in zip(jobs, levels):
            w.writerow([j.relpath, j.machine_type, j.machine_id, j.split, "normal" if j.fault is None else "anomaly", j.fault or "",
                        cfg.severity if j.fault else 0, "" if fault_db is None else f"{fault_db:.2f}", f"{snr_db:.2f}"])
    return jobs
