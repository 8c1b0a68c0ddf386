"""Fault injection: the microphone path's scoring thread fails or is killed -> the process says
why in one line and exits non-zero within seconds (so systemd restarts it); a bad window does not."""

import ctypes
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mtad.edge_runtime.mic import ScorerDied, run_microphone
from tests.faults.conftest import TALLY
from tests.mic_sim import ListSink, SimulatedPyAudio

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


class BreakingScorer:
    """The real scorer, failing with ``exc`` from window ``at`` on (a statistics bug, a runner crash)."""

    def __init__(self, scorer, at, exc):
        self.scorer, self.at, self.exc, self.calls = scorer, at, exc, 0
        self.sample_rate, self.min_samples = scorer.sample_rate, scorer.min_samples

    def check_machine(self, m):
        return self.scorer.check_machine(m)

    def score_audio(self, audio, machine, name="audio"):
        self.calls += 1
        if self.calls >= self.at:
            raise self.exc
        return self.scorer.score_audio(audio, machine, name)


def _tone(seconds):
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def test_scorer_exception_ends_the_stream_with_the_reason(scorer):
    # 60 s of audio at 4x real time: without the liveness check this ran 15 s with a dead scorer
    pa = SimulatedPyAudio(_tone(60), speed=4.0)
    sink = ListSink()
    t0 = time.monotonic()
    with pytest.raises(ScorerDied, match=r"scoring thread died after 2 window\(s\): ValueError: matmul: shape mismatch"):
        run_microphone(BreakingScorer(scorer, 3, ValueError("matmul: shape mismatch")), "fan/id_00", sink, {}, window_s=2.0,
                       hop_s=0.5, heartbeat_s=60, pyaudio_module=pa, log=lambda m: None)
    assert time.monotonic() - t0 < 5.0
    assert len([r for r in sink.lines if r.get("type") == "window"]) == 2


def test_killed_scorer_thread_ends_the_stream(scorer):
    """The thread is killed from outside (an exception raised into it asynchronously)."""
    pa = SimulatedPyAudio(_tone(60), speed=4.0)
    sink = ListSink()
    result = {}

    def run():
        try:
            run_microphone(scorer, "fan/id_00", sink, {}, window_s=2.0, hop_s=0.5, heartbeat_s=60, pyaudio_module=pa, log=lambda m: None)
        except ScorerDied as exc:
            result["error"] = str(exc)
        result["t"] = time.monotonic()

    main = threading.Thread(target=run)
    main.start()
    deadline = time.monotonic() + 20
    while len(sink.lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    victim = next(t for t in threading.enumerate() if t.name == "mtad-scorer")
    killed_at = time.monotonic()
    assert ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(victim.ident), ctypes.py_object(SystemExit)) == 1
    main.join(timeout=20)
    assert not main.is_alive()
    assert "scoring thread died" in result["error"] and "SystemExit" in result["error"]
    assert result["t"] - killed_at < 3.0
    TALLY["scorer failures -> exit 1"] += 1


DRIVER = r"""
import sys, numpy as np
import mtad.edge_runtime.mic as mic
import mtad.edge_runtime.pipeline as pipeline
from tests.mic_sim import SimulatedPyAudio
t = np.arange(16000 * 600) / 16000
mic.import_pyaudio = lambda: SimulatedPyAudio((0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.cos(7 * t)).astype(np.float32), speed=4.0)
real = pipeline.EdgeScorer.score_audio
calls = [0]
def score_audio(self, *a, **k):
    calls[0] += 1
    if calls[0] == 3:
        raise {exc}
    return real(self, *a, **k)
pipeline.EdgeScorer.score_audio = score_audio
from mtad.edge_runtime.cli import main
main(sys.argv[1:], prog_name="mtad-edge")
"""


@pytest.mark.parametrize("exc", ["ValueError('precision matrix has shape (16, 15), expected (16, 16)')", "MemoryError()"])
def test_process_exits_nonzero_with_one_line(fault_bundle, tmp_path, exc):
    """The real CLI in its own process, on 10 minutes of simulated audio: it must not keep running."""
    out = tmp_path / "out.jsonl"
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", DRIVER.replace("{exc}", exc), "--bundle", str(fault_bundle), "--mic", "--machine", "fan/id_00",
                        "--window", "2", "--hop", "0.5", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert p.returncode == 1, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "scoring thread died after 2 window(s)" in errors[0], p.stderr
    assert exc.split("(")[0] in errors[0]
    assert "Traceback" not in p.stderr
    assert len(out.read_text().splitlines()) == 2
    assert elapsed < 30  # model load + 2.5 s of audio at 4x; the source would run 150 s
    TALLY["scorer failures -> exit 1"] += 1


def test_bad_window_is_a_line_not_a_death(scorer):
    """An MtadError for one window (dead microphone for a while) stays a line; scoring goes on."""
    y = _tone(4)
    stream = np.concatenate([y, np.zeros(4 * 16000, np.float32), y])
    sink = ListSink()
    summary = run_microphone(scorer, "fan/id_00", sink, {}, window_s=2.0, hop_s=2.0, heartbeat_s=60,
                             pyaudio_module=SimulatedPyAudio(stream), log=lambda m: None)
    windows = [r for r in sink.lines if r.get("type") == "window"]
    assert ["error" in r for r in windows] == [False, False, True, True, False, False]
    assert "4 windows scored" in summary and "2 bad windows" in summary
