"""The edge bundle: ``manifest.yaml`` + ``models/*.onnx`` (+ engines) + ``stats.npz``; a bundle whose
scores are model-free has no ``models/``.

Loading validates everything before use: schema version, the manifest's schema
(``bundle_schema``), feature settings, the sha256 of every file listed in the manifest and of
engines built on the device, and the statistics' shapes. A bundle that does not match is
refused with one line naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import __version__
from .bundle_schema import STATS, check_engine_digest, resolve_inside, validate_manifest
from .errors import BundleError
from .features import FeatureConfig
from .hashing import sha256_file
from .runners import OnnxRuntimeRunner, Precision
from .scoring import ScoringStats

FORMAT = "mtad-bundle"
SCHEMA_VERSION = 12  # 2: per-id fusion statistics (scoring, components, centres, calibration); 3: spectral v2 statistics; 4: envelope component; 5: acoustic component, weighted fusion, calibration std pooled per type; 6: factor-analysis covariances, recorded in stats (covariance); 7: spectral band means relative to the clip's level; 8: each frame floored 80 dB below its loudest bin for the spectral statistics; 9: band spectral flatness of the long-term spectrum in the envelope statistic (96 numbers); 10: envelope-spectrum line strengths in the envelope statistic (132 numbers); 11: line strengths of recordings of 20 s or more averaged over 10-20 s stretches (clips under 20 s unchanged); 12: a model-free bundle carries no model (no variants, no models/)
MANIFEST = "manifest.yaml"


@dataclass(frozen=True)
class Variant:
    """One model file: its precision and how it runs (``onnx`` or ``tensorrt`` engine)."""

    name: str
    precision: str
    kind: str
    file: str
    reduce_range: bool = False
    has_qdq: bool | None = None  # recorded at export; None (older bundles): the runner looks in the file


@dataclass
class Bundle:
    root: Path
    manifest: dict
    stats: ScoringStats
    variants: dict[str, Variant]
    device_engines: dict[str, tuple[Path, dict] | BundleError] = field(default_factory=dict)  # precision -> engine, key

    @property
    def window(self) -> int:
        return int(self.manifest["inference"]["window"])

    @property
    def warmup(self) -> int:
        return int(self.manifest["inference"]["warmup"])

    @property
    def class_map(self) -> list[str]:
        return list(self.manifest["class_map"])

    def variant(self, precision: str, kind: str = "onnx") -> Variant:
        for v in self.variants.values():
            if v.precision == precision and v.kind == kind:
                return v
        have = ", ".join(f"{v.kind}/{v.precision}" for v in self.variants.values())
        raise BundleError(f"{self.root}: no {kind} variant at {precision} in this bundle (has: {have}); export it with mtad-export --{precision}")

    def engine(self, precision: str) -> tuple[Path | None, dict | None]:
        """A TensorRT engine for ``precision``: exported with the bundle, or built on this
        device by ``mtad-edge build-engine`` (found by its key file)."""
        for name, v in self.variants.items():
            if v.kind == "tensorrt" and v.precision == precision:
                return self.root / v.file, self.manifest["variants"][name].get("engine_key")
        built = self.device_engines.get(precision)
        if isinstance(built, BundleError):
            raise built
        return built if built is not None else (None, None)

    def onnx_runner(self, precision: str = "fp32", provider: str = "auto", threads: int = 0) -> OnnxRuntimeRunner:
        v = self.variant(Precision(precision).value, "onnx")
        return OnnxRuntimeRunner(self.root / v.file, v.precision, provider, threads, v.reduce_range, v.has_qdq)


def _check_features(manifest: dict, root: Path) -> None:
    stored = manifest.get("feature_config") or {}
    current = FeatureConfig().to_dict()
    diffs = [f"{k} {stored.get(k)!r} != {v!r}" for k, v in current.items() if stored.get(k) != v]
    diffs += [f"unknown setting {k}" for k in stored if k not in current]
    if diffs:
        raise BundleError(f"{root}: bundle feature settings differ from this runtime's ({'; '.join(diffs)}); re-export it with this mtad version")


def load_bundle(path: str | Path) -> Bundle:
    """Load and validate a bundle directory; raises :class:`BundleError` with the reason."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not root.is_dir() or not manifest_path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST}); create one with mtad-export")
    resolve_inside(root, MANIFEST, MANIFEST)
    try:
        manifest = yaml.safe_load(manifest_path.read_bytes())
    except yaml.YAMLError as exc:
        raise BundleError(f"{manifest_path}: unreadable manifest ({str(exc).splitlines()[0]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not an mtad bundle manifest")
    schema = manifest.get("schema_version")
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise BundleError(f"{manifest_path}: schema_version: expected an integer, got {schema!r}")
    if schema > SCHEMA_VERSION:
        raise BundleError(
            f"{root}: bundle schema version {schema} is newer than this runtime supports ({SCHEMA_VERSION}); "
            f"upgrade mtad on this device (bundle made by mtad {manifest.get('mtad_version')}, runtime is {__version__})"
        )
    if schema < SCHEMA_VERSION:
        raise BundleError(f"{root}: bundle schema version {schema} is older than this runtime supports ({SCHEMA_VERSION}); re-export it")
    checked = validate_manifest(manifest, manifest_path)
    _check_features(manifest, root)
    for rel, digest in checked.files.items():
        p = resolve_inside(root, rel, f"files.{rel}")
        if not p.is_file():
            raise BundleError(f"{root}: {rel} is listed in the manifest but missing")
        if sha256_file(p) != digest:
            raise BundleError(f"{root}: {rel} does not match its sha256 in the manifest (corrupted or modified)")
    stats = ScoringStats.load(root / STATS, n_mels=checked.model.n_mels)
    _check_stats_match(stats, checked, root)
    variants = {name: Variant(name, v.precision, v.kind, v.file, v.reduce_range, v.has_qdq) for name, v in checked.variants.items()}
    return Bundle(root, manifest, stats, variants, _device_engines(root))


def _check_stats_match(stats: ScoringStats, m, root: Path) -> None:
    """The statistics must describe the model the manifest describes."""
    pairs = [("class_map", stats.class_map, m.class_map), ("task", stats.task, m.task),
             ("scoring", stats.scoring, m.scoring.method), ("components", list(stats.components), list(m.scoring.components)),
             ("enrolled", sorted(stats.enrolled), sorted(m.enrolled)), ("covariance", stats.covariance or None, m.scoring.covariance)]
    for name, in_stats, in_manifest in pairs:
        if in_stats != in_manifest:
            raise BundleError(f"{root}: {STATS}: {name} {in_stats!r} differs from the manifest's {in_manifest!r}")


def _device_engines(root: Path) -> dict[str, tuple[Path, dict] | BundleError]:
    """Engines built on this device by ``mtad-edge build-engine`` (not in the manifest's hashes):
    each checked against the sha256 its key file records. A bad one is kept as its error, raised
    when that engine is asked for, so the ONNX variants stay usable."""
    found: dict[str, tuple[Path, dict] | BundleError] = {}
    for engine in sorted((root / "engines").glob("*.engine")):
        key_path = engine.with_suffix(".key.json")
        if not key_path.is_file():
            continue
        try:
            key = json.loads(key_path.read_bytes())
            resolve_inside(root, str(engine.relative_to(root)), "engines")
            check_engine_digest(engine, key)
            found[engine.stem] = (engine, key)
        except json.JSONDecodeError as exc:
            found[engine.stem] = BundleError(f"{key_path}: unreadable key file ({exc.msg}); rebuild it with mtad-edge build-engine")
        except BundleError as exc:
            found[engine.stem] = exc
    return found
