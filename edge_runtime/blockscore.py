"""Scoring a long file block by block, with the same result as scoring it whole.

A file is read ``block_seconds`` at a time (``soundfile.blocks``), resampled with libsoxr's
streaming resampler (bit-identical to the one-shot call), turned into STFT frames that continue
across block edges, and cut into the same model windows as :func:`windows.window_starts` would.
What the scores need from a whole clip reduces to per-bin sums (squared next-frame error,
log-mel and its square), the windows' logits (a few KB per hour), the sum of their unit
embeddings and the bands' levels behind the modulation statistics (about 29 MB per hour), so
memory grows slowly however long the file is. Only the last regular window's
residual is held back: the clip's final window, placed flush with the end, overwrites part of
it exactly as :func:`windows.prediction_residual` does.
"""

from __future__ import annotations

import time

import numpy as np

from .audio import to_mono
from .envelope import EnvelopeStats
from .errors import AudioError
from .scoring import ClipEvidence, SpectralStats

BATCH = 32  # model windows per runner call (TensorRT engines are built for up to 32 by default)


class _ClipSums:
    """Streaming front end + model pass over one clip; :meth:`finish` gives its evidence."""

    def __init__(self, scorer, machine: str, name: str):
        self.scorer, self.name = scorer, name
        ext = scorer.extract
        self.ext = ext
        self.norm = scorer.bundle.stats.type_stats(machine.split("/")[0]).norm
        self.window, self.warmup = scorer.bundle.window, scorer.bundle.warmup
        self.step = self.window - self.warmup - 1
        self.n_fft, self.hop = ext.cfg.n_fft, ext.cfg.hop_length
        self.padded = np.zeros(self.n_fft // 2, np.float32)  # centred STFT: zeros before the first sample
        self.padded_offset = 0  # padded-signal index of self.padded[0]
        self.n_samples = 0
        self.nonzero = False
        n_mels = ext.cfg.n_mels
        self.x = np.zeros((n_mels, 0), np.float32)  # normalised frames from frame self.x_offset on
        self.x_offset = 0
        self.next_start = 0  # next regular window start
        self.spectral = SpectralStats(n_mels)  # also holds the per-bin log-mel sums
        self.envelope = EnvelopeStats() if scorer.bundle.stats.needs_envelope else None
        self.uses_model = scorer.bundle.stats.needs_model
        self.err_sq = np.zeros(n_mels)  # per-bin sum of squared next-frame error
        self.pending: tuple[int, np.ndarray] | None = None  # (start, residual) of the last regular window
        self.logits: list[np.ndarray] = []
        self.emb_sum = None
        self.times = {"frontend": 0.0, "inference": 0.0}

    def add(self, audio: np.ndarray) -> None:
        """Append mono float32 audio at the model's rate."""
        if len(audio) == 0:
            return
        self.n_samples += len(audio)
        self.nonzero = self.nonzero or bool(np.any(audio))
        if self.envelope is not None:
            t0 = time.perf_counter()
            self.envelope.add(audio)
            self.times["frontend"] += time.perf_counter() - t0
        self.padded = np.concatenate([self.padded, audio])
        self._frames(final=False)

    def _frames(self, final: bool) -> None:
        t0 = time.perf_counter()
        first = -(-self.padded_offset // self.hop)  # first frame not yet made
        n = (self.padded_offset + len(self.padded) - self.n_fft) // self.hop - first + 1  # frames that fit
        if final:
            n = min(n, 1 + self.n_samples // self.hop - first)  # a centred STFT has 1 + N // hop frames
        if n <= 0:
            return
        a = first * self.hop - self.padded_offset
        mel = self.ext.to_db(self.ext.mel_power_padded(self.padded[a : a + (n - 1) * self.hop + self.n_fft]))
        keep = (first + n) * self.hop - self.padded_offset  # the next frame starts here
        self.padded_offset += keep
        self.padded = self.padded[keep:]
        self.spectral.add(mel)
        if not self.uses_model:  # only the frame count is kept
            self.x_offset += mel.shape[1]
            self.times["frontend"] += time.perf_counter() - t0
            return
        self.x = np.concatenate([self.x, self.norm.apply(mel)], axis=1)
        self.times["frontend"] += time.perf_counter() - t0
        self._regular_windows()

    @property
    def n_frames(self) -> int:
        return self.x_offset + self.x.shape[1]

    def _infer(self, starts: list[int]):
        batch = np.stack([self.x[:, s - self.x_offset : s - self.x_offset + self.window] for s in starts]).astype(np.float32, copy=False)
        t = time.perf_counter()
        out = self.scorer.runner.infer(batch)
        self.times["inference"] += time.perf_counter() - t
        pred = np.asarray(out[0])
        self.logits.append(np.asarray(out[1]))
        if len(out) > 2:
            e = np.asarray(out[2], np.float64)
            e = (e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)).sum(axis=0)  # scoring.unit, summed
            self.emb_sum = e if self.emb_sum is None else self.emb_sum + e
        return pred

    def _residual(self, start: int, pred_w: np.ndarray) -> np.ndarray:
        a = start - self.x_offset
        return self.x[:, a + self.warmup + 1 : a + self.window] - pred_w[:, self.warmup : self.window - 1]

    def _regular_windows(self) -> None:
        while True:
            starts = []
            s = self.next_start
            while len(starts) < BATCH and s + self.window <= self.n_frames:
                starts.append(s)
                s += self.step
            if not starts:
                return
            pred = self._infer(starts)
            for w, start in enumerate(starts):
                r = self._residual(start, pred[w])
                if self.pending is not None:
                    self._add_residual(self.pending[1])
                self.pending = (start, r)
            self.next_start = s
            # keep the frames of the next window, and always the last `window` (the clip's final window)
            drop = max(0, min(self.next_start, self.n_frames - self.window) - self.x_offset)
            self.x = self.x[:, drop:]
            self.x_offset += drop

    def _add_residual(self, r: np.ndarray) -> None:
        r64 = r.astype(np.float64)
        self.err_sq += (r64 * r64).sum(axis=1)

    def finish(self) -> tuple[ClipEvidence, dict]:
        self.padded = np.concatenate([self.padded, np.zeros(self.n_fft // 2, np.float32)])
        self._frames(final=True)
        T = self.n_frames  # noqa: N806
        if T < self.window:
            raise AudioError(f"{self.name}: clip has {T} frames, the model window needs {self.window}")
        # The smallest arrays that scoring.py's reductions turn into the same numbers:
        # log-mel mean and population std here; below, per-bin mean squared error (error_vector,
        # recon MSE) and mean unit embedding (embedding_vector); the spectral vector comes from
        # its own running sums (SpectralStats).
        mean, std = self.spectral.mean_std()
        logmel = np.stack([mean - std, mean + std], axis=1)
        envelope = None if self.envelope is None else self.envelope.vector()
        if not self.uses_model:
            return ClipEvidence(None, None, logmel, None, self.spectral.vector(), envelope), self.times
        last = T - self.window
        if self.pending is None or self.pending[0] != last:  # the final window, flush with the end
            pred = self._infer([last])
            r_last = self._residual(last, pred[0])
            if self.pending is not None:
                start, r = self.pending
                self._add_residual(r[:, : last - start])  # the rest is overwritten by the final window
            self._add_residual(r_last)
        else:
            self._add_residual(self.pending[1])
        self.pending = None
        n_scored = T - self.warmup - 1
        residual = np.sqrt(self.err_sq / n_scored)[:, None]
        embedding = None if self.emb_sum is None else (self.emb_sum / sum(len(x) for x in self.logits))[None, :]
        return ClipEvidence(residual, np.concatenate(self.logits), logmel, embedding, self.spectral.vector(), envelope), self.times


def score_blocks(scorer, path, machine: str, channel, block_seconds: float):
    """Score the sound file ``path`` reading ``block_seconds`` at a time; see :meth:`EdgeScorer.score_file`."""
    import soundfile as sf

    name = str(path)
    sums = _ClipSums(scorer, machine, name)
    resampler = None
    try:
        with sf.SoundFile(name) as f:
            sr = f.samplerate
            if sr != scorer.sample_rate:
                import soxr

                resampler = soxr.ResampleStream(sr, scorer.sample_rate, 1, dtype="float32", quality="HQ")
            for block in f.blocks(blocksize=max(1, int(block_seconds * sr)), dtype="float32", always_2d=True):
                x = to_mono(block if block.shape[1] > 1 else block[:, 0], channel, name)
                if not np.isfinite(x).all():
                    raise AudioError(f"{name}: {int((~np.isfinite(x)).sum())} non-finite samples (NaN/inf) in the block at "
                                     f"{sums.n_samples / scorer.sample_rate:.0f} s")
                x = np.ascontiguousarray(x, np.float32)
                sums.add(resampler.resample_chunk(x) if resampler else x)
            if resampler is not None:
                sums.add(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    except AudioError:
        raise
    except Exception as exc:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AudioError(f"{path}: unreadable audio ({first_line})") from exc
    if sums.n_samples == 0:
        raise AudioError(f"{name}: no samples (empty audio)")
    min_s = scorer.min_samples / scorer.sample_rate
    if sums.n_samples < int(min_s * scorer.sample_rate):
        raise AudioError(f"{name}: too short ({sums.n_samples / scorer.sample_rate:.3f} s < {min_s} s minimum)")
    if not sums.nonzero:
        raise AudioError(f"{name}: digital silence (all samples zero): muted or disconnected microphone?")
    return sums.finish()
