from pathlib import Path

import pytest

from ..conftest import TINY_TYPES


@pytest.fixture(scope="session")
def tiny_val(tmp_path_factory) -> Path:
    """Labelled validation clips for the tiny run's machines, in their own root: ``<type>/val/``,
    3 normal + 3 anomalous per id (``mtad-synth --val 3`` with no train or test clips)."""
    from mtad.train.synth import SynthConfig
    from mtad.train.synth_writer import write_dataset

    out = tmp_path_factory.mktemp("val")
    write_dataset(SynthConfig(types=TINY_TYPES, ids=4, train=0, test=0, val=3, seconds=3.0, seed=7), out, workers=2, progress=False)
    return out
