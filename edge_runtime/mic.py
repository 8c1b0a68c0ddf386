"""Live microphone scoring: PyAudio callback -> streaming resampler -> bounded ring -> scorer thread.

Every sample is accounted for: ``captured == consumed + dropped + buffered`` at all times.
Samples are dropped only when the scorer falls so far behind that the ring is full (the
oldest audio goes, so decisions stay current), and device-level input overflows are
counted from PyAudio's status flags. Both are reported in every output line.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MtadError

PA_CONTINUE = 0  # pyaudio.paContinue
PA_INPUT_OVERFLOW = 2  # pyaudio.paInputOverflow


class MicError(MtadError):
    """The microphone cannot be used (no pyaudio, no such device, stream failure)."""


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
        self.window = int(round(window_s * sr))
        self.hop = int(round(hop_s * sr))
        if self.hop < 1 or self.window < scorer.min_samples:
            raise MicError(f"--window must be at least {scorer.min_samples / sr:.2f} s for this model and --hop > 0")
        self.resample = StreamResampler(in_rate, sr)
        self.ring = AudioRing(int((ring_seconds or max(2 * window_s, 30.0)) * sr))
        self.heartbeat_s = heartbeat_s
        self.limit = None if duration_s is None else int(round(duration_s * sr))
        self.stats = MicStats()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._consume, name="mtad-scorer", daemon=True)
        self.dropped_reported = 0

    # -- producer (PyAudio's callback thread) ------------------------------------------------
    def callback(self, in_data, frame_count, time_info, status_flags):
        if status_flags & PA_INPUT_OVERFLOW:
            self.stats.input_overflows += 1
        x = np.frombuffer(in_data, dtype=np.int16).astype(np.float32) / 32768.0  # the stream is opened mono
        self.ring.write(self.resample(x))
        return (None, PA_CONTINUE)

    # -- consumer ------------------------------------------------------------------------------
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
            return
        self.stats.windows += 1
        self.stats.anomalies += r.anomaly
        self.sink.write({**record, **r.to_json()})

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until the scorer has read everything buffered (end of a finite stream)."""
        deadline = time.monotonic() + timeout
        while self.ring.buffered and not self.stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)

    def heartbeat(self) -> None:
        self.sink.write({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "type": "heartbeat", "pid": os.getpid(),
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
            raise MicError("no default audio input device; pass --device N (see --list-devices)") from None
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
                   duration_s=None, log=print, pyaudio_module=None, frames_per_buffer=1024) -> str:
    """Stream from an input device until Ctrl-C (or ``duration_s`` of audio); returns a summary."""
    scorer.check_machine(machine)
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
        try:
            while not session.stop.wait(0.25):
                if not stream.is_active():  # the device ended (or a finite simulated source ran out)
                    session.ring.write(session.resample(np.zeros(0, np.float32), last=True))
                    session.drain()
                    break
        except KeyboardInterrupt:
            log("mic: stopping (Ctrl-C)")
        session.stop.set()
        session.thread.join(timeout=5)
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
                tmp = path.with_name(path.stem + ".tmp.wav")
                sf.write(tmp, np.concatenate(buf), sample_rate, subtype="PCM_16")
                os.replace(tmp, path)
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
