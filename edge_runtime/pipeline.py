"""The device pipeline: audio -> log-mel -> per-type normalisation -> model -> scores -> decision."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .audio import load_audio, validate
from .bundle import Bundle
from .dataset import parse_machine_from_path
from .envelope import envelope_vector
from .errors import AudioError, BundleError
from .features import FeatureConfig, LogMelExtractor
from .scoring import ClipEvidence
from .windows import clip_outputs


# Files longer than this are read and scored block by block (same result; memory grows only by the band levels, ~29 MB an hour).
BLOCK_SECONDS = 30.0


def min_window_seconds(bundle: Bundle) -> float:
    """Shortest audio the bundle's model can score: one model window of frames."""
    cfg = FeatureConfig()
    return (bundle.window - 1) * cfg.hop_length / cfg.sample_rate


def model_outputs(bundle: Bundle, logmel: np.ndarray, machine_type: str, infer):
    """The model's ``(residual, logits, embedding)`` for a clip's raw log-mel, or three Nones
    for a bundle whose scores are model-free (``infer`` is then never called)."""
    if not bundle.stats.needs_model:
        return None, None, None
    x = bundle.stats.type_stats(machine_type).norm.apply(logmel)
    return clip_outputs(x, infer, bundle.window, bundle.warmup)


@dataclass
class ScoreResult:
    machine: str
    score: float
    threshold: float
    anomaly: bool
    components: dict  # raw component scores (name -> value)
    frontend_ms: float
    inference_ms: float
    scoring_ms: float

    @property
    def latency_ms(self) -> float:
        return self.frontend_ms + self.inference_ms + self.scoring_ms

    def to_json(self) -> dict:
        d = asdict(self)
        d["latency_ms"] = round(self.latency_ms, 3)
        for k in ("frontend_ms", "inference_ms", "scoring_ms"):
            d[k] = round(d[k], 3)
        d["components"] = {k: (float(v) if np.isfinite(v) else None) for k, v in self.components.items()}
        return d


class EdgeScorer:
    """Scores audio for one bundle with one runner (both built once and reused). The runner is
    never called for a bundle whose scores are model-free (``bundle.stats.needs_model`` false)."""

    def __init__(self, bundle: Bundle, runner):
        self.bundle = bundle
        self.runner = runner
        self.extract = LogMelExtractor()
        self.sample_rate = self.extract.cfg.sample_rate
        self.min_samples = (bundle.window - 1) * self.extract.cfg.hop_length  # = min_window_seconds(bundle) in samples

    def check_machine(self, machine: str) -> str:
        return self.bundle.stats.check_machine(machine)

    def score_audio(self, audio: np.ndarray, machine: str, name: str = "audio") -> ScoreResult:
        """Score mono float audio at 16 kHz for ``machine`` ('type/id')."""
        self.check_machine(machine)
        validate(audio, self.sample_rate, name, min_seconds=self.min_samples / self.sample_rate)
        t0 = time.perf_counter()
        logmel = self.extract(audio)
        envelope = envelope_vector(audio) if self.bundle.stats.needs_envelope else None
        t1 = time.perf_counter()
        timing = {"inference": 0.0}

        def timed_infer(batch):
            s = time.perf_counter()
            out = self.runner.infer(batch)
            timing["inference"] = time.perf_counter() - s
            return out

        residual, logits, embedding = model_outputs(self.bundle, logmel, machine.split("/")[0], timed_infer)
        t2 = time.perf_counter()
        parts = self.bundle.stats.score_parts(machine, ClipEvidence(residual, logits, logmel, embedding, envelope=envelope))
        threshold = self.bundle.stats.threshold(machine)
        t3 = time.perf_counter()
        inference = timing["inference"]
        return ScoreResult(machine, parts.score, threshold, bool(parts.score > threshold), parts.components,
                           (t1 - t0) * 1000, inference * 1000, ((t2 - t1 - inference) + (t3 - t2)) * 1000)

    def score_file(self, path: Path, machine: str | None = None, channel: int | str = 0,
                   block_seconds: float = BLOCK_SECONDS) -> ScoreResult:
        """Score a sound file as one clip; files longer than ``block_seconds`` are read in blocks
        of that length so memory stays small (same score as reading it whole)."""
        if machine is None:
            parsed = parse_machine_from_path(Path(path))
            if parsed is None:
                raise AudioError(f"{path}: cannot tell the machine from the file name; pass --machine TYPE/ID")
            machine = "/".join(parsed)
        if self._is_long(path, block_seconds):
            return self.score_file_blocks(path, machine, channel, block_seconds)
        audio = load_audio(path, self.sample_rate, channel, min_seconds=self.min_samples / self.sample_rate)
        return self.score_audio(audio, machine, str(path))

    def _is_long(self, path, block_seconds: float) -> bool:
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except Exception:  # unreadable or missing: load_audio says why
            return False
        return self.extract.cfg.pad_mode == "constant" and info.frames > block_seconds * info.samplerate

    def score_file_blocks(self, path: Path, machine: str, channel: int | str = 0, block_seconds: float = BLOCK_SECONDS) -> ScoreResult:
        """:meth:`score_file` reading ``block_seconds`` at a time, whatever the file's length."""
        from .blockscore import score_blocks

        self.check_machine(machine)
        t0 = time.perf_counter()
        evidence, times = score_blocks(self, path, machine, channel, block_seconds)
        t1 = time.perf_counter()
        parts = self.bundle.stats.score_parts(machine, evidence)
        threshold = self.bundle.stats.threshold(machine)
        t2 = time.perf_counter()
        other = (t1 - t0) - times["frontend"] - times["inference"]  # reading, resampling, window bookkeeping
        return ScoreResult(machine, parts.score, threshold, bool(parts.score > threshold), parts.components,
                           (times["frontend"] + other) * 1000, times["inference"] * 1000, (t2 - t1) * 1000)


def choose_runner(bundle: Bundle, backend: str = "auto", precision: str = "fp32", threads: int = 0, log=None):
    """Pick a runner: auto prefers a TensorRT engine, then ORT with TensorRT/CUDA/CPU providers.
    A bundle whose scores need no model gets :class:`~.runners.NoModelRunner` whatever is asked."""
    from .runners import NoModelRunner, available_ort_providers

    if not bundle.stats.needs_model:
        runner = NoModelRunner()
        if log:
            log(f"backend: {runner.describe()}; --backend/--precision do not apply")
        return runner

    if backend in ("auto", "tensorrt"):
        engine_path, key = bundle.engine(precision)
        reason = None
        if engine_path is None:
            reason = f"the bundle has no {precision} TensorRT engine (build one with mtad-edge build-engine)"
        else:
            try:
                from .tensorrt_runner import TensorRTRunner

                runner = TensorRTRunner(engine_path, precision, key)
                if log:
                    log(f"backend: {runner.describe()}")
                return runner
            except Exception as exc:  # missing TensorRT / GPU / engine for another device
                reason = str(exc)
        if backend == "tensorrt":
            raise BundleError(f"--backend tensorrt: {reason}")
        if log:
            log(f"backend: TensorRT not used ({reason})")
    runner = bundle.onnx_runner(precision, "auto", threads)
    if log:
        log(f"backend: {runner.describe()} (available providers: {', '.join(available_ort_providers())})")
    return runner
