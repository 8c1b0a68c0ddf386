"""How loud each synthetic fault is where it is loudest: the level of what the fault changes in
the clip against everything else in the clip, in the band where that ratio peaks.

    .venv/bin/python benchmarks/fault_band_levels.py [--seeds 0,1,2,3,4] [--aucs results/accuracy/fault-kinds-model-free.json]

``fault_db`` (the level column of ``fault_kinds.py``) compares a fault with the machine's whole
sound. A detector can do better than that by looking where the fault is strongest, so this
re-renders every anomalous test clip of the accuracy benchmark's sets (the same seeds and clips;
nothing is read from disk) and measures, with :func:`mtad.train.synth.fault_band_level`, the
fault's change against the machine without it plus the background within +-15 % of the
frequency where their power ratio peaks. Per fault kind it prints the median over the clips, the
10th-90th percentile range, and, given ``--aucs`` (``fault_kinds.py --model-free``'s JSON), the
default's AUC on that kind beside it, and plots that AUC against the level (a PNG next to the
JSON; needs matplotlib, from the ``train`` extra). No model, no features: about a minute a seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_kinds import MODEL_FREE_ROWS  # noqa: E402  (the benchmark next to this one, whose JSON --aucs reads)

from mtad.edge_runtime.atomic import atomic_write  # noqa: E402
from mtad.train.synth import SynthConfig, fault_band_level, plan_jobs  # noqa: E402

DEFAULT_ROW = MODEL_FREE_ROWS[0][0]  # the default's row label in fault_kinds.py --model-free's JSON


def kind_levels(seed: int, n_test: int = 50, severity: float = 1.0, progress: bool = True) -> dict[str, dict[str, list[float]]]:
    """``{"type/fault": {"band_db": [...], "centre_hz": [...]}}`` over the seed's anomalous test clips."""
    cfg = SynthConfig(seed=seed, test=n_test, severity=severity)
    jobs = [j for j in plan_jobs(cfg) if j.split == "test" and j.fault is not None]
    out: dict[str, dict[str, list[float]]] = {}
    for j in tqdm(jobs, desc=f"seed {seed}", unit="clip", disable=None if progress else True):
        level, centre = fault_band_level(cfg, j.machine_type, j.machine_id, j.split, j.fault, j.index)
        row = out.setdefault(f"{j.machine_type}/{j.fault}", {"band_db": [], "centre_hz": []})
        row["band_db"].append(level)
        row["centre_hz"].append(centre)
    return out


def summarise(per_seed: list[dict], aucs: dict | None = None) -> dict[str, dict]:
    """Pool the seeds' clips per fault kind: median, 10th and 90th percentile of the band level,
    the median centre, the clip count, and the default's AUC (mean, SE) where ``aucs`` has it."""
    kinds = sorted({k for s in per_seed for k in s})
    table = {}
    for kind in kinds:
        levels = np.concatenate([s[kind]["band_db"] for s in per_seed if kind in s])
        centres = np.concatenate([s[kind]["centre_hz"] for s in per_seed if kind in s])
        row = {"band_db_median": float(np.median(levels)), "band_db_p10": float(np.percentile(levels, 10)),
               "band_db_p90": float(np.percentile(levels, 90)), "centre_hz_median": float(np.median(centres)), "clips": int(levels.size)}
        if aucs and kind in aucs.get("table", {}):
            row["level_db"] = aucs["table"][kind].get("level_db")
            row["auc"] = aucs["table"][kind].get(DEFAULT_ROW)
        table[kind] = row
    return table


def render(table: dict[str, dict], seeds: list[int]) -> str:
    with_auc = any("auc" in r for r in table.values())
    lines = [f"Each fault's change against the rest of its clip in the +-15 % band where it is strongest; seeds {seeds}", ""]
    head = "| type | fault | clips | strongest band: median dB (10th-90th pct) | band centre (Hz, median) |"
    rule = "|---|---|---|---|---|"
    if with_auc:
        head += " whole machine sound (dB, fault_kinds.py) | default AUC (fault_kinds.py --model-free) |"
        rule += "---|---|"
    lines += [head, rule]
    for kind, r in sorted(table.items(), key=lambda kv: -kv[1]["band_db_median"]):
        mtype, fault = kind.split("/")
        line = (f"| {mtype} | {fault} | {r['clips']} | {r['band_db_median']:.1f} ({r['band_db_p10']:.1f} to {r['band_db_p90']:.1f}) "
                f"| {r['centre_hz_median']:.0f} |")
        if with_auc:
            level = "" if r.get("level_db") is None else f"{r['level_db']:.0f}"
            auc = "" if r.get("auc") is None else f"{r['auc'][0]:.3f} +- {r['auc'][1]:.3f}"
            line += f" {level} | {auc} |"
        lines.append(line)
    return "\n".join(lines)


def plot(table: dict[str, dict], path: Path) -> bool:
    """The default's AUC against each kind's strongest-band level (median, with the 10th-90th
    percentile as a bar), one point per kind that has an AUC; False when there is none or
    matplotlib is missing."""
    rows = {k: r for k, r in table.items() if r.get("auc")}
    if not rows:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    placed: list[tuple[float, float]] = []
    for kind, r in sorted(rows.items(), key=lambda kv: kv[1]["band_db_median"]):
        x, (auc, se) = r["band_db_median"], r["auc"]
        ax.errorbar(x, auc, xerr=[[x - r["band_db_p10"]], [r["band_db_p90"] - x]], yerr=2 * se, fmt="o", ms=4, lw=0.8, capsize=2)
        crowd = sum(abs(x - px) < 8 and abs(auc - pa) < 0.03 for px, pa in placed)  # labels of close points step down
        ax.annotate(kind.replace("_", " "), (x, auc), textcoords="offset points", xytext=(4, 3 - 9 * crowd), fontsize=7)
        placed.append((x, auc))
    ax.axhline(0.5, color="k", ls=":", lw=0.8)
    ax.set_xlabel("fault against the rest of its clip, in its strongest +-15 % band (dB; bars: 10th-90th percentile)")
    ax.set_ylabel("default's AUC on the kind (bars: 2 SE)")
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return True


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--test", type=int, default=50, help="normal and anomalous test clips per id (the accuracy benchmark's 50)")
    ap.add_argument("--severity", type=float, default=1.0)
    ap.add_argument("--aucs", type=Path, default=Path("results/accuracy/fault-kinds-model-free.json"),
                    help="fault_kinds.py --model-free's JSON, for the AUC column (skipped if absent)")
    ap.add_argument("--out", type=Path, default=Path("results/accuracy/fault-band-levels.json"))
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    per_seed = [kind_levels(s, args.test, args.severity) for s in seeds]
    aucs = json.loads(args.aucs.read_text()) if args.aucs.exists() else None
    table = summarise(per_seed, aucs)
    text = render(table, seeds)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w") as f:
        f.write(json.dumps({"seeds": seeds, "table": table}, indent=1))
    with atomic_write(args.out.with_suffix(".md"), "w") as f:
        f.write(text + "\n")
    if plot(table, args.out.with_suffix(".png")):
        print(f"plot: {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
