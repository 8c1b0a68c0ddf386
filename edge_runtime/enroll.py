"""On-device enrollment: bring a machine the model was not trained on under watch from a few
minutes of its normal sound, torch-free and without retraining.

A new id of a known type gets what the fusion scoring keeps per id: a centre for each distance
component (``recon``, ``spectral``, ``envelope``, ``acoustic``, ``embed``), its calibration and
a threshold. The covariances stay the type's, fitted at training time. Each enrollment clip's
score is computed leave-one-out (statistics fitted without that clip), so calibration and
threshold rest on scores of normals that the statistics never saw. The ``class`` score needs a
trained class and is never used for an enrolled id.

Every enrollment writes a new revision of the bundle; the previous ``manifest.yaml`` and
``stats.npz`` are kept under ``revisions/NNNN/`` so that ``mtad-edge rollback`` restores them.
"""

from __future__ import annotations

import contextlib

import datetime as dt
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from .atomic import replace_dir, sweep_stale
from .audio import load_audio
from .bundle import MANIFEST, STATS, Bundle, load_bundle
from .envelope import envelope_vector
from .errors import AudioError, BundleError, ConfigError
from .features import LogMelExtractor
from .hashing import sha256_file
from .pipeline import EdgeScorer, model_outputs
from .runners import NoModelRunner
from .scoring import (
    MIN_CALIBRATION_CLIPS,
    ClipEvidence,
    ScoringStats,
    calibration_of,
    embed_centre_and_loo,
    mahalanobis,
    prediction_threshold,
)

SEGMENT_SECONDS = 10.0  # enrollment audio is cut into clips of this length
CLIPPED_LEVEL = 0.999  # |sample| at or above this counts as clipped (full scale is 1.0)
MAX_CLIPPED_FRACTION = 0.001
FAR_FROM_TYPE_Z = 3.0  # mean |z| of the clip's log-mel level against the type's normalisation
REVISIONS = "revisions"
ENROLLED_REFERENCE = "reference/enrolled.npz"  # normal clips of enrolled ids, for on-device parity
REFERENCE_CLIPS = 2  # per enrolled id
REFERENCE_SECONDS = 4.0


@dataclass
class EnrollResult:
    machine: str
    n_clips: int
    seconds: float
    threshold: float
    revision: int
    components: tuple[str, ...]
    warnings: list[str] = field(default_factory=list)
    false_alarm_rate: float = 0.1  # the bundle's target, which the threshold aims at


# Fewest enrollment clips accepted (160 s of 10 s segments). A centre estimated from n clips
# adds about dim / n to a normal clip's squared distance (about dim), a relative 1 / n whatever
# the dimension: 16 keeps that near 6 %, and is well above MIN_CALIBRATION_CLIPS.
MIN_ENROLL_CLIPS = max(16, MIN_CALIBRATION_CLIPS)


def segments(audio: np.ndarray, sample_rate: int, seconds: float, min_samples: int) -> list[np.ndarray]:
    """Cut audio into whole clips of ``seconds`` (a shorter remainder is dropped, so every clip
    has the same length); a file shorter than one clip is one clip if the model can score it."""
    n = int(round(seconds * sample_rate))
    if len(audio) < n:
        return [audio] if len(audio) >= min_samples else []
    return [audio[i : i + n] for i in range(0, len(audio) - n + 1, n)]


def check_enrollment_audio(audio: np.ndarray, name: str) -> None:
    """Refuse clipped audio (silence and NaN are refused by the loader)."""
    clipped = float(np.mean(np.abs(audio) >= CLIPPED_LEVEL))
    if clipped > MAX_CLIPPED_FRACTION:
        raise AudioError(f"{name}: {clipped:.1%} of samples are clipped at full scale; lower the input gain and record again")


