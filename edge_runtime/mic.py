"""Live microphone scoring: PyAudio callback -> streaming resampler -> bounded ring -> scorer thread.

Every sample is accounted for: ``captured == consumed + dropped + buffered`` at all times.
Samples are dropped only when the scorer falls so far behind that the ring is full (the
oldest audio goes, so decisions stay current), and device-level input overflows are
counted from PyAudio's status flags. Both are reported in every output line.

The scorer cannot die silently: a bad window (an :class:`MtadError` such as a silent or NaN
window) is reported as a line and the stream goes on, but any other failure of the scoring
thread ends :func:`run_microphone` with :class:`ScorerDied` within a fraction of a second, so
the process exits non-zero and systemd restarts it. Under systemd the watchdog is pinged only
while windows keep being scored, so a hung scorer is restarted too.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import MtadError

PA_CONTINUE = 0  # pyaudio.paContinue
PA_INPUT_OVERFLOW = 2  # pyaudio.paInputOverflow
# Window bounds. The longest window is fixed rather than tied to the model: the model scores a
# window of any length in one batch, so the bound is about memory and latency (the ring holds
# max(2 windows, 30 s) of audio; a 60 s window is 16 batches of model windows per hop).
MAX_WINDOW_S = 60.0
MIN_HOP_S = 0.01
DRAIN_S = 30.0  # at the end of a finite stream, how long the scorer may take to read what is buffered


class MicError(MtadError):
    """The microphone cannot be used (no pyaudio, no such device, stream failure)."""


class ScorerDied(MtadError):
    """The scoring thread failed (not a bad window: the scorer itself); the process must restart."""


def check_window(window_s: float, hop_s: float, min_window_s: float, heartbeat_s: float = 60.0) -> None:
    """Refuse window/hop/heartbeat settings the stream cannot honour, naming the flag."""
    if not math.isfinite(window_s) or not min_window_s <= window_s <= MAX_WINDOW_S:
        raise MicError(f"--window must be between {min_window_s:.2f} s (this model's shortest input) and {MAX_WINDOW_S:g} s, got {window_s:g}")
    if not math.isfinite(hop_s) or hop_s < MIN_HOP_S:
        raise MicError(f"--hop must be at least {MIN_HOP_S:g} s, got {hop_s:g}")
    if hop_s > window_s:
        raise MicError(f"--hop ({hop_s:g} s) must not exceed --window ({window_s:g} s): audio between windows would never be scored")
    if not math.isfinite(heartbeat_s) or heartbeat_s <= 0:
        raise MicError(f"--heartbeat must be > 0 s, got {heartbeat_s:g}")


def import_pyaudio():
    try:
        import pyaudio
    except ImportError:
        raise MicError("pyaudio is not installed: `pip install mtad[mic]` (needs the system package portaudio19-dev)") from None
    return pyaudio


class AudioRing:
    """Bounded single-producer/single-consumer sample ring that drops the oldest on overflow."""

    def __init__(self, capacity: int):
        self.buf = np.zeros(capacity, np.float32)
        self.capacity = capacity
        self.start = 0  # index of the oldest unread sample
        self.size = 0
        self.captured = 0
        self.consumed = 0
        self.dropped = 0
        self.lock = threading.Lock()
        self.readable = threading.Condition(self.lock)

    def write(self, x: np.ndarray) -> None:
        with self.lock:
            n = len(x)
            self.captured += n
            if n >= self.capacity:  # more than fits: keep only the newest
                self.dropped += self.size + n - self.capacity
                self.buf[:] = x[-self.capacity :]
                self.start, self.size = 0, self.capacity
            else:
                overflow = self.size + n - self.capacity
                if overflow > 0:
                    self.start = (self.start + overflow) % self.capacity
                    self.size -= overflow
                    self.dropped += overflow
                end = (self.start + self.size) % self.capacity
                first = min(n, self.capacity - end)
                self.buf[end : end + first] = x[:first]
                self.buf[: n - first] = x[first:]
                self.size += n
            self.readable.notify()

    def read(self, n: int, timeout: float) -> np.ndarray | None:
        """Up to ``n`` samples, waiting up to ``timeout`` s for any; None when none came."""
        with self.lock:
            if self.size == 0 and not self.readable.wait_for(lambda: self.size > 0, timeout):
                return None
            k = min(n, self.size)
            idx = (self.start + np.arange(k)) % self.capacity
            out = self.buf[idx].copy()
            self.start = (self.start + k) % self.capacity
            self.size -= k
            self.consumed += k
            return out

    @property
    def buffered(self) -> int:
        return self.size


class StreamResampler:
    """Device rate -> 16 kHz, chunk by chunk, with libsoxr's streaming resampler."""

    def __init__(self, in_rate: float, out_rate: int):
        self.passthrough = int(in_rate) == out_rate
        if not self.passthrough:
            import soxr

            self.stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def __call__(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if self.passthrough:
            return x
        return self.stream.resample_chunk(x, last=last)


@dataclass
class MicStats:
    started: float = field(default_factory=time.monotonic)
    windows: int = 0
    anomalies: int = 0
    input_overflows: int = 0
    bad_windows: int = 0


class MicSession:
    """Owns the ring, the callback and the scoring thread for one input stream."""

    def __init__(self, scorer, machine: str, sink, base: dict, in_rate: float, window_s: float, hop_s: float,
                 heartbeat_s: float, duration_s: float | None, ring_seconds: float | None = None):
        self.scorer, self.machine, self.sink, self.base = scorer, machine, sink, base
        sr = scorer.sample_rate
        check_window(window_s, hop_s, scorer.min_samples / sr, heartbeat_s)
        self.window = int(round(window_s * sr))
        self.hop = int(round(hop_s * sr))
        self.resample = StreamResampler(in_rate, sr)
        self.ring = AudioRing(int((ring_seconds or max(2 * window_s, 30.0)) * sr))
        self.heartbeat_s = heartbeat_s
        self.limit = None if duration_s is None else int(round(duration_s * sr))
        self.stats = MicStats()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run_scorer, name="mtad-scorer", daemon=True)
        self.dropped_reported = 0
        self.failure: BaseException | None = None  # what ended the scoring thread, if not a clean stop
        # monotonic time of the last window handled (scored or reported bad); starts one window
        # ahead, the time the first window takes to fill at real time
        self.last_progress = time.monotonic() + window_s

    # -- producer (PyAudio's callback thread) ------------------------------------------------
    def callback(self, in_data, frame_count, time_info, status_flags):
        if status_flags & PA_INPUT_OVERFLOW:
            self.stats.input_overflows += 1
        x = np.frombuffer(in_data, dtype=np.int16).astype(np.float32) / 32768.0  # the stream is opened mono
        self.ring.write(self.resample(x))
        return (None, PA_CONTINUE)

    # -- consumer ------------------------------------------------------------------------------
    def _run_scorer(self) -> None:
        try:
            self._consume()
        except BaseException as exc:  # noqa: BLE001 (anything, even an injected SystemExit: reported by the main thread)
            self.failure = exc
        finally:
            self.stop.set()

    def check_scorer(self) -> None:
        """Raise :class:`ScorerDied` when the scoring thread has failed or ended on its own."""
        if self.failure is not None:
            exc = self.failure
            raise ScorerDied(f"the scoring thread died after {self.stats.windows} window(s): {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if self.thread.ident is not None and not self.thread.is_alive() and not self.stop.is_set():
            raise ScorerDied(f"the scoring thread ended unexpectedly after {self.stats.windows} window(s)")

    def progressing(self, within_s: float, now: float | None = None) -> bool:
        """True when a window was handled within the last ``within_s`` seconds (or the first is still filling)."""
        now = time.monotonic() if now is None else now
        return self.failure is None and self.thread.is_alive() and now - self.last_progress < within_s

    def _consume(self) -> None:
        """Fill the first window, then score every ``hop`` new samples (audio time, not wall time)."""
        window = np.zeros(self.window, np.float32)
        need, pending, total = self.window, [], 0
        next_beat = time.monotonic() + self.heartbeat_s
        while not self.stop.is_set():
            chunk = self.ring.read(need, timeout=0.2)
            if time.monotonic() >= next_beat:
                self.heartbeat()
                next_beat += self.heartbeat_s
            if chunk is None:
                continue
            pending.append(chunk)
            need -= len(chunk)
            total += len(chunk)
            if need == 0:  # one shift per hop, not per callback chunk
                new = np.concatenate(pending)
                window = np.concatenate([window[len(new) :], new])
                pending, need = [], self.hop
                self.score(window)
            if self.limit is not None and total >= self.limit:
                self.stop.set()

    def score(self, audio: np.ndarray) -> None:
        dropped = self.ring.dropped - self.dropped_reported
        self.dropped_reported = self.ring.dropped
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "type": "window", "machine": self.machine, **self.base,
                  "dropped_samples": dropped, "dropped_total": self.ring.dropped, "input_overflows": self.stats.input_overflows}
        try:
            r = self.scorer.score_audio(audio, self.machine, "microphone window")
        except MtadError as exc:  # e.g. a window of NaN or silence-only garbage: report, keep streaming
            self.stats.bad_windows += 1
            self.sink.write({**record, "error": str(exc)})
            self.last_progress = time.monotonic()
            return
        # anything else (a runner or statistics failure) propagates: the thread dies, loudly
        self.stats.windows += 1
        self.stats.anomalies += r.anomaly
        self.sink.write({**record, **r.to_json()})
        self.last_progress = time.monotonic()

    def heartbeat(self) -> None:
        self.sink.write({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "type": "heartbeat", "machine": self.machine, "pid": os.getpid(),
                         "uptime_s": round(time.monotonic() - self.stats.started, 1), "windows_scored": self.stats.windows,
                         "dropped_total": self.ring.dropped, "input_overflows": self.stats.input_overflows, **self.base})

    def accounting(self) -> dict:
        r = self.ring
        return {"captured": r.captured, "consumed": r.consumed, "dropped": r.dropped, "buffered": r.buffered,
                "unaccounted": r.captured - r.consumed - r.dropped - r.buffered}

    def summary(self) -> str:
        a = self.accounting()
        secs = a["captured"] / self.scorer.sample_rate
        return (f"mic: {secs:.1f} s of audio, {self.stats.windows} windows scored, {self.stats.anomalies} anomalous, "
                f"{self.stats.bad_windows} bad windows, {a['dropped']} samples dropped, {self.stats.input_overflows} input overflows")


