"""A microphone gain change after enrollment: AUC and false alarms of the model-free default.

    .venv/bin/python benchmarks/gain_shift.py --data 'results/indep/data-seed{seed}' --seeds 0,1,2,3,4 [--gains=-6,0,6]

The statistics and thresholds are fitted on each id's training normals as recorded; the test
clips are then scored as a microphone with ``--gains`` dB more gain would hear them (the waveform
scaled in float, so nothing clips). Each row is one statistic of the default's `acoustic`
component at one gain: the default (bundle schema 9: band means relative to the clip's level,
each frame floored 80 dB below its loudest bin, band flatness), schema 8's (no band flatness),
schema 7's (the front end's fixed -80 dB floor only), or the statistic before schema 7 (absolute
level, fixed floor). Per row: mean AUC +- SE over seeds, the false-alarm
rate on the unseen test normals at the stored thresholds, and how many (seed, id) units alarm on
more than 20 % of their normals. Nothing is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import FAR_TARGET, fit_model_free, per_machine, scoring_variant  # noqa: E402  (the benchmark next to this one)

from mtad.edge_runtime.audio import load_audio  # noqa: E402
from mtad.edge_runtime.dataset import scan_dataset  # noqa: E402
from mtad.edge_runtime.envelope import envelope_vector  # noqa: E402
from mtad.edge_runtime.features import LogMelExtractor  # noqa: E402
from mtad.edge_runtime.scoring import ClipEvidence  # noqa: E402
from mtad.train.evaluate import score_outputs  # noqa: E402

STATISTICS = {"relative level, frame-relative floor, band flatness, line strength (default, schema 10)": None,
              "without line strength (schema 9)": "nolines",
              "without band flatness or line strength (schema 8)": "notonal",
              "relative level, fixed floor (schema 7)": "fixedfloor+notonal",
              "absolute level, fixed floor (before schema 7)": "absolute+fixedfloor+notonal"}
ALARMING = 0.2  # a unit "alarms all day" above this false-alarm rate on its normals


def evidence(clips, gain_db: float, extract: LogMelExtractor) -> list[tuple[str, ClipEvidence]]:
    """``(machine, evidence)`` of each clip as heard with ``gain_db`` more gain."""
    out = []
    for c in clips:
        audio = load_audio(c.path, extract.cfg.sample_rate) * np.float32(10 ** (gain_db / 20))
        out.append((c.machine, ClipEvidence(None, None, extract(audio), envelope=envelope_vector(audio))))
    return out


def evaluate_set(data: Path, gains: list[float]) -> dict:
    """``{statistic: {gain: {machine: (auc, pauc, far, expected)}}}`` for one dataset."""
    index = scan_dataset(data)
    extract = LogMelExtractor()
    train_clips, test_clips = index.select("train", label=0), index.select("test")
    held = evidence(train_clips, 0.0, extract)
    tests = {g: evidence(test_clips, g, extract) for g in gains}
    out = {}
    for label, version in STATISTICS.items():
        with scoring_variant(version):
            stats, counts = fit_model_free(held, version=version)
            out[label] = {g: per_machine(score_outputs(stats, test_clips, tests[g]), counts) for g in gains}
    return out


def render(per_seed: dict[int, dict], gains: list[float]) -> str:
    seeds = sorted(per_seed)
    lines = [f"acoustic (the default) under a gain change, seeds {seeds}: mean AUC +- SE over seeds, false-alarm rate on unseen normals",
             "", f"| statistic | gain (dB) | **mean AUC** | false-alarm rate (target {FAR_TARGET:g}) | units above {ALARMING:g} |", "|---|---|---|---|---|"]
    for label in STATISTICS:
        for g in gains:
            units = [per_seed[s][label][g] for s in seeds]
            aucs = np.array([np.mean([v[0] for v in u.values()]) for u in units])
            fars = [v[2] for u in units for v in u.values()]
            se = aucs.std(ddof=1) / np.sqrt(aucs.size) if aucs.size > 1 else float("nan")
            lines.append(f"| {label} | {g:+g} | **{aucs.mean():.3f} +- {se:.3f}** | {np.mean(fars):.3f} | "
                         f"{sum(f > ALARMING for f in fars)} of {len(fars)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dataset in the DCASE 2020 layout; a {seed} in it names one per seed")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--gains", default="-6,0,6", help="gain changes in dB, comma-separated")
    args = ap.parse_args()
    gains = [float(g) for g in args.gains.split(",")]
    per_seed = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        data = Path(args.data.replace("{seed}", str(seed)))
        if not data.is_dir():
            ap.error(f"--data: no such directory: {data}")
        per_seed[seed] = evaluate_set(data, gains)
        print(f"seed {seed}: done", flush=True)
    print(render(per_seed, gains))


if __name__ == "__main__":
    main()