def _evidence(bundle: Bundle, runner, extract: LogMelExtractor, machine_type: str, audio: np.ndarray) -> ClipEvidence:
    logmel = extract(audio)
    residual, logits, embedding = model_outputs(bundle, logmel, machine_type, runner.infer)
    envelope = envelope_vector(audio) if bundle.stats.needs_envelope else None
    return ClipEvidence(residual, logits, logmel, embedding, envelope=envelope)


def fit_enrollment(stats: ScoringStats, machine: str, evidence: list[ClipEvidence]) -> ScoringStats:
    """A copy of ``stats`` that also scores ``machine`` (fitted on ``evidence`` of its normals)."""
    machine_type = machine.split("/")[0]
    st = replace(stats, centres=dict(stats.centres), calibration=dict(stats.calibration), thresholds=dict(stats.thresholds),
                 enrolled=sorted(set(stats.enrolled) | {machine}))
    raw: dict[str, np.ndarray] = {}
    for comp in stats.components:
        vecs = np.stack([st.component_vector(comp, ev) for ev in evidence])
        if comp == "embed":
            st.centres[f"embed|{machine}"], raw[comp] = embed_centre_and_loo(vecs)
            continue
        precision = stats.precisions[f"{comp}|{machine_type}"]
        st.centres[f"{comp}|{machine}"] = vecs.mean(axis=0)
        raw[comp] = np.array([mahalanobis(vecs[i], np.delete(vecs, i, axis=0).mean(axis=0), precision) for i in range(len(vecs))])
    for comp, values in raw.items():  # its own spread, not the type's pooled one: it may be recorded otherwise
        st.calibration[f"{comp}|{machine}"] = calibration_of(values)
    finals = [st.fuse(machine, {c: raw[c][i] for c in stats.components}) for i in range(len(evidence))]
    st.thresholds[machine] = prediction_threshold(np.array(finals), stats.false_alarm_rate)
    return st


def check_enrollable(bundle: Bundle, machine: str) -> str:
    """The machine's type, if this bundle can enroll ``machine``; else a ConfigError saying why."""
    stats = bundle.stats
    machine_type, _, machine_id = machine.partition("/")
    if not machine_id:
        raise ConfigError(f"--machine must be TYPE/ID, got {machine!r}")
    if machine_type not in stats.types:
        raise ConfigError(f"machine type {machine_type!r} was not trained in this bundle (types: {', '.join(sorted(stats.types))}); "
                          "enrollment needs a model trained on that type")
    if stats.scoring != "fusion" or "class" in stats.components:
        raise ConfigError(f"this bundle scores with {stats.scoring} ({', '.join(stats.components) or 'paper scores'}); enrollment needs "
                          "fusion without the class score (an enrolled id has no trained class); re-export a run trained with the default scoring")
    return machine_type


@contextlib.contextmanager
def bundle_lock(bundle_dir: str | Path):
    """One enroll or rollback at a time per bundle: each reads the bundle, then replaces it, and
    a second one in between would silently undo the first."""
    import fcntl

    root = Path(bundle_dir).resolve()
    with open(root.parent / f".{root.name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{bundle_dir}: another mtad-edge enroll or rollback is changing this bundle; try again when it ends") from None
        yield


def enroll(bundle_dir: str | Path, machine: str, paths: list[Path], segment_seconds: float = SEGMENT_SECONDS, log=print) -> EnrollResult:
    """Fit ``machine`` (``type/id``) from normal audio files and write it into the bundle as a new revision."""
    with bundle_lock(bundle_dir):
        return _enroll(bundle_dir, machine, paths, segment_seconds, log)


