"""The microphone path without sound hardware: a simulated PyAudio drives the real callback,
ring buffer, streaming resampler, scorer thread and accounting."""

import sys

import numpy as np
import pytest

from mtad.edge_runtime.audio import load_audio, resample
from mtad.edge_runtime.mic import AudioRing, MicError, import_pyaudio, run_microphone
from tests.mic_sim import ListSink, SimulatedPyAudio




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


# -- bounds ----------------------------------------------------------------------------------
@pytest.mark.parametrize("window, hop, message", [
    (3.0, 4.0, r"--hop \(4 s\) must not exceed --window \(3 s\)"),
    (0.5, 0.25, r"--window must be between 0.99 s .* and 60 s, got 0.5"),
    (61.0, 1.0, r"--window must be between .* and 60 s, got 61"),
    (float("nan"), 1.0, r"--window must be between"),
    (3.0, 0.0, r"--hop must be at least 0.01 s, got 0"),
])
def test_window_and_hop_bounds(scorer, window, hop, message):
    pa = SimulatedPyAudio(np.zeros(16000, np.float32))
    with pytest.raises(MicError, match=message):
        run_microphone(scorer, "fan/id_00", ListSink(), {}, window_s=window, hop_s=hop, pyaudio_module=pa)
    assert pa.streams == []  # refused before the device was opened


def test_cli_refuses_bad_hop_in_one_line(tiny_bundle):
    from click.testing import CliRunner

    from mtad.edge_runtime.cli import main as edge_main

    res = CliRunner().invoke(edge_main, ["--bundle", str(tiny_bundle), "--mic", "--machine", "fan/id_00", "--window", "2", "--hop", "3"])
    assert res.exit_code == 1
    assert res.output.strip() == "error: --hop (3 s) must not exceed --window (2 s): audio between windows would never be scored"


# -- --input-device and the deprecated --device ------------------------------------------------
@pytest.mark.parametrize("flag, warns", [("--input-device", False), ("--device", True)])
def test_input_device_flag_and_deprecated_alias(monkeypatch, tiny_bundle, tiny_synth, flag, warns):
    from click.testing import CliRunner

    import mtad.edge_runtime.mic as mic
    from mtad.edge_runtime.cli import main as edge_main

    y = load_audio(sorted((tiny_synth / "fan" / "train").glob("*.wav"))[0])
    pa = SimulatedPyAudio(np.concatenate([y, y]))
    monkeypatch.setattr(mic, "import_pyaudio", lambda: pa)
    res = CliRunner().invoke(edge_main, ["--bundle", str(tiny_bundle), "--mic", "--machine", "fan/id_00", flag, "0",
                                         "--window", "3", "--hop", "1", "--heartbeat", "60"])
    assert res.exit_code == 0, res.output
    assert ("--device is deprecated" in res.output) == warns
    assert res.output.count('"type": "window"') == 4  # 6 s: one full window, then one per 1 s hop
    res = CliRunner().invoke(edge_main, ["--bundle", str(tiny_bundle), "--mic", "--machine", "fan/id_00", flag, "3"])
    assert res.exit_code == 1 and "no audio device 3: this system has 1 device(s)" in res.output


def test_nothing_installed_imports_the_test_double():
    import importlib.util

    assert importlib.util.find_spec("mtad.edge_runtime.mic_sim") is None


# -- systemd notify / watchdog over a real AF_UNIX datagram socket ------------------------------
class NotifyListener:
    """What systemd does: a datagram socket whose path goes in $NOTIFY_SOCKET; messages timestamped."""

    def __init__(self, path):
        import socket
        import threading

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages = []  # (monotonic time, {key: value})
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import time

        while not self.stop.is_set():
            try:
                data = self.sock.recv(4096)
            except OSError:
                continue
            self.messages.append((time.monotonic(), dict(line.split("=", 1) for line in data.decode().splitlines())))

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()

    def times(self, key):
        return [t for t, m in self.messages if key in m]

    def wait_for(self, key, timeout=10.0):
        """Datagrams are read on a thread: wait until ``key`` has arrived (sent is not yet read)."""
        import time

        deadline = time.monotonic() + timeout
        while not self.times(key) and time.monotonic() < deadline:
            time.sleep(0.01)


