"""AUC of the simple baseline on a data set, to show the synthetic set is not trivially easy.

    .venv/bin/python benchmarks/synth_baseline.py [--data DIR]   # default: synthesise the default set

Baseline: per machine id, Mahalanobis distance (Ledoit-Wolf) of each clip's log-mel
per-bin mean and std to that id's training clips.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from mtad.edge_runtime.dataset import scan_dataset
from mtad.train.baseline import baseline_aucs
from mtad.train.synth import SynthConfig
from mtad.train.synth_writer import write_dataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, help="existing data root (default: synthesise the default set)")
    ap.add_argument("--severity", type=float, default=SynthConfig.severity)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp)
            write_dataset(SynthConfig(severity=args.severity), data)
        results = baseline_aucs(scan_dataset(data))
    print("| type | ids (AUC) | mean AUC | mean pAUC |")
    print("|---|---|---|---|")
    for mtype in sorted({t for t, _ in results}):
        rows = {i: v for (t, i), v in results.items() if t == mtype}
        ids = ", ".join(f"{i}: {a:.2f}" for i, (a, _) in sorted(rows.items()))
        print(f"| {mtype} | {ids} | {np.mean([a for a, _ in rows.values()]):.3f} | {np.mean([p for _, p in rows.values()]):.3f} |")
    print(f"| **all** | | **{np.mean([a for a, _ in results.values()]):.3f}** | {np.mean([p for _, p in results.values()]):.3f} |")


if __name__ == "__main__":
    main()
