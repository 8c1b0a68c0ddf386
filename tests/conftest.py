from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# Keep the feature cache of test runs out of the user's ~/.cache.
os.environ.setdefault("MTAD_CACHE", str(Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / f"mtad-test-cache-{os.getuid()}"))
SHARED_DATA = Path(os.environ.get("MTAD_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_data(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real MIMII clips not found at {path} (set MTAD_SHARED_DATA)")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory) -> Path:
    """A small synthetic set (2 types x 2 ids, short clips), written once per session."""
    from mtad.train.synth import SynthConfig
    from mtad.train.synth_writer import write_dataset

    out = tmp_path_factory.mktemp("synth")
    write_dataset(SynthConfig(types=("fan", "valve"), ids=2, train=6, test=3, seconds=3.0, seed=7), out, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_synth, tmp_path_factory) -> Path:
    """A tiny multitask run trained on ``tiny_synth`` (seconds on a CPU)."""
    from mtad.train.config import load_config
    from mtad.train.trainer import train_run

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train_run(tiny_synth, out, load_config("tiny", epochs=3, seed=0), progress=False)
    return out