def list_input_devices(pyaudio_module=None) -> list[dict]:
    pyaudio = pyaudio_module or import_pyaudio()
    with _quiet_alsa():
        pa = pyaudio.PyAudio()
    try:
        devices = []
        for i in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(i)
            if info.get("maxInputChannels", 0) > 0:
                devices.append({"index": i, "name": info["name"], "channels": int(info["maxInputChannels"]), "rate": float(info["defaultSampleRate"])})
        return devices
    finally:
        pa.terminate()


def _device_info(pa, device_index: int | None) -> dict:
    """Validate the input device before opening: an out-of-range index segfaults PortAudio."""
    count = pa.get_device_count()
    if device_index is None:
        if count == 0:
            raise MicError("no audio input devices found (see --list-devices)")
        try:
            return pa.get_default_input_device_info()
        except (OSError, IOError):
            raise MicError("no default audio input device; pass --input-device N (see --list-devices)") from None
    if not 0 <= device_index < count:
        raise MicError(f"no audio device {device_index}: this system has {count} device(s) (see --list-devices)")
    info = pa.get_device_info_by_index(device_index)
    if info.get("maxInputChannels", 0) < 1:
        raise MicError(f"audio device {device_index} ({info.get('name')}) has no input channels")
    return info


def _capture_rate(pa, pyaudio, info: dict, wanted: int) -> float:
    """Capture at the model's rate when the device can (no resampling, full band); else its own."""
    try:
        if pa.is_format_supported(wanted, input_device=int(info["index"]), input_channels=1, input_format=pyaudio.paInt16):
            return float(wanted)
    except (ValueError, AttributeError):
        pass
    return float(info["defaultSampleRate"])


