"""The microphone path without sound hardware: a simulated PyAudio drives the real callback,
ring buffer, streaming resampler, scorer thread and accounting."""

import sys

import numpy as np
import pytest

from mtad.edge_runtime.audio import load_audio, resample
from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.mic import AudioRing, MicError, import_pyaudio, run_microphone
from mtad.edge_runtime.mic_sim import SimulatedPyAudio
from mtad.edge_runtime.pipeline import EdgeScorer


class ListSink:
    def __init__(self):
        self.lines = []

    def write(self, record):
        self.lines.append(record)


@pytest.fixture(scope="module")
def scorer(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    return EdgeScorer(bundle, bundle.onnx_runner("fp32", "CPUExecutionProvider"))


def test_ring_drops_oldest_and_accounts_for_every_sample():
    ring = AudioRing(10)
    ring.write(np.arange(6, dtype=np.float32))
    ring.write(np.arange(6, 13, dtype=np.float32))  # 13 written into 10: the 3 oldest go
    assert ring.dropped == 3 and ring.buffered == 10
    np.testing.assert_array_equal(ring.read(4, 0.1), [3, 4, 5, 6])
    ring.write(np.arange(13, 40, dtype=np.float32))  # more than capacity at once
    np.testing.assert_array_equal(ring.read(100, 0.1), np.arange(30, 40))
    assert ring.captured == ring.consumed + ring.dropped + ring.buffered == 40
    assert ring.read(1, 0.01) is None


def test_44k1_device_with_overflows_scores_each_hop(scorer, tiny_synth):
    clip = sorted((tiny_synth / "pump" / "test").glob("normal_id_02_*.wav"))[0]
    y = load_audio(clip)  # 3 s at 16 kHz
    stream = resample(np.concatenate([y, y]), 16000, 44100)  # 6 s at the device's rate
    pa = SimulatedPyAudio(stream, rate=44100, speed=None, overflow_every=7)
    sink = ListSink()
    summary = run_microphone(scorer, "pump/id_02", sink, {"backend": "onnxruntime", "precision": "fp32"}, window_s=3.0, hop_s=0.5,
                             heartbeat_s=0.05, pyaudio_module=pa, frames_per_buffer=1024, log=lambda m: None)
    windows = [r for r in sink.lines if r.get("type") == "window"]
    n_chunks = pa.streams[0].chunks
    assert len(windows) == 1 + int((6.0 - 3.0) / 0.5)  # first full window, then one per hop
    assert windows[-1]["input_overflows"] == n_chunks // 7 > 0
    assert all(r["dropped_samples"] == 0 for r in windows)
    assert any(r.get("type") == "heartbeat" for r in sink.lines)
    # the first window is the clip itself, resampled 16k -> 44.1k -> 16k on the way
    assert windows[0]["score"] == pytest.approx(scorer.score_audio(y, "pump/id_02").score, rel=0.1, abs=0.5)
    assert "7 windows scored" in summary and "0 samples dropped" in summary


def test_slow_scorer_drops_are_counted_never_silent(scorer, tiny_synth):
    y = load_audio(sorted((tiny_synth / "fan" / "train").glob("*.wav"))[0])
    pa = SimulatedPyAudio(np.tile(y, 20), rate=16000, speed=None)  # 60 s delivered at once
    sink = ListSink()
    from mtad.edge_runtime import mic

    session_holder = {}
    original = mic.MicSession.__init__

    def small_ring(self, *a, **k):
        original(self, *a, **{**k, "ring_seconds": 4.0})
        session_holder["s"] = self

    mic.MicSession.__init__ = small_ring
    try:
        run_microphone(scorer, "fan/id_00", sink, {}, window_s=3.0, hop_s=1.0, heartbeat_s=60, pyaudio_module=pa, log=lambda m: None)
    finally:
        mic.MicSession.__init__ = original
    acc = session_holder["s"].accounting()
    assert acc["unaccounted"] == 0 and acc["captured"] == 60 * 16000
    assert acc["dropped"] > 0
    reported = sum(r["dropped_samples"] for r in sink.lines if r.get("type") == "window")
    assert reported <= acc["dropped"] and sink.lines[-1]["dropped_total"] == reported


def test_bad_window_is_reported_and_stream_goes_on(scorer, tiny_synth):
    y = load_audio(sorted((tiny_synth / "fan" / "train").glob("*.wav"))[0])
    stream = np.concatenate([y, np.zeros(48000, np.float32), y])  # 3 s of dead microphone in the middle
    sink = ListSink()
    run_microphone(scorer, "fan/id_00", sink, {}, window_s=3.0, hop_s=3.0, heartbeat_s=60, pyaudio_module=SimulatedPyAudio(stream), log=lambda m: None)
    windows = [r for r in sink.lines if r.get("type") == "window"]
    assert len(windows) == 3
    assert "silence" in windows[1]["error"] and "score" in windows[2]


def test_invalid_device_is_refused_before_opening(scorer):
    pa = SimulatedPyAudio(np.zeros(16000, np.float32))
    with pytest.raises(MicError, match="no audio device 5: this system has 1 device"):
        run_microphone(scorer, "fan/id_00", ListSink(), {}, device_index=5, pyaudio_module=pa)
    assert pa.streams == []  # never opened


def test_missing_pyaudio_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyaudio", None)
    with pytest.raises(MicError, match=r"pip install mtad\[mic\]"):
        import_pyaudio()


def test_list_devices_says_when_there_are_none(monkeypatch, tiny_bundle):
    from click.testing import CliRunner

    import mtad.edge_runtime.mic as mic
    from mtad.edge_runtime.cli import main as edge_main

    monkeypatch.setattr(mic, "list_input_devices", lambda: [])
    res = CliRunner().invoke(edge_main, ["--bundle", str(tiny_bundle), "--mic", "--list-devices"])
    assert res.exit_code == 1 and "no audio input devices found" in res.output
