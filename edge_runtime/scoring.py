"""Anomaly scores (numpy only), used by evaluation and on the device alike.

Two scorings share one statistics file:

- ``paper`` (Choi & Choi): reconstruction score = MSE for valve and slider, else the
  Mahalanobis distance of the per-bin squared next-frame error to the *type's* statistics;
  classification score = cross-entropy of the true id; final score = Mahalanobis distance of
  (reconstruction, classification) to the type's statistics.
- ``fusion`` (mtad's default): per-id component scores, each standardised against that id's
  held-out normals (the std pooled over the type's ids), then averaged with the weights stored
  beside the components (:data:`COMPONENT_WEIGHTS` when fitted):

  - ``recon``: Mahalanobis distance of the log per-bin mean squared next-frame error to the
    id's centre (covariance shared within the type). Two-sided: an error that falls below
    normal (a missing click) counts as much as one that rises;
  - ``class``: cross-entropy of the true id (the paper's classification score);
  - ``embed``: cosine distance of the clip's ResNet embedding (mean of the length-normalised
    window embeddings) to the id's centre;
  - ``spectral``: Mahalanobis distance of the clip's log-mel statistics (band mean, std,
    frame-to-frame change and modulation power; :func:`spectral_vector`) to the id's centre
    (covariance shared within the type). No model involved;
  - ``envelope``: the same distance for the waveform's envelope statistics (each band's level
    modulation up to 62.5 Hz; :mod:`envelope`). No model involved;
  - ``acoustic``: one distance for both statistics together (``spectral`` then ``envelope``, one
    Gaussian), so their correlations count once and a statistic that a fault does not move
    dilutes the other less than in a mean of two scores. It weighs as the two statistics it
    holds in the mean (:data:`COMPONENT_WEIGHTS`). No model involved.

  The default components (:data:`DEFAULT_COMPONENTS`) are ``acoustic`` alone: measured on every
  data set, the network's scores did not add to it, so by default no network runs. ``recon`` +
  ``acoustic`` is the learned fusion.

Single-task runs (``recon``, ``classify``) score with their one model score under ``paper``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .envelope import modulation_power
from .errors import BundleError
from .features import HOP_LENGTH, SAMPLE_RATE, Normalization

MSE_TYPES = frozenset({"valve", "slider"})  # sound spread over the whole band (paper)
SCORINGS = ("fusion", "paper")
COMPONENTS = ("recon", "class", "embed", "spectral", "envelope", "acoustic")
MODEL_FREE = ("spectral", "envelope", "acoustic")  # components computed from the audio alone
NEEDS_AUDIO = ("envelope", "acoustic")  # components that need the waveform's envelope statistics
# The default is the best row of every measured table (README "Results"): the model-free statistic.
# The network's components stay selectable (``--components recon,acoustic`` is the learned fusion).
DEFAULT_COMPONENTS = ("acoustic",)
# Weight of a component in the fusion mean (1 unless listed): ``acoustic`` holds the two
# statistics that were two components before it, and keeps their weight.
COMPONENT_WEIGHTS = {"acoustic": 2.0}
LOG_EPS = 1e-6  # floor inside log() of squared errors and distances
FRAME_RATE = SAMPLE_RATE / HOP_LENGTH  # log-mel frames per second
# Adjacent mel bins pooled into bands before the per-id Gaussians: with ~10-40 normals per id,
# 128 (or 256) dimensions leave the covariance mostly shrinkage, and neighbouring mel bins
# are strongly correlated anyway. Measured in benchmarks/accuracy.py (README).
RECON_BAND = 8  # 128 mels -> 16 bands of error
SPECTRAL_BAND = 4  # 128 mels -> 32 bands of mean and of std
MIN_CALIBRATION_CLIPS = 4  # normals per id needed to standardise scores and set a threshold
# How far a threshold's false-alarm rate may stray from the target, as training, refits and
# enrollment report it (threshold_far_range): the central 80 % of ids, judged against +-0.05.
THRESHOLD_RANGE_COVERAGE = 0.8
THRESHOLD_RANGE_TOLERANCE = 0.05
# mtad-eval calls a machine's measured false-alarm rate unexplained outside this central range of
# what its threshold's clip count and its test normals allow (false_alarm_rate_range): with 18
# machines, 99 % flags one by chance in about 1 report of 6.
FALSE_ALARM_CHECK_COVERAGE = 0.99


def component_weight(component: str) -> float:
    return COMPONENT_WEIGHTS.get(component, 1.0)


def needs_audio(components) -> bool:
    """Whether fusion ``components`` need the clip's envelope statistics (read from its audio)."""
    return any(c in NEEDS_AUDIO for c in components)


