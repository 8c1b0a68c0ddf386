"""Reading WAV files into validated mono float32 audio at the feature sample rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import AudioError

# A clip must give at least a few STFT frames; shorter input is refused, not padded.
MIN_SECONDS = 0.5


def to_mono(audio: np.ndarray, channel: int | str = 0, name: str = "audio") -> np.ndarray:
    """Pick one channel (an int) or average them (``"mean"``) from ``(samples, channels)``."""
    if audio.ndim == 1:
        return audio
    if channel == "mean":
        return audio.mean(axis=1)
    channel = int(channel)
    if not 0 <= channel < audio.shape[1]:
        raise AudioError(f"{name}: has {audio.shape[1]} channels, channel {channel} requested")
    return audio[:, channel]


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample with libsoxr (high quality); a no-op when the rates match."""
    if orig_sr == target_sr:
        return audio
    import soxr

    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def validate(audio: np.ndarray, sample_rate: int, name: str, min_seconds: float = MIN_SECONDS) -> np.ndarray:
    """Refuse empty, too-short and non-finite audio with a message naming the source."""
    if audio.size == 0:
        raise AudioError(f"{name}: no samples (empty audio)")
    if audio.shape[0] < int(min_seconds * sample_rate):
        raise AudioError(
            f"{name}: too short ({audio.shape[0] / sample_rate:.3f} s < {min_seconds} s minimum)"
        )
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise AudioError(f"{name}: {bad} non-finite samples (NaN/inf)")
    if not np.any(audio):
        raise AudioError(f"{name}: digital silence (all samples zero): muted or disconnected microphone?")
    return audio


def load_audio(
    path: str | Path,
    sample_rate: int = 16000,
    channel: int | str = 0,
    min_seconds: float = MIN_SECONDS,
) -> np.ndarray:
    """Read a sound file as mono float32 at ``sample_rate``.

    Multichannel files give ``channel`` (default 0, as the MIMII/DCASE mono files use
    microphone 0) or ``"mean"``; other rates are resampled with libsoxr.
    Raises :class:`AudioError` naming the file for anything unusable.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AudioError(f"{path}: unreadable audio ({first_line})") from exc
    audio = to_mono(np.asarray(audio), channel, str(path))
    if audio.size == 0:
        raise AudioError(f"{path}: no samples (empty audio)")
    if not np.isfinite(audio).all():
        validate(audio, sr, str(path), 0.0)
    audio = resample(np.ascontiguousarray(audio, dtype=np.float32), sr, sample_rate)
    return validate(audio, sample_rate, str(path), min_seconds)