def _enroll(bundle_dir, machine, paths, segment_seconds, log) -> EnrollResult:
    bundle = load_bundle(bundle_dir)
    stats = bundle.stats
    machine_type = check_enrollable(bundle, machine)
    extract = LogMelExtractor()
    sr = extract.cfg.sample_rate
    min_samples = (bundle.window - 1) * extract.cfg.hop_length
    runner = bundle.onnx_runner("fp32") if stats.needs_model else NoModelRunner()
    warnings: list[str] = []
    evidence, seconds = [], 0.0
    norm = stats.type_stats(machine_type).norm
    ref_audio = []
    for path in paths:
        audio = load_audio(path, sr, min_seconds=min_samples / sr)
        check_enrollment_audio(audio, str(path))
        for seg in segments(audio, sr, segment_seconds, min_samples):
            ev = _evidence(bundle, runner, extract, machine_type, seg)
            evidence.append(ev)
            ref_audio.append(seg)
            seconds += len(seg) / sr
    need = MIN_ENROLL_CLIPS
    if len(evidence) < need:
        raise AudioError(f"{machine}: {len(evidence)} clip(s) of enrollment audio ({seconds:.0f} s) are too few: need >= {need} clips of "
                         f"{segment_seconds:g} s ({need * segment_seconds:.0f} s of normal operation)")
    level = np.mean([np.abs(norm.apply(ev.logmel).mean(axis=1)).mean() for ev in evidence])
    if level > FAR_FROM_TYPE_Z:
        warnings.append(f"warning: the enrollment audio is far from the {machine_type} sounds the model was trained on (mean |z| {level:.1f} "
                        f"> {FAR_FROM_TYPE_Z:g}): wrong machine type, or a microphone unplugged or moved?")
    new_stats = fit_enrollment(stats, machine, evidence)
    record = {"machine": machine, "clips": len(evidence), "seconds": round(seconds, 1),
              "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "sources": [Path(p).name for p in paths], "threshold": float(new_stats.thresholds[machine])}
    reference = reference_clips(replace(bundle, stats=new_stats), machine, [ref_audio[0], ref_audio[-1]], min_samples)
    revision = write_revision(bundle, new_stats, record, reference)
    for w in warnings:
        log(w)
    return EnrollResult(machine, len(evidence), seconds, new_stats.thresholds[machine], revision, tuple(stats.components), warnings,
                        stats.false_alarm_rate)


def reference_clips(bundle: Bundle, machine: str, clips: list[np.ndarray], min_samples: int) -> dict:
    """A few of the enrollment clips (cut short, int16) and their scores by every ONNX variant of
    the enrolled bundle, recorded now: ``mtad-parity --bundle`` checks later runs against them."""
    n = min(min(len(c) for c in clips), max(min_samples + 8 * 512, int(REFERENCE_SECONDS * 16000)))
    audio = np.stack([np.round(np.clip(c[:n], -1, 1) * 32767).astype(np.int16) for c in clips[:REFERENCE_CLIPS]])
    keys = [f"enrolled:{machine}:{i}" for i in range(len(audio))]
    score_all = lambda runner: [float(EdgeScorer(bundle, runner).score_audio(a.astype(np.float32) / 32768.0, machine).score)  # noqa: E731
                                for a in audio]
    if not bundle.stats.needs_model:  # no model, no variants: one scorer
        return {"audio": audio, "keys": keys, "machine": machine, "scores": {NoModelRunner.name: score_all(NoModelRunner())}}
    onnx = {name: v for name, v in bundle.variants.items() if v.kind == "onnx"}
    scores = {name: score_all(bundle.onnx_runner(v.precision, "CPUExecutionProvider")) for name, v in onnx.items()}
    return {"audio": audio, "keys": keys, "machine": machine, "scores": scores}


def _merge_reference(tmp: Path, manifest: dict, ref: dict) -> None:
    """Replace ``ref['machine']``'s clips in the bundle's enrolled reference set with ``ref``'s."""
    path = tmp / ENROLLED_REFERENCE
    old = manifest.get("reference_enrolled") or {"keys": [], "machines": [], "scores": {}}
    keep = [i for i, m in enumerate(old["machines"]) if m != ref["machine"]]
    audio = [a for a in (np.load(path, allow_pickle=False)["audio"] if path.exists() else [])]
    audio = [audio[i] for i in keep]
    width = max([len(a) for a in audio] + [ref["audio"].shape[1]])
    pad = lambda a: np.pad(a, (0, width - len(a)))  # noqa: E731 (lengths recorded below)
    lengths = [int(old["lengths"][i]) for i in keep] + [ref["audio"].shape[1]] * len(ref["audio"])
    stacked = np.stack([pad(a) for a in audio] + [pad(a) for a in ref["audio"]])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, audio=stacked)
    manifest["reference_enrolled"] = {
        "file": ENROLLED_REFERENCE,
        "keys": [old["keys"][i] for i in keep] + ref["keys"],
        "machines": [old["machines"][i] for i in keep] + [ref["machine"]] * len(ref["keys"]),
        "lengths": lengths,
        "scores": {name: [old["scores"].get(name, [None] * len(old["keys"]))[i] for i in keep] + ref["scores"][name] for name in ref["scores"]},
    }
    manifest["files"] = {**manifest["files"], ENROLLED_REFERENCE: sha256_file(path)}


