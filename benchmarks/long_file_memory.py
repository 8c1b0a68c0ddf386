"""Peak memory of scoring a long recording: block by block (what `mtad-edge` does) vs whole.

    .venv/bin/python benchmarks/long_file_memory.py --bundle demo_out/bundle [--minutes 1,60] [--json out.json]

Writes a 16 kHz mono 16-bit WAV of each length (a machine-like tone in noise), then scores
it in a fresh process per (length, path) and reports that process's peak RSS (ru_maxrss),
the wall time and the score. The block path must stay flat in the length; both paths must
give the same score.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

CHILD = r"""
import json, resource, sys, time
from mtad.edge_runtime.allocator import keep_freed_memory
keep_freed_memory()  # as mtad-edge does (MTAD_MALLOC=default: glibc's own thresholds)
from mtad.edge_runtime.audio import load_audio
from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.pipeline import EdgeScorer
bundle_dir, path, machine, mode = sys.argv[1:5]
b = load_bundle(bundle_dir)
s = EdgeScorer(b, b.onnx_runner("fp32", "CPUExecutionProvider", threads=1))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if mode == "blocks":
    r = s.score_file_blocks(path, machine)
else:
    r = s.score_audio(load_audio(path), machine, path)
print(json.dumps({"score": r.score, "wall_s": time.perf_counter() - t, "rss_before_mb": base / 1024,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_recording(path: Path, minutes: float, rate: int = 16000) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(rate) / rate
    tone = 0.1 * np.sin(2 * np.pi * 120 * t) + 0.05 * np.sin(2 * np.pi * 1500 * t)
    with sf.SoundFile(path, "w", rate, 1, "PCM_16") as f:
        for _ in range(int(minutes * 60)):  # one second at a time: the generator stays small too
            f.write((tone + 0.02 * rng.standard_normal(rate)).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--machine", help="default: the bundle's first machine")
    ap.add_argument("--minutes", default="1,60", help="comma-separated lengths")
    ap.add_argument("--paths", default="blocks,whole", help="blocks, whole or both")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from mtad.edge_runtime.bundle import load_bundle

    machine = args.machine or load_bundle(args.bundle).class_map[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in [float(m) for m in args.minutes.split(",")]:
            wav = Path(tmp) / f"{minutes:g}min.wav"
            write_recording(wav, minutes)
            for mode in args.paths.split(","):
                out = subprocess.run([sys.executable, "-c", CHILD, str(args.bundle), str(wav), machine, mode],
                                     capture_output=True, text=True, check=True)
                row = {"minutes": minutes, "path": mode, "file_mb": round(wav.stat().st_size / 2**20, 1), **json.loads(out.stdout)}
                rows.append(row)
                print(f"{minutes:5g} min  {mode:6s}  file {row['file_mb']:7.1f} MB  peak RSS {row['peak_rss_mb']:7.1f} MB "
                      f"(after loading the model {row['rss_before_mb']:.1f} MB)  {row['wall_s']:6.1f} s  score {row['score']:.6f}",
                      flush=True)
            wav.unlink()
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "bundle": str(args.bundle), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
