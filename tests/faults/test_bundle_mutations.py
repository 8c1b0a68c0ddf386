"""Hypothesis mutates a real bundle's manifest and statistics; every mutation must end in a
clean one-line error (or, if harmless, load and score), through the loader and the CLI.

Mutated statistics are re-hashed into the manifest, so they reach the statistics reader
instead of stopping at the sha256 check (one mutation kind leaves the hash stale on purpose).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.cli import main as edge_main
from mtad.edge_runtime.errors import BundleError
from mtad.edge_runtime.hashing import sha256_file

from .conftest import TALLY

SETTINGS = settings(max_examples=int(os.environ.get("MTAD_FAULT_EXAMPLES", "100")), deadline=None, derandomize=True,
                    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLI_EVERY = 4  # every 4th refused mutation also goes through mtad-edge (all loaded ones do)

JUNK = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
BAD_ENUMS = st.one_of(st.sampled_from(["bf16", "FP32", "int4", "", "tensorrt ", "onnx2", "fusion2", "recon+"]), st.text(max_size=8))
BAD_PATHS = st.sampled_from(["../x", "/etc/passwd", "models/../../x", "..", "models//fp32.onnx", "C:\\x", "./stats.npz",
                             "models\\fp32.onnx", "", "models/./fp32.onnx", "../base/stats.npz"])


# -- helpers ----------------------------------------------------------------------------------

def _copy(src: Path, dst: Path) -> Path:
    # Hard links: fast; every mutation writes a new file (new inode), never into a shared one.
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def _replace(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _manifest(b: Path) -> dict:
    return yaml.safe_load((b / "manifest.yaml").read_text())


def _write_manifest(b: Path, m) -> None:
    _replace(b / "manifest.yaml", yaml.safe_dump(m, sort_keys=False).encode())


def _rehash(b: Path, rel: str) -> None:
    m = _manifest(b)
    m["files"][rel] = sha256_file(b / rel)
    _write_manifest(b, m)


def _paths(obj, prefix=()):
    """Every key path of a nested manifest (dict keys and list indices)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


def _parent(m, path):
    for k in path[:-1]:
        m = m[k]
    return m


def _flip(data: bytes, draw, max_flips=4) -> bytes:
    b = bytearray(data)
    for _ in range(draw(st.integers(1, max_flips))):
        i = draw(st.integers(0, len(b) - 1))
        b[i] ^= draw(st.integers(1, 255))
    return bytes(b)


def _outcome(bundle: Path, clip: Path, n: int, count: bool = True) -> str:
    """``refused`` (one-line BundleError) or ``loaded`` (and then it must score through the CLI).
    Anything else raises: that is a traceback a user would have seen."""
    if not count:
        load_bundle(bundle)
        _cli(bundle, clip)
        return "loaded"
    TALLY["mutations tried"] += 1
    TALLY["tracebacks"] += 0  # shown as 0 unless one happens (the test then fails too)
    try:
        load_bundle(bundle)
    except BundleError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, f"error is not one line: {msg!r}"
        TALLY["refused with one line"] += 1
        if n % CLI_EVERY == 0:
            _cli(bundle, clip, expect_refusal=msg)
        return "refused"
    except BaseException:
        TALLY["tracebacks"] += 1
        raise
    TALLY["harmless (loaded and scored)"] += 1
    _cli(bundle, clip)
    return "loaded"


def _cli(bundle: Path, clip: Path, expect_refusal: str | None = None) -> None:
    TALLY["mtad-edge runs (in process)"] += 1
    res = CliRunner().invoke(edge_main, ["--bundle", str(bundle), "--machine", "fan/id_00", str(clip)])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        TALLY["tracebacks"] += 1
        raise AssertionError(f"mtad-edge raised {type(res.exception).__name__}: {res.exception}") from res.exception
    assert "Traceback" not in res.output
    if expect_refusal is not None:
        assert res.exit_code == 1, res.output
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
        assert errors == [f"error: {expect_refusal}"], res.stderr
    else:
        assert res.exit_code in (0, 3), res.output  # 3: the clip itself could not be scored (a line says why)


# -- mutations ----------------------------------------------------------------------------------

def mutate_manifest(b: Path, draw) -> str:
    kind = draw(st.sampled_from(["delete", "retype", "enum", "path", "symlink", "numbers", "truncate", "flip"]))
    raw = (b / "manifest.yaml").read_bytes()
    m = yaml.safe_load(raw)
    if kind == "truncate":
        _replace(b / "manifest.yaml", raw[: draw(st.integers(0, len(raw) - 1))])
    elif kind == "flip":
        _replace(b / "manifest.yaml", _flip(raw, draw))
    elif kind in ("delete", "retype"):
        path = draw(st.sampled_from(list(_paths(m))))
        parent = _parent(m, path)
        if kind == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JUNK)
        _write_manifest(b, m)
    elif kind == "enum":
        name = draw(st.sampled_from(sorted(m["variants"])))
        where = draw(st.sampled_from(["precision", "kind", "task", "scoring.method", "scoring.components"]))
        bad = draw(BAD_ENUMS)
        if where in ("precision", "kind"):
            m["variants"][name][where] = bad
        elif where == "task":
            m["task"] = bad
        elif where == "scoring.method":
            m["scoring"]["method"] = bad
        else:
            m["scoring"]["components"] = [*m["scoring"]["components"], bad]
        _write_manifest(b, m)
    elif kind == "path":
        bad = draw(BAD_PATHS)
        if draw(st.booleans()):  # a variant's file
            m["variants"][draw(st.sampled_from(sorted(m["variants"])))]["file"] = bad
        else:  # a hashed file's name
            rel = draw(st.sampled_from(sorted(m["files"])))
            m["files"][bad] = m["files"].pop(rel)
        _write_manifest(b, m)
    elif kind == "symlink":  # same bytes (the sha256 matches), but the file lives outside the bundle
        rel = draw(st.sampled_from(sorted(m["files"])))
        outside = b.parent / f"outside-{rel.replace('/', '_')}"
        shutil.copy(b / rel, outside)
        (b / rel).unlink()
        (b / rel).symlink_to(os.path.relpath(outside, (b / rel).parent) if draw(st.booleans()) else outside)
    elif kind == "numbers":
        where = draw(st.sampled_from([("model_config", "n_classes"), ("model_config", "n_mels"), ("model_config", "window"),
                                      ("inference", "window"), ("inference", "warmup")]))
        m[where[0]][where[1]] = m[where[0]][where[1]] + draw(st.sampled_from([-1, 1, 7, -10**6]))
        _write_manifest(b, m)
    return kind


