"""The bundle's one schema: the manifest's types and enums (pydantic), paths kept inside the
bundle, and the statistics arrays' keys, types and shapes against the class map and mel count.

Every violation is a :class:`BundleError` of one line that names the field. The manifest
sections the runtime reads are typed; the rest (export checks, sizes, calibration records)
is informational and passes through untyped.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, model_validator

from .constants import PRECISIONS, TASKS, VARIANT_KINDS
from .envelope import envelope_dim
from .errors import BundleError
from .hashing import sha256_bytes, sha256_file
from .scoring import COMPONENTS, COVARIANCES, RECON_BAND, SCORINGS, n_bands, needs_model, spectral_dim, uses_mse

STATS = "stats.npz"
ENGINE_DIGEST = "engine_sha256"  # the key file field that pins a device-built engine's bytes

Precision = Literal[PRECISIONS]  # type: ignore[valid-type]
Kind = Literal[VARIANT_KINDS]  # type: ignore[valid-type]
Task = Literal[TASKS]  # type: ignore[valid-type]
Scoring = Literal[SCORINGS]  # type: ignore[valid-type]
Covariance = Literal[COVARIANCES]  # type: ignore[valid-type]
Component = Literal[COMPONENTS]  # type: ignore[valid-type]


def _relative_path(value: str) -> str:
    """A path inside the bundle: relative, forward slashes, no ``..``, nothing odd."""
    if not value or "\\" in value or "\x00" in value:
        raise ValueError("must be a non-empty relative path with '/' separators")
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive:
        raise ValueError("must be relative to the bundle, not absolute")
    if any(part in ("..", ".", "") for part in value.split("/")):
        raise ValueError("must not contain '..', '.' or empty parts (it would leave the bundle)")
    return value


RelPath = Annotated[StrictStr, AfterValidator(_relative_path)]
Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
PosInt = Annotated[int, Field(strict=True, gt=0)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
Machine = Annotated[StrictStr, Field(pattern=r"^[^/\s]+/[^/\s]+$")]  # "type/id"


class _Section(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class ModelSection(_Section):
    n_mels: PosInt
    n_classes: PosInt
    window: PosInt


class InferenceSection(_Section):
    window: PosInt
    warmup: NonNegInt
    outputs: list[StrictStr]


class ScoringSection(_Section):
    method: Scoring
    components: list[Component] = []
    weights: list[Annotated[float, Field(gt=0)]] = []
    covariance: Optional[Covariance] = None
    false_alarm_rate: Annotated[float, Field(gt=0, lt=1)]
    # which training normals' out-of-sample scores set the thresholds (absent before mtad recorded it)
    thresholds_from: Optional[Literal["held_out_normals", "all_training_normals"]] = None


class VariantEntry(_Section):
    precision: Precision
    kind: Kind
    file: RelPath
    reduce_range: StrictBool = False
    has_qdq: Optional[StrictBool] = None
    engine_key: Optional[dict[StrictStr, Any]] = None


class ReferenceSection(_Section):
    file: RelPath
    keys: list[StrictStr]
    scores: dict[StrictStr, list[Optional[float]]]


class EnrolledReferenceSection(ReferenceSection):
    machines: list[Machine]
    lengths: list[PosInt]


ClipDigest = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{16}$")]  # first 16 hex digits of a clip file's sha256


class ClipSetSection(_Section):
    """One of the export's clip sets: which kind, how many, and which clips (by content)."""

    kind: Literal["training_normals", "labelled_validation", "normals_drift", "reference_test_clips"]
    n_clips: NonNegInt
    n_normal: Optional[NonNegInt] = None
    n_anomalous: Optional[NonNegInt] = None
    clips_sha256: Sha256
    clip_digests: list[ClipDigest]

    @model_validator(mode="after")
    def _counts(self) -> "ClipSetSection":
        if len(self.clip_digests) != self.n_clips:
            raise ValueError(f"clip_digests: {len(self.clip_digests)} digests for n_clips {self.n_clips}")
        if self.n_normal is not None and self.n_anomalous is not None and self.n_normal + self.n_anomalous != self.n_clips:
            raise ValueError(f"n_normal + n_anomalous: {self.n_normal} + {self.n_anomalous} != n_clips {self.n_clips}")
        return self


class DataSetsSection(_Section):
    """The three disjoint sets of an export (absent in bundles exported before mtad recorded them:
    optional, so those still load at the same schema version)."""

    calibration: Optional[ClipSetSection] = None
    accuracy_control: Optional[ClipSetSection] = None
    report: Optional[ClipSetSection] = None