def needs_model(scoring: str, components) -> bool:
    """Whether a score by ``scoring`` over fusion ``components`` reads any of the network's outputs."""
    return scoring != "fusion" or not all(c in MODEL_FREE for c in components)


def uses_mse(machine_type: str) -> bool:
    return machine_type in MSE_TYPES


def task_components(task: str) -> tuple[str, ...]:
    """The fusion components a model trained for ``task`` can provide."""
    return {"multitask": COMPONENTS, "recon": ("recon",) + MODEL_FREE, "classify": ("class", "embed") + MODEL_FREE}[task]


def mahalanobis(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> float:
    """``sqrt((x - mean)^T P (x - mean))`` for one vector; P is the inverse covariance."""
    d = np.asarray(x, np.float64) - mean
    return float(np.sqrt(max(d @ precision @ d, 0.0)))


def error_vector(residual: np.ndarray) -> np.ndarray:
    """Per-bin squared next-frame error averaged over time: ``(n_mels, T) -> (n_mels,)``."""
    r = residual.astype(np.float64)
    return (r * r).mean(axis=1)


def band_mean(v: np.ndarray, width: int) -> np.ndarray:
    """Mean of each run of ``width`` adjacent bins (the last band takes what is left)."""
    starts = np.arange(0, v.shape[0], width)
    counts = np.diff(np.r_[starts, v.shape[0]]).reshape((-1,) + (1,) * (v.ndim - 1))
    return np.add.reduceat(v, starts, axis=0) / counts


def log_error_vector(residual: np.ndarray) -> np.ndarray:
    """``log`` of the band-pooled :func:`error_vector`: closer to Gaussian, so a Mahalanobis
    distance fits it, and a fall in error is as far from the centre as a rise."""
    return np.log(band_mean(error_vector(residual), RECON_BAND) + LOG_EPS)


# Modulation ranges (Hz of a band's level over time) for the spectral statistics: slow swells,
# rotation-rate and impact-rate periodicities, up to the frame rate's Nyquist (~15.6 Hz).
MODULATION_EDGES_HZ = (0.5, 2.0, 4.0, 8.0, FRAME_RATE / 2)
MODULATION_BAND = 8  # mel bins pooled per band for the modulation spectrum: 128 -> 16 bands
# The band means are taken relative to their own mean (the clip's overall level), so that a change
# of microphone gain or distance, which moves every log-mel bin by the same number of dB, leaves the
# statistic as it was; its other parts (std, frame-to-frame change, modulation) and the envelope
# statistic do not see the level anyway. False keeps the absolute level (bundle schema < 7).
RELATIVE_LEVEL = True
# Each frame's log-mel is floored at its own loudest bin minus this many dB before the statistics
# see it (None: the front end's fixed floor only, bundle schema < 8). The fixed floor (-80 dB) does
# not move with the gain, so a band sitting on it (a 16-bit file's quantisation noise where an
# anti-alias filter emptied the top bands) stays put when the microphone is turned down and seems
# to rise relative to the rest; a floor relative to the frame moves with the gain, wherever the
# frame's loudest bin lies more than 80 dB above the fixed floor. 80 dB is librosa's
# ``power_to_db`` default ``top_db``, taken per frame rather than per clip so that block-by-block
# scoring gives the same vector.
SPECTRAL_TOP_DB: float | None = 80.0


def n_bands(n_bins: int, width: int) -> int:
    """How many bands :func:`band_mean` makes of ``n_bins`` bins."""
    return -(-n_bins // width)


def spectral_dim(n_mels: int) -> int:
    """Length of :func:`spectral_vector` for ``n_mels`` bins."""
    return 3 * n_bands(n_mels, SPECTRAL_BAND) + (len(MODULATION_EDGES_HZ) - 1) * n_bands(n_mels, MODULATION_BAND)


class SpectralStats:
    """Running sums behind :func:`spectral_vector`, fed a clip's log-mel in consecutive chunks
    (the block-by-block scorer of long files); the result equals one call on the whole clip."""

    def __init__(self, n_mels: int):
        self.n = 0
        self.sum, self.sq = np.zeros(n_mels), np.zeros(n_mels)
        bands = n_bands(n_mels, SPECTRAL_BAND)
        self.d_sum, self.d_sq, self.n_d = np.zeros(bands), np.zeros(bands), 0
        self.last_band: np.ndarray | None = None
        self.coarse: list[np.ndarray] = []  # (modulation bands, t) float32 per chunk: 64 bytes a frame, ~7 MB an hour

    def add(self, logmel: np.ndarray) -> None:
        x = logmel.astype(np.float64)
        if x.shape[1] == 0:
            return
        if SPECTRAL_TOP_DB is not None:
            np.maximum(x, x.max(axis=0) - SPECTRAL_TOP_DB, out=x)
        self.n += x.shape[1]
        self.sum += x.sum(axis=1)
        self.sq += (x * x).sum(axis=1)
        bands = band_mean(x, SPECTRAL_BAND)
        if self.last_band is not None:
            bands = np.concatenate([self.last_band, bands], axis=1)
        d = np.diff(bands, axis=1)
        self.d_sum += d.sum(axis=1)
        self.d_sq += (d * d).sum(axis=1)
        self.n_d += d.shape[1]
        self.last_band = bands[:, -1:]
        self.coarse.append(band_mean(x, MODULATION_BAND).astype(np.float32))

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-bin mean and population std of the log-mel fed so far (after the frame-relative floor)."""
        mean = self.sum / self.n
        return mean, np.sqrt(np.maximum(self.sq / self.n - mean * mean, 0.0))

    def vector(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError("spectral statistics need at least 2 frames")
        mean, std = self.mean_std()
        d_mean = self.d_sum / self.n_d
        delta = np.log(np.sqrt(np.maximum(self.d_sq / self.n_d - d_mean * d_mean, 0.0)) + LOG_EPS)
        modulation = modulation_power(self.coarse, FRAME_RATE, MODULATION_EDGES_HZ)  # none under ~16 frames
        levels = band_mean(mean, SPECTRAL_BAND)
        if RELATIVE_LEVEL:
            levels = levels - levels.mean()
        return np.concatenate([levels, band_mean(std, SPECTRAL_BAND), delta, np.log(modulation + LOG_EPS).ravel()])


def spectral_vector(logmel: np.ndarray) -> np.ndarray:
    """The clip's log-mel statistics over time, pooled into bands: ``(n_mels, T) -> (spectral_dim,)``.

    Each frame is first floored :data:`SPECTRAL_TOP_DB` below its loudest bin. Per band of
    ``SPECTRAL_BAND`` bins: mean (relative to the clip's level, :data:`RELATIVE_LEVEL`),
    std, and log std of the frame-to-frame change
    (impulsive content: knocks, clicks, stick-slip); per band of ``MODULATION_BAND`` bins: log
    power of the band's level in each ``MODULATION_EDGES_HZ`` range (periodic swells and impacts).
    """
    acc = SpectralStats(logmel.shape[0])
    acc.add(logmel)
    return acc.vector()


def unit(v: np.ndarray, axis: int = -1) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=axis, keepdims=True) + 1e-12)


def embedding_vector(embedding: np.ndarray) -> np.ndarray:
    """The clip's direction in embedding space: mean of its unit window embeddings ``(N, E) -> (E,)``."""
    return unit(unit(embedding.astype(np.float64)).mean(axis=0))


def conformal_rank(n: int, false_alarm_rate: float) -> int | None:
    """1-based rank ``k = ceil((n + 1)(1 - far))`` of the split-conformal threshold among ``n``
    normal scores, or None when ``n`` is too small for the target (``k > n``)."""
    k = int(np.ceil((n + 1) * (1 - false_alarm_rate) - 1e-9))
    return k if k <= n else None


def prediction_threshold(scores: np.ndarray, false_alarm_rate: float) -> float:
    """A threshold that one *new* normal score exceeds with probability at most ``false_alarm_rate``,
    from ``n`` out-of-sample normal scores.

    Split-conformal: the ``k``-th smallest score (:func:`conformal_rank`). If the new score and the
    ``n`` are exchangeable, the new one exceeds it with probability ``(n + 1 - k) / (n + 1) <= far``
    whatever their distribution; a normal-theory bound overshot the target on right-skewed scores.
    Where ``n`` is too small for that, the fallback is the normal-theory prediction bound
    ``mean + std * sqrt(1 + 1/n) * t_{n-1}(1 - far)``.
    """
    s = np.asarray(scores, np.float64)
    n = s.size
    if n < 2:
        raise ValueError("need at least 2 scores to set a threshold")
    k = conformal_rank(n, false_alarm_rate)
    if k is not None:
        return float(np.sort(s)[k - 1])
    from scipy import stats as sstats

    return float(s.mean() + s.std(ddof=1) * np.sqrt(1 + 1 / n) * sstats.t.ppf(1 - false_alarm_rate, n - 1))


def threshold_far_range(n: int, false_alarm_rate: float, coverage: float = THRESHOLD_RANGE_COVERAGE) -> tuple[float, float] | None:
    """The central ``coverage`` range of the false-alarm rate that a split-conformal threshold from
    ``n`` out-of-sample normal scores gives new normals (None where ``n`` has no conformal rank).

    The threshold is itself drawn from its ``n`` scores: the share of new normals above the k-th
    smallest of ``n`` exchangeable scores is Beta(n + 1 - k, k) distributed, whatever the scores'
    distribution. Its mean, (n + 1 - k) / (n + 1), is at most the target; its spread is why one
    id's rate differs from another's. At 0.1: 20 scores give 0.03-0.18 for 8 ids in 10, 40 give 0.04-0.16, 100 0.06-0.14.
    """
    from scipy.stats import beta  # here: only training, refits and enrollment ask

    k = conformal_rank(n, false_alarm_rate)
    if k is None:
        return None
    tail = (1 - coverage) / 2
    lo, hi = beta.ppf([tail, 1 - tail], n + 1 - k, k)
    return float(lo), float(hi)


def false_alarm_count(n_calibration: int, n_normal: int, false_alarm_rate: float):
    """The distribution (scipy, frozen) of the number of false alarms among ``n_normal`` new
    normals at a conformal threshold from ``n_calibration`` out-of-sample normals, if all are
    exchangeable: beta-binomial, the threshold's own spread (:func:`threshold_far_range`) with the
    test's binomial noise. None where there is no conformal rank or no normal."""
    from scipy.stats import betabinom

    k = conformal_rank(n_calibration, false_alarm_rate)
    if k is None or n_normal < 1:
        return None
    return betabinom(n_normal, n_calibration + 1 - k, k)


def false_alarm_rate_range(n_calibration: int, n_normal: int, false_alarm_rate: float,
                           coverage: float = FALSE_ALARM_CHECK_COVERAGE) -> tuple[float, float] | None:
    """The central ``coverage`` range of the false-alarm rate *measured* on ``n_normal`` new normals
    at a conformal threshold from ``n_calibration`` out-of-sample normals (:func:`false_alarm_count`).
    A measured rate outside it is not sampling noise: the new normals do not sound like the ones
    that set the threshold. None where there is no conformal rank."""
    count = false_alarm_count(n_calibration, n_normal, false_alarm_rate)
    if count is None:
        return None
    tail = (1 - coverage) / 2
    lo, hi = count.ppf([tail, 1 - tail])
    return float(lo) / n_normal, float(hi) / n_normal


def clips_for_far_range(false_alarm_rate: float, tolerance: float = THRESHOLD_RANGE_TOLERANCE,
                        coverage: float = THRESHOLD_RANGE_COVERAGE, limit: int = 5000) -> int | None:
    """The fewest out-of-sample normals an id from which on :func:`threshold_far_range` stays within
    ``tolerance`` of the target (69 at 0.1 +- 0.05 for 8 ids in 10: a few counts below it miss by a
    rounding of the conformal rank); None if not by ``limit``."""
    from scipy.stats import beta

    n = np.arange(1, limit + 1)
    k = np.ceil((n + 1) * (1 - false_alarm_rate) - 1e-9)
    ok = k <= n
    tail = (1 - coverage) / 2
    a, b = np.where(ok, n + 1 - k, 1), np.where(ok, k, 1)
    inside = ok & (beta.ppf(tail, a, b) >= false_alarm_rate - tolerance - 1e-12) & (beta.ppf(1 - tail, a, b) <= false_alarm_rate + tolerance + 1e-12)
    if not inside[-1]:
        return None
    failing = np.flatnonzero(~inside)
    return int(n[failing[-1] + 1]) if failing.size else 1


def describe_threshold_ranges(counts: dict[str, int], false_alarm_rate: float) -> str:
    """One line on how far the ids' thresholds may miss the target false-alarm rate, given how many
    out-of-sample normal scores set each (``machine -> n``), and how many would keep them close."""
    if not counts:
        return ""
    sizes = sorted({min(counts.values()), max(counts.values())})
    ranges = {n: threshold_far_range(n, false_alarm_rate) for n in sizes}
    shown = " to ".join(f"{r[0]:.2f}-{r[1]:.2f}" + (f" ({n} normals)" if len(sizes) > 1 else "") if r else
                        f"an unknown range ({n} normals: too few for a distribution-free threshold)" for n, r in ranges.items())
    close = all(r and abs(r[0] - false_alarm_rate) <= THRESHOLD_RANGE_TOLERANCE + 1e-9 and abs(r[1] - false_alarm_rate) <= THRESHOLD_RANGE_TOLERANCE + 1e-9
                for r in ranges.values())
    need = clips_for_far_range(false_alarm_rate)
    advice = "" if close or need is None else f"; about {need} an id keep it within +-{THRESHOLD_RANGE_TOLERANCE:g}"
    return (f"thresholds from {'-'.join(str(n) for n in sizes)} out-of-sample normals an id: for "
            f"{round(THRESHOLD_RANGE_COVERAGE * 10)} ids in 10 the false-alarm rate on new normals lies in {shown} "
            f"(target {false_alarm_rate:g}){advice}")


def calibration_of(raw_scores: np.ndarray) -> np.ndarray:
    """``(mean, std)`` of the log scores of an id's out-of-sample normals, for :meth:`ScoringStats.standardise`."""
    logs = np.log(np.asarray(raw_scores, np.float64) + LOG_EPS)
    return np.array([logs.mean(), max(logs.std(ddof=1), 1e-6)])


def pooled_calibration(raw_scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per id ``(mean, std)`` of the log scores of out-of-sample normals (``machine -> scores``),
    the std pooled over the ids of each type (deviations from each id's own mean).

    An id's std from its few held-out clips is noisy (4-10 clips: +-25-35 %) and sets its
    components' weights in the fusion; the ids of a type share their covariances, so their
    log Mahalanobis distances spread alike, and pooling gives the std a type's worth of clips.
    For the distance components only (``class`` and ``embed`` keep :func:`calibration_of`).
    """
    logs = {m: np.log(np.asarray(v, np.float64) + LOG_EPS) for m, v in raw_scores.items()}
    out = {}
    for t in sorted({m.split("/")[0] for m in logs}):
        ids = [m for m in logs if m.split("/")[0] == t]
        squares = sum(float(((logs[m] - logs[m].mean()) ** 2).sum()) for m in ids)
        dof = sum(logs[m].size for m in ids) - len(ids)
        std = max(np.sqrt(squares / dof), 1e-6) if dof > 0 else 1e-6
        out.update({m: np.array([logs[m].mean(), std]) for m in ids})
    return out


def embed_centre_and_loo(vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An id's embedding centre (unit mean direction) and each clip's cosine distance to the
    centre of the *other* clips (leave-one-out)."""
    loo = np.array([1.0 - vecs[i] @ unit(np.delete(vecs, i, axis=0).mean(axis=0)) for i in range(len(vecs))])
    return unit(vecs.mean(axis=0)), loo


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def classification_score(logits: np.ndarray, class_index: int) -> float:
    """Cross-entropy of the true class, averaged over the clip's windows ``(N, K)``."""
    return float(-log_softmax(logits)[:, class_index].mean())


# How a distance component's covariance, shared by the ids of a type, is estimated at training
# time (train/stats.py); the device only reads the stored precision.
COVARIANCES = ("factor", "ledoit-wolf")


@dataclass
class ClipEvidence:
    """What one clip gives the scorer: the model's outputs and the raw (unnormalised) log-mel."""

    residual: np.ndarray | None  # (n_mels, T') input minus predicted next frame
    logits: np.ndarray | None  # (N windows, K)
    logmel: np.ndarray  # (n_mels, T)
    embedding: np.ndarray | None = None  # (N windows, E) ResNet embeddings
    spectral: np.ndarray | None = None  # spectral_vector(logmel), when computed on the way (long files)
    envelope: np.ndarray | None = None  # envelope_vector(audio): needs the waveform, so the caller computes it


@dataclass
class TypeStats:
    """Per-type statistics: normalisation, and the ``paper`` scoring's Mahalanobis statistics."""

    norm: Normalization
    recon_mean: np.ndarray | None = None  # (n_mels,) for Mahalanobis types
    recon_precision: np.ndarray | None = None  # (n_mels, n_mels)
    final_mean: np.ndarray | None = None  # (2,)
    final_precision: np.ndarray | None = None  # (2, 2)


@dataclass
class ScoreParts:
    """A clip's final score and its component scores (raw, before standardisation)."""

    score: float
    components: dict[str, float]


@dataclass
class ScoringStats:
    """Everything the device needs besides the model: normalisation, statistics, thresholds."""

    task: str
    class_map: list[str]  # "type/id" per class index
    types: dict[str, TypeStats]
    thresholds: dict[str, float] = field(default_factory=dict)  # "type/id" -> decision threshold
    false_alarm_rate: float = 0.1
    scoring: str = "paper"
    components: tuple[str, ...] = ()  # fusion components, in order
    weights: tuple[float, ...] = ()  # each component's weight in the fusion mean (empty: COMPONENT_WEIGHTS)
    centres: dict[str, np.ndarray] = field(default_factory=dict)  # "component|type/id" -> mean vector
    precisions: dict[str, np.ndarray] = field(default_factory=dict)  # "component|type" -> shared precision
    calibration: dict[str, np.ndarray] = field(default_factory=dict)  # "component|type/id" -> (mean, std) of log score
    enrolled: list[str] = field(default_factory=list)  # ids added on the device (mtad-edge enroll); no class
    covariance: str = ""  # the rule asked for the shared precisions (COVARIANCES; small fits fall back to Ledoit-Wolf); provenance only

    @property
    def machines(self) -> list[str]:
        """Every machine this bundle can score: the trained classes, then enrolled ids."""
        return self.class_map + [m for m in self.enrolled if m not in self.class_map]

    def check_machine(self, machine: str) -> str:
        if machine not in self.machines:
            raise BundleError(f"machine {machine!r} is not in this bundle (has: {', '.join(self.machines)}); "
                              f"a new id of a trained type can be added with mtad-edge enroll")
        return machine

    def class_index(self, machine: str) -> int:
        try:
            return self.class_map.index(machine)
        except ValueError:
            raise BundleError(f"machine {machine!r} is not one the model was trained on ({', '.join(self.class_map)})") from None

    def type_stats(self, machine_type: str) -> TypeStats:
        if machine_type not in self.types:
            raise BundleError(f"machine type {machine_type!r} has no statistics (known: {', '.join(sorted(self.types))})")
        return self.types[machine_type]

    @property
    def fusion_weights(self) -> tuple[float, ...]:
        """Each component's weight in the fusion mean: the stored ones, else :data:`COMPONENT_WEIGHTS`."""
        return self.weights or tuple(component_weight(c) for c in self.components)

    @property
    def needs_model(self) -> bool:
        """Whether any score needs the network's outputs; a model-free bundle is scored from the audio alone."""
        return needs_model(self.scoring, self.components)

    @property
    def needs_envelope(self) -> bool:
        """Whether scoring needs :func:`envelope.envelope_vector` of the clip's audio."""
        return self.scoring == "fusion" and needs_audio(self.components)

    # -- the paper's scores ----------------------------------------------------------------
    def recon_score(self, machine_type: str, residual: np.ndarray) -> float:
        if uses_mse(machine_type):
            return float(np.mean(residual.astype(np.float64) ** 2))
        st = self.type_stats(machine_type)
        return mahalanobis(error_vector(residual), st.recon_mean, st.recon_precision)

    def score_pair(self, machine: str, residual: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
        """The paper's (reconstruction score, classification score) of one clip."""
        machine_type = machine.split("/")[0]
        rec = self.recon_score(machine_type, residual) if self.task != "classify" else float("nan")
        cls = classification_score(logits, self.class_index(machine)) if self.task != "recon" else float("nan")
        return rec, cls

    def final_score(self, machine: str, rec: float, cls: float) -> float:
        """The paper's final score from its two parts."""
        if self.task == "recon":
            return rec
        if self.task == "classify":
            return cls
        st = self.type_stats(machine.split("/")[0])
        return mahalanobis(np.array([rec, cls]), st.final_mean, st.final_precision)

    # -- fusion components -----------------------------------------------------------------
    def component_vector(self, component: str, ev: ClipEvidence) -> np.ndarray:
        if component == "embed":
            if ev.embedding is None:
                raise BundleError("the embed score needs a model with an embedding output (re-export the bundle)")
            return embedding_vector(ev.embedding)
        if component == "recon":
            return log_error_vector(ev.residual)
        if component in NEEDS_AUDIO and ev.envelope is None:
            raise BundleError(f"the {component} score needs the clip's envelope statistics (computed from its audio)")
        if component == "envelope":
            return ev.envelope
        spectral = ev.spectral if ev.spectral is not None else spectral_vector(ev.logmel)
        return np.concatenate([spectral, ev.envelope]) if component == "acoustic" else spectral

    def component_score(self, component: str, machine: str, ev: ClipEvidence) -> float:
        """Raw score of one fusion component (larger = more anomalous)."""
        if component == "class":
            return classification_score(ev.logits, self.class_index(machine))
        centre = self.centres.get(f"{component}|{machine}")
        if component == "embed":
            if centre is None:
                raise BundleError(f"no embed centre for {machine!r}")
            return float(1.0 - self.component_vector("embed", ev) @ centre)
        precision = self.precisions.get(f"{component}|{machine.split('/')[0]}")
        if centre is None or precision is None:
            raise BundleError(f"no {component} statistics for {machine!r}")
        return mahalanobis(self.component_vector(component, ev), centre, precision)

    def standardise(self, component: str, machine: str, raw: float) -> float:
        """``(log raw - mean) / std``: the mean of the id's held-out normals, the std pooled over
        the type's ids for distance components (enrolled ids: their own; :func:`pooled_calibration`)."""
        cal = self.calibration.get(f"{component}|{machine}")
        if cal is None:
            raise BundleError(f"no {component} calibration for {machine!r}")
        return float((np.log(raw + LOG_EPS) - cal[0]) / cal[1])

    def fuse(self, machine: str, raw: dict[str, float]) -> float:
        """Weighted mean of the standardised component scores (:data:`COMPONENT_WEIGHTS`)."""
        weights = self.fusion_weights
        return float(np.dot(weights, [self.standardise(c, machine, raw[c]) for c in self.components]) / sum(weights))

    def score_parts(self, machine: str, ev: ClipEvidence) -> ScoreParts:
        """Final score and component scores of one clip."""
        if self.scoring == "paper":
            rec, cls = self.score_pair(machine, ev.residual, ev.logits)
            return ScoreParts(self.final_score(machine, rec, cls), {"recon": rec, "class": cls})
        self.check_machine(machine)
        raw = {c: self.component_score(c, machine, ev) for c in self.components}
        return ScoreParts(self.fuse(machine, raw), raw)

    def score(self, machine: str, ev: ClipEvidence) -> float:
        return self.score_parts(machine, ev).score

    def threshold(self, machine: str) -> float:
        if machine not in self.thresholds:
            raise BundleError(f"no decision threshold for {machine!r}")
        return self.thresholds[machine]

    # -- storage (npz, no pickle) ---------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {
            "task": np.array(self.task),
            "scoring": np.array(self.scoring),
            "components": np.array(list(self.components), dtype=str),
            "component_weights": np.array(self.fusion_weights, np.float64),
            "class_map": np.array(self.class_map),
            "enrolled": np.array(list(self.enrolled), dtype=str),
            "false_alarm_rate": np.array(self.false_alarm_rate),
            "threshold_machines": np.array(sorted(self.thresholds)),
            "threshold_values": np.array([self.thresholds[m] for m in sorted(self.thresholds)], np.float64),
        }
        if self.covariance:
            arrays["covariance"] = np.array(self.covariance)
        for t, st in self.types.items():
            arrays[f"type/{t}/norm_mean"] = st.norm.mean
            arrays[f"type/{t}/norm_std"] = st.norm.std
            for name in ("recon_mean", "recon_precision", "final_mean", "final_precision"):
                value = getattr(st, name)
                if value is not None:
                    arrays[f"type/{t}/{name}"] = value
        for prefix, table in (("centre", self.centres), ("precision", self.precisions), ("calibration", self.calibration)):
            for key, value in table.items():
                arrays[f"{prefix}|{key}"] = np.asarray(value, np.float64)
        return arrays

    @classmethod
    def from_arrays(cls, arrays) -> "ScoringStats":
        types: dict[str, TypeStats] = {}
        for key in arrays:
            if key.startswith("type/") and key.endswith("/norm_mean"):
                t = key[len("type/") : -len("/norm_mean")]
                get = lambda n: np.asarray(arrays[f"type/{t}/{n}"]) if f"type/{t}/{n}" in arrays else None  # noqa: E731
                types[t] = TypeStats(
                    Normalization(get("norm_mean").astype(np.float32), get("norm_std").astype(np.float32)),
                    get("recon_mean"), get("recon_precision"), get("final_mean"), get("final_precision"),
                )
        tables: dict[str, dict[str, np.ndarray]] = {"centre": {}, "precision": {}, "calibration": {}}
        for key in arrays:
            prefix, _, rest = key.partition("|")
            if prefix in tables and rest:
                tables[prefix][rest] = np.asarray(arrays[key], np.float64)
        machines = [str(m) for m in np.asarray(arrays["threshold_machines"]).tolist()]
        values = np.asarray(arrays["threshold_values"]).tolist()
        scoring = str(arrays["scoring"]) if "scoring" in arrays else "paper"
        if scoring not in SCORINGS:
            raise BundleError(f"unknown scoring {scoring!r} (this runtime knows {', '.join(SCORINGS)})")
        components = tuple(str(c) for c in np.asarray(arrays.get("components", np.array([], str))).tolist())
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown:
            raise BundleError(f"unknown score component(s) {', '.join(unknown)} (this runtime knows {', '.join(COMPONENTS)})")
        return cls(
            task=str(arrays["task"]),
            class_map=[str(c) for c in np.asarray(arrays["class_map"]).tolist()],
            types=types,
            thresholds=dict(zip(machines, values)),
            false_alarm_rate=float(arrays["false_alarm_rate"]),
            scoring=scoring,
            components=components,
            weights=tuple(float(w) for w in np.asarray(arrays["component_weights"]).tolist()) if "component_weights" in arrays else (),
            centres=tables["centre"],
            precisions=tables["precision"],
            calibration=tables["calibration"],
            enrolled=[str(m) for m in np.asarray(arrays.get("enrolled", np.array([], str))).tolist()],
            covariance=str(arrays["covariance"]) if "covariance" in arrays else "",
        )

    def save(self, path: Path) -> None:
        """Write atomically as ``.npz`` (no pickled objects)."""
        with atomic_path(path) as tmp:
            np.savez(tmp, **self.to_arrays())

    @classmethod
    def load(cls, path: Path, n_mels: int | None = None) -> "ScoringStats":
        """Read and validate (keys, types, shapes against the class map and ``n_mels``):
        :class:`BundleError` naming the array if the file is malformed."""
        from .bundle_schema import check_stats_arrays, read_stats_arrays

        arrays = read_stats_arrays(path)
        check_stats_arrays(arrays, n_mels, where=path)
        return cls.from_arrays(arrays)