def _arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _other_shape(a: np.ndarray, draw) -> np.ndarray:
    if a.ndim == 0:
        return np.stack([a, a])
    choice = draw(st.sampled_from(["grow", "shrink", "flatten", "add-axis"]))
    if choice == "grow":
        return np.concatenate([a, a[:1]], axis=0)
    if choice == "shrink" and a.shape[0] > 1:
        return a[:-1]
    if choice == "flatten" and a.ndim > 1:
        return a.reshape(-1)
    return a[None]


def mutate_stats(b: Path, draw) -> str:
    kind = draw(st.sampled_from(["truncate", "flip", "drop", "reshape", "retype", "nonfinite", "extra", "stale-hash"]))
    path = b / "stats.npz"
    raw = path.read_bytes()
    if kind == "truncate":
        _replace(path, raw[: draw(st.integers(0, len(raw) - 1))])
    elif kind in ("flip", "stale-hash"):
        _replace(path, _flip(raw, draw))
    else:
        arrays = _arrays(path)
        key = draw(st.sampled_from(sorted(arrays)))
        if kind == "drop":
            del arrays[key]
        elif kind == "reshape":
            arrays[key] = _other_shape(arrays[key], draw)
        elif kind == "retype":
            arrays[key] = draw(st.sampled_from([np.array("x"), np.array(["a", "b"]), np.array(3), np.array([True]),
                                                np.zeros((2, 2)), np.array([{"a": 1}], dtype=object)]))
        elif kind == "nonfinite":
            floats = [k for k, v in arrays.items() if v.dtype.kind == "f" and v.size]
            key = draw(st.sampled_from(sorted(floats)))
            a = arrays[key].copy()
            a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            arrays[key] = a
        else:
            arrays[draw(st.sampled_from(["extra", "type/fan/other", "centre|nope|fan/id_00", "precision|recon"]))] = np.ones(3)
        path.unlink()
        np.savez(path, **arrays)  # object arrays are pickled here: the reader must refuse them
    if kind != "stale-hash":
        _rehash(b, "stats.npz")
    return kind


def _mutated_outcome(fault_bundle, fault_clip, mutate, area: str, draw) -> None:
    """Mutate a fresh copy of the bundle with ``mutate``, tally it, and check how it ends."""
    with tempfile.TemporaryDirectory() as tmp:
        b = _copy(fault_bundle, Path(tmp) / "b")
        TALLY[f"{area}/{mutate(b, draw)}"] += 1
        _outcome(b, fault_clip, TALLY["mutations tried"])


@SETTINGS
@given(data=st.data())
def test_manifest_mutations_end_in_one_line(fault_bundle, fault_clip, data):
    _mutated_outcome(fault_bundle, fault_clip, mutate_manifest, "manifest", data.draw)


@SETTINGS
@given(data=st.data())
def test_stats_mutations_end_in_one_line(fault_bundle, fault_clip, data):
    _mutated_outcome(fault_bundle, fault_clip, mutate_stats, "stats", data.draw)


def test_unmutated_bundle_loads(fault_bundle, fault_clip, tmp_path):
    """The control: the copy itself is fine, so every refusal above comes from its mutation."""
    assert _outcome(_copy(fault_bundle, tmp_path / "b"), fault_clip, 1, count=False) == "loaded"


@pytest.mark.parametrize("mutate, field", [
    (lambda b: _edit(b, lambda m: m["variants"]["fp16"].update(precision="bf16")), "variants.fp16.precision"),
    (lambda b: _edit(b, lambda m: m.update(files=list(m["files"]))), "files"),
    (lambda b: _edit(b, lambda m: m["files"].update({"../x": "0" * 64})), "files.../x"),
    (lambda b: _replace(b / "manifest.yaml", (b / "manifest.yaml").read_bytes()[:300]), "manifest"),
    (lambda b: _resave_stats(b, lambda a: a.update({"precision|recon|fan": a["precision|recon|fan"][:-1, :-1]})), "precision|recon|fan"),
])
def test_real_mtad_edge_process_prints_one_line(fault_bundle, fault_clip, tmp_path, mutate, field):
    """The installed ``mtad-edge`` in a fresh process: exit 1, one ``error:`` line naming the field."""
    b = _copy(fault_bundle, tmp_path / "b")
    mutate(b)
    TALLY["mtad-edge runs (subprocess)"] += 1
    exe = Path(sys.executable).with_name("mtad-edge")
    res = subprocess.run([str(exe), "--bundle", str(b), "--machine", "fan/id_00", str(fault_clip)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], res.stderr


def _edit(b: Path, change) -> None:
    m = _manifest(b)
    change(m)
    _write_manifest(b, m)


def _resave_stats(b: Path, change) -> None:
    arrays = _arrays(b / "stats.npz")
    change(arrays)
    (b / "stats.npz").unlink()
    np.savez(b / "stats.npz", **arrays)
    _rehash(b, "stats.npz")