class Manifest(_Section):
    format: Literal["mtad-bundle"]
    schema_version: PosInt
    mtad_version: StrictStr
    task: Task
    feature_config: dict[StrictStr, Any]
    model: ModelSection = Field(alias="model_config")  # "model_config" is pydantic's own attribute
    inference: InferenceSection
    class_map: Annotated[list[Machine], Field(min_length=1)]
    scoring: ScoringSection
    variants: dict[StrictStr, VariantEntry]  # none in a model-free bundle (no score reads the network)
    files: dict[RelPath, Sha256]
    revision: NonNegInt = 0
    enrolled: dict[Machine, dict[StrictStr, Any]] = {}
    reference: Optional[ReferenceSection] = None
    reference_enrolled: Optional[EnrolledReferenceSection] = None
    data_sets: Optional[DataSetsSection] = None

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if len(set(self.class_map)) != len(self.class_map):
            raise ValueError("class_map: repeated machine")
        if self.model.n_classes % len(self.class_map):  # ids first, then any pseudo-anomaly blocks (training only)
            raise ValueError(f"model_config.n_classes: {self.model.n_classes} is not a multiple of the {len(self.class_map)} entries in class_map")
        if self.model.window != self.inference.window:
            raise ValueError(f"inference.window: {self.inference.window} != model_config.window {self.model.window}")
        if self.inference.warmup >= self.inference.window:
            raise ValueError(f"inference.warmup: {self.inference.warmup} must be below the window ({self.inference.window})")
        if STATS not in self.files:
            raise ValueError(f"files: no {STATS} listed")
        for name, v in self.variants.items():
            if v.file not in self.files:
                raise ValueError(f"variants.{name}.file: {v.file} is not covered by the manifest's hashes")
        for section in ("reference", "reference_enrolled"):
            ref = getattr(self, section)
            if ref is not None and ref.file not in self.files:
                raise ValueError(f"{section}.file: {ref.file} is not covered by the manifest's hashes")
        if self.data_sets is not None:
            for name in ("calibration", "accuracy_control", "report"):
                if getattr(self.data_sets, name) is not None and getattr(self.data_sets, name).kind not in _SET_KINDS[name]:
                    raise ValueError(f"data_sets.{name}.kind: {getattr(self.data_sets, name).kind!r} is not a kind of {name} set")
        if not needs_model(self.scoring.method, self.scoring.components):
            if self.variants:  # nothing would ever run it: a model-free export writes none
                raise ValueError(f"variants: a model-free bundle (scoring {'+'.join(self.scoring.components)}) carries no model, "
                                 f"but lists {', '.join(self.variants)}")
        elif not any(v.precision == "fp32" and v.kind == "onnx" for v in self.variants.values()):
            raise ValueError("variants: bundle has no FP32 ONNX model")
        if self.feature_config.get("n_mels") != self.model.n_mels:
            raise ValueError(f"model_config.n_mels: {self.model.n_mels} != feature_config.n_mels {self.feature_config.get('n_mels')!r}")
        return self


_SET_KINDS = {"calibration": ("training_normals",), "accuracy_control": ("labelled_validation", "normals_drift"),
              "report": ("reference_test_clips",)}


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] not in ("value_error", "missing", "assertion_error") and "input" in err:
        shown = repr(err["input"])
        msg += f" (got {shown[:60] + '...' if len(shown) > 60 else shown})"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{loc + ': ' if loc else ''}{msg}{more}".replace("\n", " ")


def validate_manifest(data: Any, where: str | Path) -> Manifest:
    """Type-check a parsed manifest; :class:`BundleError` naming the first bad field."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: manifest must be a mapping, got {type(data).__name__}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"{where}: invalid manifest: {_first_error(exc)}") from None


def resolve_inside(root: Path, rel: str, field: str) -> Path:
    """``root / rel``, refused if it (through symlinks) resolves outside ``root``."""
    path = root / rel
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise BundleError(f"{root}: {field}: {rel} leaves the bundle (through a symlink)")
    return path


# -- statistics arrays ------------------------------------------------------------------

_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, NotImplementedError, KeyError)


def read_stats_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` without pickles, each member's header checked against its
    size before anything is allocated; :class:`BundleError` if the file is malformed."""
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise BundleError(f"{path}: unexpected member {info.filename!r} (not a .npy array)")
                data = zf.read(info)  # checks the member's CRC
                buf = io.BytesIO(data)
                version = np.lib.format.read_magic(buf)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy version {version}")
                shape, fortran, dtype = read_header(buf, max_header_size=10_000)
                if dtype.hasobject:
                    raise BundleError(f"{path}: {info.filename}: object arrays are not allowed")
                count = math.prod(shape)
                if count * dtype.itemsize != len(data) - buf.tell():
                    raise BundleError(f"{path}: {info.filename}: header says {shape} {dtype}, data holds {len(data) - buf.tell()} bytes")
                arr = np.frombuffer(data, dtype, count=count, offset=buf.tell())
                out[info.filename[:-4]] = arr.reshape(shape, order="F" if fortran else "C").copy()
    except BundleError:
        raise
    except _UNREADABLE as exc:
        raise BundleError(f"{path}: unreadable statistics ({type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''})") from None
    return out