@pytest.fixture
def notify(tmp_path):
    listener = NotifyListener(tmp_path / "notify")
    yield listener
    listener.close()


def test_ready_watchdog_and_stopping_reach_systemd(scorer, tiny_synth, notify):
    from mtad.edge_runtime.systemd import SystemdNotifier

    y = load_audio(sorted((tiny_synth / "fan" / "train").glob("*.wav"))[0])
    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify.sock.getsockname(), "WATCHDOG_USEC": "1000000"})
    assert notifier.watchdog_s == 1.0
    # 12 s of audio at 2x real time (6 s of wall time), a window every 0.5 s of audio = 0.25 s of wall time
    run_microphone(scorer, "fan/id_00", ListSink(), {}, window_s=3.0, hop_s=0.5, heartbeat_s=60,
                   pyaudio_module=SimulatedPyAudio(np.tile(y, 4), speed=2.0), log=lambda m: None, notifier=notifier)
    notify.wait_for("STOPPING")
    keys = [next(iter(m)) for _, m in notify.messages]
    assert keys[0] == "READY" and keys[-1] == "STOPPING"
    pings = notify.times("WATCHDOG")
    assert len(pings) >= 8  # every 0.5 s (half the interval) for ~5 s
    assert max(np.diff(pings)) < 1.0  # never a gap systemd would act on
    assert "windows scored" in notify.messages[-2][1]["STATUS"]


def test_watchdog_stops_while_the_scorer_hangs(scorer, tiny_synth, notify):
    """A scorer stuck inside a window gets no more WATCHDOG=1, so systemd would restart it."""
    import threading
    import time

    from mtad.edge_runtime.systemd import SystemdNotifier

    y = load_audio(sorted((tiny_synth / "fan" / "train").glob("*.wav"))[0])
    release, hung_at = threading.Event(), []

    class HangingScorer:
        sample_rate, min_samples = scorer.sample_rate, scorer.min_samples
        calls = 0

        def check_machine(self, m):
            return scorer.check_machine(m)

        def score_audio(self, audio, machine, name="audio"):
            HangingScorer.calls += 1
            if HangingScorer.calls == 4:
                hung_at.append(time.monotonic())
                release.wait(10)  # e.g. a deadlocked inference call
            return scorer.score_audio(audio, machine, name)

    notifier = SystemdNotifier({"NOTIFY_SOCKET": notify.sock.getsockname(), "WATCHDOG_USEC": "400000"})
    t = threading.Thread(target=run_microphone, args=(HangingScorer(), "fan/id_00", ListSink(), {}),
                         kwargs=dict(window_s=3.0, hop_s=0.25, heartbeat_s=60, pyaudio_module=SimulatedPyAudio(np.tile(y, 8), speed=4.0),
                                     log=lambda m: None, notifier=notifier))
    t.start()
    deadline = time.monotonic() + 20
    while not hung_at and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(2.0)  # five watchdog intervals of a hung scorer
    release.set()
    t.join(timeout=30)
    pings = notify.times("WATCHDOG")
    before = [p for p in pings if p < hung_at[0]]
    during = [p for p in pings if hung_at[0] + 0.4 < p < hung_at[0] + 2.0]
    assert len(before) >= 1 and during == []
    assert any(p > hung_at[0] + 2.0 for p in pings)  # pings resume once the scorer moves again


def test_no_notify_socket_means_no_op():
    from mtad.edge_runtime.systemd import SystemdNotifier

    n = SystemdNotifier({})
    assert not n.enabled and n.watchdog_s is None and n.ready() is False and not n.watchdog_due()
    n = SystemdNotifier({"NOTIFY_SOCKET": "/nonexistent/sock", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_s is None  # the watchdog was meant for another process
    assert n.ready() is False  # a socket that is gone is never fatal