class _quiet_alsa:
    """Silence ALSA's C-level chatter on stderr while PortAudio probes devices."""

    def __enter__(self):
        try:
            self.fd = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.dup2(self.fd, 2)
            os.close(self.fd)


def run_microphone(scorer, machine, sink, base, device_index=None, window_s=10.0, hop_s=1.0, heartbeat_s=60.0,
                   duration_s=None, log=print, pyaudio_module=None, frames_per_buffer=1024, notifier=None) -> str:
    """Stream from an input device until Ctrl-C (or ``duration_s`` of audio); returns a summary.

    Raises :class:`ScorerDied` within a poll interval (0.25 s) of the scoring thread failing.
    ``notifier`` (default: from the environment) gets READY=1 once the stream runs, and
    WATCHDOG=1 only while windows keep being handled within the watchdog interval.
    """
    from .systemd import SystemdNotifier

    scorer.check_machine(machine)
    check_window(window_s, hop_s, scorer.min_samples / scorer.sample_rate, heartbeat_s)
    notifier = notifier if notifier is not None else SystemdNotifier()
    if notifier.watchdog_s is not None and notifier.watchdog_s < window_s + 2 * hop_s:
        log(f"mic: warning: the watchdog interval ({notifier.watchdog_s:g} s) is shorter than the first window plus two hops "
            f"({window_s + 2 * hop_s:g} s): systemd may restart a healthy scorer (raise WatchdogSec)")
    pyaudio = pyaudio_module or import_pyaudio()
    with _quiet_alsa():
        pa = pyaudio.PyAudio()
    stream = None
    session = None
    try:
        info = _device_info(pa, device_index)
        rate = _capture_rate(pa, pyaudio, info, scorer.sample_rate)
        session = MicSession(scorer, machine, sink, base, rate, window_s, hop_s, heartbeat_s, duration_s)
        stream = pa.open(format=pyaudio.paInt16, channels=1, rate=int(rate), input=True,
                         input_device_index=int(info["index"]), frames_per_buffer=frames_per_buffer, stream_callback=session.callback)
        log(f"mic: {info.get('name')} at {rate:.0f} Hz -> {scorer.sample_rate} Hz, window {window_s:g} s, hop {hop_s:g} s")
        session.thread.start()
        stream.start_stream()
        notifier.ready(f"scoring {machine}")
        poll = 0.25 if notifier.watchdog_s is None else min(0.25, notifier.watchdog_s / 4)
        ended_at = None
        try:
            while not session.stop.wait(poll):
                session.check_scorer()
                if notifier.watchdog_due() and session.progressing(notifier.watchdog_s):
                    notifier.watchdog(f"{session.stats.windows} windows scored, {session.stats.anomalies} anomalous")
                if ended_at is None and not stream.is_active():  # the device ended (or a finite simulated source ran out)
                    session.ring.write(session.resample(np.zeros(0, np.float32), last=True))
                    ended_at = time.monotonic()
                # then let the scorer read what is buffered (still watched) before stopping it
                if ended_at is not None and (not session.ring.buffered or time.monotonic() - ended_at > DRAIN_S):
                    break
        except KeyboardInterrupt:
            log("mic: stopping (Ctrl-C)")
        session.stop.set()
        session.thread.join(timeout=5)
        session.check_scorer()
        notifier.stopping(session.summary())
        return session.summary()
    finally:
        if stream is not None:
            stream.stop_stream()
            stream.close()
        pa.terminate()


