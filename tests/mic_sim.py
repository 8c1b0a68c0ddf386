"""A stand-in for the ``pyaudio`` module: a simulated input device for tests and soak runs
(a test double: it lives with the tests, never in the installed package).

It plays a numpy signal (or a generator of chunks) through the same callback API PyAudio
uses, at a chosen speed relative to real time, with optional input-overflow flags.
"""

from __future__ import annotations

import threading
import time

import numpy as np

paInt16 = 8
paContinue = 0
paInputOverflow = 2


class SimulatedPyAudio:
    """``SimulatedPyAudio(source, rate)`` then pass it where the ``pyaudio`` module is expected."""

    paInt16 = paInt16
    paContinue = paContinue

    def __init__(self, source, rate: float = 16000, speed: float | None = None, overflow_every: int = 0, name: str = "simulated mic"):
        self.source = source  # float array in [-1, 1], or callable(n_frames) -> float array (empty = end)
        self.rate = rate
        self.speed = speed
        self.overflow_every = overflow_every
        self.name = name
        self.streams: list[SimulatedStream] = []

    # the module's entry point is the PyAudio class; calling the instance returns itself
    def PyAudio(self):  # noqa: N802 (mirrors pyaudio's API)
        return self

    def get_device_count(self) -> int:
        return 1

    def get_device_info_by_index(self, i: int) -> dict:
        if i != 0:
            raise IOError("Invalid device index")
        return {"index": 0, "name": self.name, "maxInputChannels": 1, "defaultSampleRate": float(self.rate)}

    def get_default_input_device_info(self) -> dict:
        return self.get_device_info_by_index(0)

    def is_format_supported(self, rate, input_device=None, input_channels=None, input_format=None) -> bool:
        if rate != self.rate:
            raise ValueError("Invalid sample rate")  # what PyAudio raises for unsupported formats
        return True

    def open(self, format, channels, rate, input, input_device_index, frames_per_buffer, stream_callback):  # noqa: A002
        s = SimulatedStream(self, frames_per_buffer, stream_callback)
        self.streams.append(s)
        return s

    def terminate(self) -> None:
        pass


class SimulatedStream:
    def __init__(self, pa: SimulatedPyAudio, frames: int, callback):
        self.pa, self.frames, self.callback = pa, frames, callback
        self.active = False
        self.halt = threading.Event()
        self.chunks = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _next(self, pos: int) -> np.ndarray:
        src = self.pa.source
        if callable(src):
            return src(self.frames)
        return src[pos : pos + self.frames]

    def _run(self) -> None:
        pos = 0
        t0 = time.monotonic()
        while not self.halt.is_set():
            chunk = self._next(pos)
            if len(chunk) == 0:
                break
            pos += len(chunk)
            self.chunks += 1
            flags = paInputOverflow if self.pa.overflow_every and self.chunks % self.pa.overflow_every == 0 else 0
            data = (np.clip(chunk, -1, 1) * 32767).astype(np.int16).tobytes()
            self.callback(data, len(chunk), {}, flags)
            if self.pa.speed:
                ahead = pos / self.pa.rate / self.pa.speed - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        self.active = False

    def start_stream(self) -> None:
        self.active = True
        self.thread.start()

    def is_active(self) -> bool:
        return self.active

    def stop_stream(self) -> None:
        self.halt.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def close(self) -> None:
        pass


class ListSink:
    """A JSON-line sink that keeps the records, for asserting on them."""

    def __init__(self):
        self.lines = []

    def write(self, record):
        self.lines.append(record)

    def windows(self):
        return [r for r in self.lines if r.get("type") == "window"]
