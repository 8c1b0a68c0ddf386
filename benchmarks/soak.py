"""Soak run of the microphone path: a simulated device streams at least an hour of audio
faster than real time through the real callback, resampler, ring and scorer thread.

    .venv/bin/python benchmarks/soak.py --bundle demo_out/bundle [--hours 1] [--rate 44100] [--speed 40]

Reports RSS over time (it must stay flat) and the sample accounting (nothing unaccounted).
"""

from __future__ import annotations

import argparse
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

from mtad.edge_runtime.allocator import keep_freed_memory
from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.mic import run_microphone
from mtad.edge_runtime.pipeline import EdgeScorer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the simulated device is a test double in tests/
from tests.mic_sim import SimulatedPyAudio  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class CountingSink:
    def __init__(self):
        self.windows = self.heartbeats = self.errors = self.dropped = 0

    def write(self, record: dict) -> None:
        if record.get("type") == "heartbeat":
            self.heartbeats += 1
        elif "error" in record:
            self.errors += 1
        else:
            self.windows += 1
            self.dropped += record.get("dropped_samples", 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--machine", help="default: the bundle's first machine")
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=44100, help="simulated device rate (resampled to 16 kHz)")
    ap.add_argument("--speed", type=float, default=40.0, help="times faster than real time")
    ap.add_argument("--precision", default="int8")
    args = ap.parse_args()

    keep_freed_memory()  # as mtad-edge does
    bundle = load_bundle(args.bundle)
    machine = args.machine or bundle.class_map[0]
    scorer = EdgeScorer(bundle, bundle.onnx_runner(args.precision, threads=1))
    total = int(args.hours * 3600 * args.rate)
    rng = np.random.default_rng(0)
    t = np.arange(int(args.rate)) / args.rate
    tone = (0.1 * np.sin(2 * np.pi * 120 * t) + 0.05 * np.sin(2 * np.pi * 1500 * t)).astype(np.float32)
    delivered = [0]

    def source(n):  # endless machine-like signal, 'hours' long
        if delivered[0] >= total:
            return np.zeros(0, np.float32)
        n = min(n, total - delivered[0])
        start = delivered[0] % len(tone)
        idx = (start + np.arange(n)) % len(tone)
        delivered[0] += n
        return tone[idx] + 0.02 * rng.standard_normal(n).astype(np.float32)

    samples = []
    stop = threading.Event()

    def sample_rss():
        t0 = time.monotonic()
        while not stop.wait(5):
            samples.append((time.monotonic() - t0, rss_mb()))

    threading.Thread(target=sample_rss, daemon=True).start()
    sink = CountingSink()
    holder = {}
    from mtad.edge_runtime import mic

    original = mic.MicSession.__init__

    def keep(self, *a, **k):
        original(self, *a, **k)
        holder["session"] = self

    mic.MicSession.__init__ = keep
    t0 = time.monotonic()
    summary = run_microphone(scorer, machine, sink, {}, window_s=10, hop_s=1, heartbeat_s=60 / args.speed,
                             pyaudio_module=SimulatedPyAudio(source, args.rate, speed=args.speed), log=lambda m: None)
    wall = time.monotonic() - t0
    stop.set()
    acc = holder["session"].accounting()
    audio_s = acc["captured"] / 16000
    print(summary)
    print(f"audio {audio_s / 3600:.2f} h in {wall / 60:.1f} min wall ({audio_s / wall:.0f}x real time); "
          f"windows {sink.windows}, heartbeats {sink.heartbeats}, error lines {sink.errors}")
    print(f"accounting: captured {acc['captured']}, consumed {acc['consumed']}, dropped {acc['dropped']}, "
          f"buffered {acc['buffered']}, unaccounted {acc['unaccounted']}")
    if samples:
        rss = np.array([r for _, r in samples])
        first, last = rss[: max(1, len(rss) // 10)].mean(), rss[-max(1, len(rss) // 10):].mean()
        print(f"RSS MB: first tenth {first:.1f}, last tenth {last:.1f}, max {rss.max():.1f} (growth {last - first:+.1f} MB)")
    print(f"peak RSS (ru_maxrss) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    holder.clear()  # free the session (and soxr's stream) before interpreter shutdown


if __name__ == "__main__":
    main()
