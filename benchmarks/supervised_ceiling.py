"""How separable are the synthetic set's anomalies at all? A SUPERVISED reference, not a detector.

    python benchmarks/supervised_ceiling.py [--seed 0] [--val-clips 150] [--types fan,valve] [--out results/ceiling]

For each machine type, two supervised models learn normal vs anomalous from ``--val-clips``
labelled normal and as many anomalous clips per id (the faults cycled as ``mtad-synth --val``
writes them), drawn from the *same* machines as seed ``--seed``'s test set, then score that test
set (50 + 50 clips per id, identical to ``benchmarks/accuracy.py``'s):

- ``linear_spectral``: logistic regression on the clip statistic of the ``spectral`` component
  (``spectral_vector``) plus the id;
- ``cnn``: a 2-D CNN (4 conv blocks, 32-128 channels) on the whole clip's log-mel, 30 epochs,
  AdamW + one-cycle schedule, random circular time shifts.

They see labelled examples of the very faults the test holds, which no anomaly detector does, so
their AUC is a generous reference for what an unsupervised detector on the same input could reach.
Needs torch and scikit-learn; a GPU machine with many cores runs all six types in about 6 minutes
(most of it synthesis); 2 CPU cores take hours.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from mtad.edge_runtime.features import LogMelExtractor
from mtad.edge_runtime.scoring import spectral_vector
from mtad.train.synth import MACHINE_IDS, ClipJob, SynthConfig, plan_jobs, render_clip

_CFG = SynthConfig()
_EXTRACT = LogMelExtractor()


def _logmel(job: ClipJob) -> np.ndarray:
    audio = render_clip(_CFG, job.machine_type, job.machine_id, job.split, job.fault, job.index)
    audio = (np.round(audio * 32767) / 32767).astype(np.float32)  # the 16-bit WAV round trip
    return _EXTRACT(audio).astype(np.float16)


def _init(seed: int) -> None:
    global _CFG
    _CFG = SynthConfig(seed=seed)


def clip_jobs(cfg: SynthConfig, split: str) -> list[ClipJob]:
    """The clips ``mtad-synth`` would write into ``split`` under ``cfg`` (the same fault cycling)."""
    return [job for job in plan_jobs(cfg) if job.split == split]


def train_cnn(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, epochs: int, device: str, seed: int) -> np.ndarray:
    """Decision scores of a small 2-D CNN trained on labelled log-mels."""
    import torch
    from torch import nn

    mu, sd = float(x_train.astype(np.float32).mean()), float(x_train.astype(np.float32).std())
    tr = torch.tensor((x_train.astype(np.float32) - mu) / sd).unsqueeze(1).to(device)
    te = torch.tensor((x_test.astype(np.float32) - mu) / sd).unsqueeze(1).to(device)
    y = torch.tensor(y_train, dtype=torch.float32, device=device)
    torch.manual_seed(seed)

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    net = nn.Sequential(block(1, 32), block(32, 64), block(64, 128), block(128, 128), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Dropout(0.3), nn.Linear(128, 1)).to(device)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    batch = 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * ((len(tr) + batch - 1) // batch))
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(tr), device=device)
        for b in range(0, len(tr), batch):
            i = perm[b : b + batch]
            shift = int(torch.randint(0, tr.shape[-1], (1,)))
            loss = nn.functional.binary_cross_entropy_with_logits(net(torch.roll(tr[i], shift, dims=-1)).squeeze(1), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        return torch.cat([net(te[b : b + 128]).squeeze(1) for b in range(0, len(te), 128)]).float().cpu().numpy()


def main() -> None:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-clips", type=int, default=150, help="labelled normal and anomalous training clips per id (each)")
    ap.add_argument("--test", type=int, default=50)
    ap.add_argument("--ids", type=int, default=3)
    ap.add_argument("--types", default=",".join(MACHINE_IDS))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("results/ceiling"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    with Pool(os.cpu_count(), initializer=_init, initargs=(args.seed,)) as pool:
        for machine_type in args.types.split(","):
            t0 = time.time()
            ids = MACHINE_IDS[machine_type][: args.ids]
            cfg = SynthConfig(types=(machine_type,), ids=args.ids, train=0, test=args.test, val=args.val_clips, seed=args.seed)
            train_jobs, test_jobs = clip_jobs(cfg, "val"), clip_jobs(cfg, "test")
            x_train = np.stack(pool.map(_logmel, train_jobs, chunksize=4))
            x_test = np.stack(pool.map(_logmel, test_jobs, chunksize=4))
            y_train = np.array([j.fault is not None for j in train_jobs], int)
            y_test = np.array([j.fault is not None for j in test_jobs], int)
            test_ids = np.array([j.machine_id for j in test_jobs])

            def stats(x, jobs):
                return np.stack([np.concatenate([spectral_vector(v.astype(np.float32)), np.eye(len(ids))[ids.index(j.machine_id)]])
                                 for v, j in zip(x, jobs)])

            linear = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000)).fit(stats(x_train, train_jobs), y_train)
            scores = {"linear_spectral": linear.decision_function(stats(x_test, test_jobs)),
                      "cnn": train_cnn(x_train, y_train, x_test, args.epochs, args.device, args.seed)}
            for m in ids:
                sel = test_ids == m
                results[f"{machine_type}/{m}"] = {k: float(roc_auc_score(y_test[sel], v[sel])) for k, v in scores.items()}
                print(machine_type, m, {k: round(v, 3) for k, v in results[f"{machine_type}/{m}"].items()}, f"({time.time() - t0:.0f} s)", flush=True)
    types = sorted({m.split("/")[0] for m in results})
    summary = {k: {t: float(np.mean([v[k] for m, v in results.items() if m.startswith(t + "/")])) for t in types} for k in ("linear_spectral", "cnn")}
    for k, per in summary.items():
        print(k, {t: round(v, 3) for t, v in per.items()}, "mean", round(float(np.mean(list(per.values()))), 3))
    (args.out / f"ceiling-seed{args.seed}.json").write_text(json.dumps({"per_id": results, "per_type": summary, "args": vars(args) | {"out": str(args.out)}}, indent=1))


if __name__ == "__main__":
    main()
