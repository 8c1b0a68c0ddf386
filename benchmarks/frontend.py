"""Front-end benchmark: mtad's numpy/scipy log-mel vs librosa on the same clips, same run.

    .venv/bin/python benchmarks/frontend.py [--clips DIR] [--repeats N]

Reports steady-state ms per 10 s clip (interleaved, median), the first clip in a fresh
process (import + first call, each in its own subprocess), and the max relative error.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

DEFAULT_CLIPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mimii-pairs-0db"

FRESH = {
    "mtad": "from mtad.edge_runtime.features import LogMelExtractor as E; f=E()",
    "librosa": "import librosa; f=lambda y: librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=16000, n_fft=2048, hop_length=512, n_mels=128, pad_mode='constant'))",
}


def fresh_process_ms(name: str, clip: Path) -> tuple[float, float]:
    """(import + set-up ms, first-call ms) in a new interpreter."""
    code = (
        "import time, soundfile as sf; y, _ = sf.read(%r, dtype='float32'); t0 = time.perf_counter();"
        "%s; t1 = time.perf_counter(); f(y); t2 = time.perf_counter(); print((t1 - t0) * 1000, (t2 - t1) * 1000)"
        % (str(clip), FRESH[name])
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imp, call = out.stdout.strip().splitlines()[-1].split()
    return float(imp), float(call)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=Path, default=DEFAULT_CLIPS)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--fresh", type=int, default=3, help="fresh-process runs per implementation")
    args = ap.parse_args()

    import librosa

    from mtad.edge_runtime.features import LogMelExtractor

    clips = sorted(args.clips.rglob("*.wav"))
    if not clips:
        sys.exit(f"no .wav files under {args.clips}")
    audio = [sf.read(p, dtype="float32")[0] for p in clips]
    ours = LogMelExtractor()

    def ref(y):
        return librosa.power_to_db(
            librosa.feature.melspectrogram(y=y, sr=16000, n_fft=2048, hop_length=512, n_mels=128, pad_mode="constant"),
            ref=1.0, amin=1e-8, top_db=None,
        )

    max_rel = 0.0
    for y in audio:
        a = ours.mel_power(y)
        b = librosa.feature.melspectrogram(y=y, sr=16000, n_fft=2048, hop_length=512, n_mels=128, pad_mode="constant")
        max_rel = max(max_rel, float(np.abs(a - b).max() / np.abs(b).max()))
        ref(y)  # warm up librosa's numba/JIT paths before timing

    t_ours, t_ref = [], []
    for _ in range(args.repeats):
        for y in audio:  # interleaved so machine noise hits both alike
            t = time.perf_counter(); ours(y); t_ours.append(time.perf_counter() - t)
            t = time.perf_counter(); ref(y); t_ref.append(time.perf_counter() - t)
    steady_ours = statistics.median(t_ours) * 1000
    steady_ref = statistics.median(t_ref) * 1000

    runs_ours = [fresh_process_ms("mtad", clips[0]) for _ in range(args.fresh)]
    runs_ref = [fresh_process_ms("librosa", clips[0]) for _ in range(args.fresh)]
    imp_ours, first_ours = (statistics.median(r[i] for r in runs_ours) for i in (0, 1))
    imp_ref, first_ref = (statistics.median(r[i] for r in runs_ref) for i in (0, 1))

    print(f"clips: {len(clips)} x {len(audio[0]) / 16000:.0f} s from {args.clips}")
    print("| measure | mtad (numpy+scipy) | librosa | ratio |")
    print("|---|---|---|---|")
    print(f"| steady state, ms per clip (median) | {steady_ours:.2f} | {steady_ref:.2f} | {steady_ref / steady_ours:.2f}x |")
    print(f"| first clip in a fresh process, ms (after import) | {first_ours:.1f} | {first_ref:.1f} | {first_ref / first_ours:.0f}x |")
    print(f"| import + set-up in a fresh process, ms | {imp_ours:.1f} | {imp_ref:.1f} | (librosa imports lazily) |")
    total_ours, total_ref = imp_ours + first_ours, imp_ref + first_ref
    print(f"| import + first clip, ms | {total_ours:.1f} | {total_ref:.1f} | {total_ref / total_ours:.1f}x |")
    print(f"| max relative error of mel power vs librosa | {max_rel:.1e} | | |")


if __name__ == "__main__":
    main()
