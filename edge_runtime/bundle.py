"""The edge bundle: ``manifest.yaml`` + ``models/*.onnx`` (+ engines) + ``stats.npz``.

Loading validates everything before use: schema version, feature settings, and the sha256
of every file listed in the manifest. A bundle that does not match is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from . import __version__
from .errors import BundleError
from .features import FeatureConfig
from .hashing import sha256_file
from .runners import OnnxRuntimeRunner, Precision
from .scoring import ScoringStats

FORMAT = "mtad-bundle"
SCHEMA_VERSION = 2  # 2: per-id fusion statistics (scoring, components, centres, calibration)
MANIFEST = "manifest.yaml"
STATS = "stats.npz"


@dataclass(frozen=True)
class Variant:
    """One model file: its precision and how it runs (``onnx`` or ``tensorrt`` engine)."""

    name: str
    precision: str
    kind: str
    file: str
    reduce_range: bool = False


@dataclass
class Bundle:
    root: Path
    manifest: dict
    stats: ScoringStats
    variants: dict[str, Variant]

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
        built = self.root / "engines" / f"{precision}.engine"
        if built.is_file() and built.with_suffix(".key.json").is_file():
            import json

            return built, json.loads(built.with_suffix(".key.json").read_text())
        return None, None

    def onnx_runner(self, precision: str = "fp32", provider: str = "auto", threads: int = 0) -> OnnxRuntimeRunner:
        v = self.variant(Precision(precision).value, "onnx")
        return OnnxRuntimeRunner(self.root / v.file, v.precision, provider, threads, v.reduce_range)


def _check_features(manifest: dict, root: Path) -> None:
    stored = manifest.get("feature_config") or {}
    current = FeatureConfig().to_dict()
    diffs = [f"{k} {stored.get(k)!r} != {v!r}" for k, v in current.items() if stored.get(k) != v]
    diffs += [f"unknown setting {k}" for k in stored if k not in current]
    if diffs:
        raise BundleError(f"{root}: bundle feature settings differ from this runtime's ({'; '.join(diffs)}); re-export it with this mtad version")


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Load and validate a bundle directory; raises :class:`BundleError` with the reason."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if not root.is_dir() or not manifest_path.is_file():
        raise BundleError(f"{root}: not a bundle (no {MANIFEST}); create one with mtad-export")
    try:
        manifest = yaml.safe_load(manifest_path.read_text())
    except yaml.YAMLError as exc:
        raise BundleError(f"{manifest_path}: unreadable manifest ({str(exc).splitlines()[0]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not an mtad bundle manifest")
    schema = manifest.get("schema_version")
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise BundleError(
            f"{root}: bundle schema version {schema} is newer than this runtime supports ({SCHEMA_VERSION}); "
            f"upgrade mtad on this device (bundle made by mtad {manifest.get('mtad_version')}, runtime is {__version__})"
        )
    if schema < SCHEMA_VERSION:
        raise BundleError(f"{root}: bundle schema version {schema} is older than this runtime supports ({SCHEMA_VERSION}); re-export it")
    _check_features(manifest, root)
    files = manifest.get("files") or {}
    if STATS not in files:
        raise BundleError(f"{root}: manifest lists no {STATS}")
    if verify:
        for rel, digest in files.items():
            p = root / rel
            if not p.is_file():
                raise BundleError(f"{root}: {rel} is listed in the manifest but missing")
            if sha256_file(p) != digest:
                raise BundleError(f"{root}: {rel} does not match its sha256 in the manifest (corrupted or modified)")
    try:
        stats = ScoringStats.load(root / STATS)
    except Exception as exc:
        raise BundleError(f"{root}: {STATS} is unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None
    variants = {}
    for name, v in (manifest.get("variants") or {}).items():
        if v["file"] not in files:
            raise BundleError(f"{root}: variant {name} file {v['file']} is not covered by the manifest's hashes")
        variants[name] = Variant(name, v["precision"], v["kind"], v["file"], bool(v.get("reduce_range", False)))
    if not any(v.precision == "fp32" and v.kind == "onnx" for v in variants.values()):
        raise BundleError(f"{root}: bundle has no FP32 ONNX model")
    return Bundle(root, manifest, stats, variants)
