from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Keep the feature cache of test runs out of the user's ~/.cache.
os.environ.setdefault("MTAD_CACHE", str(Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / f"mtad-test-cache-{os.getuid()}"))
SHARED_DATA = Path(os.environ.get("MTAD_SHARED_DATA", REPO.parent / "shared" / "data"))


def benchmark_module(script: str, name: str):
    """The script ``benchmarks/<script>`` loaded as module ``name`` (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_data(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real MIMII clips not found at {path} (set MTAD_SHARED_DATA)")
    return path


TINY_TYPES = ("fan", "pump", "slider", "valve")
TINY_MACHINES = [f"{t}/id_{i:02d}" for t in TINY_TYPES for i in (0, 2, 4, 6)]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A small synthetic set (the four MIMII types x 4 ids, 3 s clips), written once per session."""
    from mtad.train.synth import SynthConfig
    from mtad.train.synth_writer import write_dataset

    out = tmp_path_factory.mktemp("synth")
    write_dataset(SynthConfig(types=TINY_TYPES, ids=4, train=8, test=4, seconds=3.0, seed=7), out, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_synth, tmp_path_factory) -> Path:
    """A tiny multitask run trained on ``tiny_synth`` (seconds on a CPU)."""
    from mtad.train.config import load_config
    from mtad.train.trainer import train_run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train_run(tiny_synth, out, load_config("tiny", epochs=3, seed=0), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tiny_synth, tmp_path_factory) -> Path:
    """FP32 + FP16 + INT8 bundle of ``tiny_run``, INT8 calibrated on ``tiny_synth``."""
    from mtad.export.bundle_writer import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(tiny_run, out, fp16=True, int8=True, calib_data=tiny_synth, calib_windows=128, progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def scorer(tiny_bundle):
    """The torch-free edge scorer on ``tiny_bundle``'s FP32 ONNX model (CPU)."""
    from mtad.edge_runtime.bundle import load_bundle
    from mtad.edge_runtime.pipeline import EdgeScorer

    bundle = load_bundle(tiny_bundle)
    return EdgeScorer(bundle, bundle.onnx_runner("fp32", "CPUExecutionProvider"))
