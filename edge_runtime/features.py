"""Log-mel front end (numpy only), shared by training, export and the edge device.

Settings follow the paper: 16 kHz, n_fft 2048, hop 512, 128 Slaney mel bands.
The STFT is centred with zero padding (librosa >= 0.11's default ``pad_mode="constant"``),
a periodic Hann window and power 2; the log is ``10*log10(max(mel, 1e-8))``. The floor sits at
the 16-bit quantisation-noise level of a mel band, so float or resampled input (which has no
quantisation noise in bands a resampler cut away) gives the same features as a 16-bit recording.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft

SAMPLE_RATE = 16000
N_FFT = 2048
HOP_LENGTH = 512
N_MELS = 128


@dataclass(frozen=True)
class FeatureConfig:
    """Every setting that changes the features. Saved with each checkpoint and bundle."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS
    fmin: float = 0.0
    fmax: float = SAMPLE_RATE / 2
    power: float = 2.0
    pad_mode: str = "constant"
    log_floor: float = 1e-8

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureConfig":
        return cls(**d)

    def n_frames(self, n_samples: int) -> int:
        """Number of STFT frames for a signal of ``n_samples`` (centred STFT)."""
        return 1 + n_samples // self.hop_length


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    # Slaney's auditory-toolbox scale: linear below 1 kHz, logarithmic above.
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = freq / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_region = freq >= min_log_hz
    mels = np.where(log_region, min_log_mel + np.log(np.maximum(freq, 1e-12) / min_log_hz) / logstep, mels)
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_region = mels >= min_log_mel
    return np.where(log_region, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


def mel_filterbank(cfg: FeatureConfig) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank, shape ``(n_mels, n_fft // 2 + 1)``, float32."""
    fft_freqs = np.fft.rfftfreq(cfg.n_fft, d=1.0 / cfg.sample_rate)
    mel_points = np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2)
    mel_f = _mel_to_hz(mel_points)
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:] - mel_f[:-2])
    return (weights * enorm[:, None]).astype(np.float32)


def hann_window(n_fft: int) -> np.ndarray:
    """Periodic Hann window (``scipy.signal.get_window('hann', n, fftbins=True)``), float32."""
    n = np.arange(n_fft, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)).astype(np.float32)


class LogMelExtractor:
    """Turns mono float audio at ``cfg.sample_rate`` into log-mel ``(n_mels, frames)`` float32.

    The window and filterbank are built once; call the instance for each clip.
    """

    def __init__(self, cfg: FeatureConfig | None = None):
        self.cfg = cfg or FeatureConfig()
        self.window = hann_window(self.cfg.n_fft)
        self.filterbank = mel_filterbank(self.cfg)  # (n_mels, n_bins)

    def mel_power(self, audio: np.ndarray) -> np.ndarray:
        """Mel power spectrogram ``(n_mels, frames)`` (before the log)."""
        cfg = self.cfg
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"expected mono audio of shape (samples,), got {audio.shape}")
        pad = cfg.n_fft // 2
        if cfg.pad_mode == "constant":
            padded = np.pad(audio, pad)
        else:
            padded = np.pad(audio, pad, mode=cfg.pad_mode)
        return self.mel_power_padded(padded)

    def mel_power_padded(self, padded: np.ndarray) -> np.ndarray:
        """Mel power of every frame that starts at a multiple of the hop in already padded audio
        (streaming scorers feed consecutive pieces of one padded signal)."""
        cfg = self.cfg
        frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[:: cfg.hop_length]  # (T, n_fft), a view
        # scipy's pocketfft is ~4x faster than numpy's on this batch of rows; single worker on purpose
        # (edge devices share their cores with audio capture).
        spec = scipy.fft.rfft(frames * self.window, axis=-1, overwrite_x=True)  # (T, n_fft//2+1) complex64
        power = spec.real * spec.real
        power += spec.imag * spec.imag
        if cfg.power != 2.0:
            power = power ** (cfg.power / 2.0)
        # BLAS reads power transposed in place; the product is a contiguous (n_mels, T) array.
        return self.filterbank @ power.T

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return self.to_db(self.mel_power(audio))

    def to_db(self, mel: np.ndarray) -> np.ndarray:
        """Mel power -> log-mel in dB, in place."""
        np.maximum(mel, self.cfg.log_floor, out=mel)
        np.log10(mel, out=mel)
        mel *= 10.0
        return mel


def log_mel(audio: np.ndarray, cfg: FeatureConfig | None = None) -> np.ndarray:
    """One-off convenience wrapper; build a :class:`LogMelExtractor` for repeated use."""
    return LogMelExtractor(cfg)(audio)


@dataclass(frozen=True)
class Normalization:
    """Per-bin mean and std of log-mel over one machine type's training clips."""

    mean: np.ndarray  # (n_mels,)
    std: np.ndarray  # (n_mels,)

    def apply(self, logmel: np.ndarray) -> np.ndarray:
        """Normalise ``(..., n_mels, T)`` log-mel; returns float32."""
        return ((logmel - self.mean[:, None]) / self.std[:, None]).astype(np.float32, copy=False)


def fit_normalization(logmels: list[np.ndarray], min_std: float = 1e-3) -> Normalization:
    """Per-bin mean/std over all frames of the given ``(n_mels, T)`` arrays (float64 accumulation)."""
    if not logmels:
        raise ValueError("cannot fit normalisation on zero clips")
    n_mels = logmels[0].shape[0]
    total = np.zeros(n_mels)
    total_sq = np.zeros(n_mels)
    count = 0
    for x in logmels:
        x64 = x.astype(np.float64)
        total += x64.sum(axis=1)
        total_sq += (x64 * x64).sum(axis=1)
        count += x.shape[1]
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    std = np.maximum(np.sqrt(var), min_std)
    return Normalization(mean.astype(np.float32), std.astype(np.float32))