def write_revision(bundle: Bundle, new_stats: ScoringStats, record: dict, reference: dict | None = None) -> int:
    """Write ``new_stats`` as the bundle's next revision, keeping the current one for rollback."""
    root = bundle.root
    manifest = dict(bundle.manifest)
    revision = int(manifest.get("revision", 0)) + 1
    sweep_stale(root.parent, f".{root.name}.enroll-")  # left by a killed enrollment
    tmp = root.parent / f".{root.name}.enroll-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(root, tmp)
        keep = tmp / REVISIONS / f"{revision - 1:04d}"
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / MANIFEST, keep / MANIFEST)
        shutil.copy2(root / STATS, keep / STATS)
        new_stats.save(tmp / STATS)
        manifest["files"] = {**manifest["files"], STATS: sha256_file(tmp / STATS)}
        manifest["revision"] = revision
        enrolled = dict(manifest.get("enrolled") or {})
        enrolled[record["machine"]] = {k: v for k, v in record.items() if k != "machine"}
        manifest["enrolled"] = enrolled
        manifest["revisions"] = [*(manifest.get("revisions") or []), {"revision": revision, "enrolled": record["machine"], "when": record["when"]}]
        if reference is not None:
            if (root / ENROLLED_REFERENCE).exists():
                shutil.copy2(root / ENROLLED_REFERENCE, keep / "enrolled.npz")
            _merge_reference(tmp, manifest, reference)
        (tmp / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
        load_bundle(tmp)  # what we wrote must pass our own loader
        replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return revision


def rollback(bundle_dir: str | Path) -> int:
    """Restore the bundle's previous revision; returns the revision now in force."""
    with bundle_lock(bundle_dir):
        return _rollback(bundle_dir)


def _rollback(bundle_dir) -> int:
    bundle = load_bundle(bundle_dir)
    root = bundle.root
    revision = int(bundle.manifest.get("revision", 0))
    if revision == 0:
        raise BundleError(f"{root}: no earlier revision to roll back to (nothing was enrolled)")
    keep = root / REVISIONS / f"{revision - 1:04d}"
    if not (keep / MANIFEST).is_file() or not (keep / STATS).is_file():
        raise BundleError(f"{root}: revision {revision - 1} is missing from {REVISIONS}/; cannot roll back")
    sweep_stale(root.parent, f".{root.name}.rollback-")
    tmp = root.parent / f".{root.name}.rollback-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(root, tmp)
        shutil.copy2(keep / MANIFEST, tmp / MANIFEST)
        shutil.copy2(keep / STATS, tmp / STATS)
        if (keep / "enrolled.npz").exists():
            shutil.copy2(keep / "enrolled.npz", tmp / ENROLLED_REFERENCE)
        elif (tmp / ENROLLED_REFERENCE).exists():
            (tmp / ENROLLED_REFERENCE).unlink()
        shutil.rmtree(tmp / REVISIONS / f"{revision - 1:04d}")
        load_bundle(tmp)
        replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return revision - 1