def record_microphone(out_dir: Path, seconds: float, device_index=None, pyaudio_module=None, sample_rate: int = 16000,
                      part_seconds: float = 60.0, frames_per_buffer: int = 1024, log=print) -> list[Path]:
    """Record ``seconds`` of the input device into ``out_dir/part-NNNN.wav`` (16 kHz mono 16-bit).

    Each part is a complete WAV file, written to a temporary name and renamed, so a crash or a
    pulled plug loses at most the part under way, and what was recorded can be used again.
    Returns the part files in order.
    """
    import queue

    import soundfile as sf

    pyaudio = pyaudio_module or import_pyaudio()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_alsa():
        pa = pyaudio.PyAudio()
    chunks: queue.Queue = queue.Queue()
    overflows = [0]

    def callback(in_data, frame_count, time_info, status_flags):
        if status_flags:
            overflows[0] += 1
        chunks.put(in_data)
        return None, pyaudio.paContinue

    stream = None
    parts: list[Path] = []
    try:
        info = _device_info(pa, device_index)
        rate = _capture_rate(pa, pyaudio, info, sample_rate)
        resample = StreamResampler(rate, sample_rate) if rate != sample_rate else None
        stream = pa.open(format=pyaudio.paInt16, channels=1, rate=int(rate), input=True, input_device_index=int(info["index"]),
                         frames_per_buffer=frames_per_buffer, stream_callback=callback)
        log(f"mic: recording {seconds:g} s from {info.get('name')} at {rate:.0f} Hz into {out_dir}/")
        stream.start_stream()
        want, per_part = int(seconds * sample_rate), int(part_seconds * sample_rate)
        buf: list[np.ndarray] = []
        have = in_part = 0

        def flush_part():
            nonlocal buf, in_part
            if in_part:
                path = out_dir / f"part-{len(parts) + 1:04d}.wav"
                with atomic_path(path) as tmp:
                    sf.write(tmp, np.concatenate(buf), sample_rate, subtype="PCM_16")
                parts.append(path)
            buf, in_part = [], 0

        while have < want:
            try:
                data = chunks.get(timeout=0.5)
            except queue.Empty:
                if not stream.is_active():  # the device ended (or a finite simulated source ran out)
                    break
                continue
            x = np.frombuffer(data, np.int16).astype(np.float32) / 32768.0
            if resample is not None:
                x = resample(x)
            x = x[: want - have]
            buf.append(x)
            have += len(x)
            in_part += len(x)
            if in_part >= per_part:
                flush_part()
        flush_part()
        if overflows[0]:
            log(f"mic: warning: {overflows[0]} input overflow(s) while recording; the recording has gaps")
        if have < want:
            log(f"mic: the input ended after {have / sample_rate:.0f} s of the {seconds:g} s asked for")
        return parts
    finally:
        if stream is not None:
            stream.stop_stream()
            stream.close()
        pa.terminate()