def check_stats_arrays(arrays: dict[str, np.ndarray], n_mels: int | None = None, where: str | Path = STATS) -> None:
    """Keys, dtypes, finiteness and shapes of ``ScoringStats`` arrays; :class:`BundleError`
    naming the array. With ``n_mels``, per-bin arrays must have that many bins."""

    def fail(key: str, why: str):
        raise BundleError(f"{where}: {key}: {why}")

    def need(key: str, kind: str, ndim: int) -> np.ndarray:
        if key not in arrays:
            fail(key, "missing")
        a = arrays[key]
        if a.ndim != ndim:
            fail(key, f"expected {ndim}-d, got shape {a.shape}")
        if kind == "U" and a.dtype.kind != "U":
            fail(key, f"expected text, got {a.dtype}")
        if kind == "f":
            if a.dtype.kind not in "fiu":
                fail(key, f"expected numbers, got {a.dtype}")
            if not np.all(np.isfinite(a)):
                fail(key, "holds NaN or infinity")
        return a

    def names(key: str, values: np.ndarray, pattern=re.compile(r"^[^/\s]+/[^/\s]+$")) -> list[str]:
        out = [str(v) for v in values.tolist()]
        bad = [v for v in out if not pattern.match(v)]
        if bad:
            fail(key, f"{bad[0]!r} is not TYPE/ID")
        return out

    task = str(need("task", "U", 0))
    if task not in TASKS:
        fail("task", f"{task!r} is not one of {', '.join(TASKS)}")
    scoring = str(need("scoring", "U", 0)) if "scoring" in arrays else "paper"
    if scoring not in SCORINGS:
        fail("scoring", f"{scoring!r} is not one of {', '.join(SCORINGS)}")
    components = [str(c) for c in need("components", "U", 1).tolist()] if "components" in arrays else []
    if any(c not in COMPONENTS for c in components):
        fail("components", f"{components} has a component not in {', '.join(COMPONENTS)}")
    if scoring == "fusion" and not components:
        fail("components", "fusion scoring needs at least one component")
    if "component_weights" in arrays:
        weights = need("component_weights", "f", 1)
        if len(weights) != len(components) or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
            fail("component_weights", f"{weights.tolist()} must be one positive weight per component ({len(components)})")
    class_map = names("class_map", need("class_map", "U", 1))
    if not class_map:
        fail("class_map", "empty")
    enrolled = names("enrolled", need("enrolled", "U", 1)) if "enrolled" in arrays else []
    far = float(need("false_alarm_rate", "f", 0))
    if not 0 < far < 1:
        fail("false_alarm_rate", f"{far} is not in (0, 1)")
    machines = names("threshold_machines", need("threshold_machines", "U", 1))
    values = need("threshold_values", "f", 1)
    if len(values) != len(machines):
        fail("threshold_values", f"{len(values)} values for {len(machines)} threshold_machines")
    everyone = list(dict.fromkeys(class_map + enrolled))
    missing = [m for m in everyone if m not in machines]
    if missing:
        fail("threshold_machines", f"no threshold for {missing[0]}")

    if "covariance" in arrays and str(need("covariance", "U", 0)) not in COVARIANCES:
        fail("covariance", f"{str(arrays['covariance'])!r} is not one of {', '.join(COVARIANCES)}")
    known = {"task", "scoring", "components", "component_weights", "class_map", "enrolled", "false_alarm_rate", "threshold_machines",
             "threshold_values", "covariance"}
    per_type = {"norm_mean": 1, "norm_std": 1, "recon_mean": 1, "recon_precision": 2, "final_mean": 1, "final_precision": 2}
    types: dict[str, set[str]] = {}
    tables: dict[str, dict[str, np.ndarray]] = {"centre": {}, "precision": {}, "calibration": {}}
    for key in arrays:
        if key in known:
            continue
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "type" and parts[2] in per_type:
            types.setdefault(parts[1], set()).add(parts[2])
            need(key, "f", per_type[parts[2]])
            continue
        prefix, sep, rest = key.partition("|")
        comp = rest.partition("|")[0]
        if sep and prefix in tables and comp in COMPONENTS:
            tables[prefix][rest] = need(key, "f", 2 if prefix == "precision" else 1)
            continue
        fail(key, "unknown array (not written by this mtad version)")

    first = next((arrays[f"type/{t}/norm_mean"] for t in types if "norm_mean" in types[t]), None)
    n_bins = n_mels if n_mels is not None else (None if first is None else first.shape[0])
    for t in sorted({m.split("/")[0] for m in everyone} | set(types)):  # every type with any array needs its normalisation
        for n in ("norm_mean", "norm_std"):
            if n not in types.get(t, ()):
                fail(f"type/{t}/{n}", "missing")
    for t, present in types.items():
        shapes = {"norm_mean": (n_bins,), "norm_std": (n_bins,), "recon_mean": (n_bins,), "recon_precision": (n_bins, n_bins),
                  "final_mean": (2,), "final_precision": (2, 2)}
        for n in present:
            key = f"type/{t}/{n}"
            if arrays[key].shape != shapes[n]:
                fail(key, f"shape {arrays[key].shape}, expected {shapes[n]}" + (" (n_mels)" if n_bins is not None and n.startswith(("norm", "recon")) else ""))
        if np.any(arrays[f"type/{t}/norm_std"] <= 0):
            fail(f"type/{t}/norm_std", "must be positive")
    if scoring == "paper":
        for t in sorted({m.split("/")[0] for m in class_map}):
            wanted = {"final_mean", "final_precision"} if task == "multitask" else set()
            wanted |= {"recon_mean", "recon_precision"} if task != "classify" and not uses_mse(t) else set()
            for n in sorted(wanted - types.get(t, set())):
                fail(f"type/{t}/{n}", f"missing (paper scoring of a {task} model)")
        return

    dims = {"recon": n_bands(n_bins, RECON_BAND) if n_bins else None, "spectral": spectral_dim(n_bins) if n_bins else None,
            "envelope": envelope_dim(), "acoustic": spectral_dim(n_bins) + envelope_dim() if n_bins else None}
    embed_dims = {v.shape[0] for k, v in tables["centre"].items() if k.startswith("embed|")}
    if len(embed_dims) > 1:
        fail("centre|embed", f"embedding centres differ in size ({sorted(embed_dims)})")
    dims["embed"] = next(iter(embed_dims), None)
    for comp in components:
        for m in everyone:
            if comp == "class" and m not in class_map:
                fail("components", f"class score for enrolled id {m} (it has no class)")
            if comp != "class":
                key = f"{comp}|{m}"
                if key not in tables["centre"]:
                    fail(f"centre|{key}", "missing")
                if tables["centre"][key].shape != (dims[comp],):
                    fail(f"centre|{key}", f"shape {tables['centre'][key].shape}, expected ({dims[comp]},)")
            if comp not in ("class", "embed"):  # a Mahalanobis distance: a precision shared by the type
                key = f"{comp}|{m.split('/')[0]}"
                if key not in tables["precision"]:
                    fail(f"precision|{key}", "missing")
                if tables["precision"][key].shape != (dims[comp], dims[comp]):
                    fail(f"precision|{key}", f"shape {tables['precision'][key].shape}, expected ({dims[comp]}, {dims[comp]})")
            key = f"{comp}|{m}"
            cal = tables["calibration"].get(key)
            if cal is None:
                fail(f"calibration|{key}", "missing")
            if cal.shape != (2,) or cal[1] <= 0:
                fail(f"calibration|{key}", f"expected (mean, std > 0), got {cal.tolist()}")


# -- engines built on the device ----------------------------------------------------------


def engine_digest(serialized: bytes) -> dict[str, str]:
    """The key-file field that pins an engine's bytes: ``key.update(engine_digest(data))``
    before writing the key of an engine built on the device."""
    return {ENGINE_DIGEST: sha256_bytes(serialized)}


def check_engine_digest(engine: Path, key: Any) -> None:
    """Refuse a device-built engine whose key file is malformed or does not pin its bytes."""
    if not isinstance(key, dict):
        raise BundleError(f"{engine}: key file is not a JSON object; rebuild it with mtad-edge build-engine")
    digest = key.get(ENGINE_DIGEST)
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise BundleError(f"{engine}: key file has no {ENGINE_DIGEST}; rebuild it with mtad-edge build-engine")
    if sha256_file(engine) != digest:
        raise BundleError(f"{engine}: does not match {ENGINE_DIGEST} in its key file (corrupted or modified); rebuild it with mtad-edge build-engine")
