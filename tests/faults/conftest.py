"""Fault injection: a small bundle exported once per session, and a tally of what was tried.

The tally is printed at the end of the run and written to ``faults-summary.json`` in pytest's
base temp folder (the README's figures come from it).
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

TALLY: Counter = Counter()
_SUMMARY: dict = {}


@pytest.fixture(scope="session")
def fault_bundle(tiny_run, tmp_path_factory):
    """FP32 + FP16 bundle of the tiny run (no INT8: calibration would cost most of the budget)."""
    from mtad.export.bundle_writer import export_bundle

    out = tmp_path_factory.mktemp("fault-bundles") / "base"
    export_bundle(tiny_run, out, fp16=True, progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def fault_clip(tiny_synth):
    return sorted((tiny_synth / "fan" / "test").glob("*.wav"))[0]


@pytest.fixture(scope="session", autouse=True)
def _write_summary(tmp_path_factory):
    yield
    if TALLY:
        _SUMMARY.update(sorted(TALLY.items()))
        path = tmp_path_factory.getbasetemp() / "faults-summary.json"
        path.write_text(json.dumps(_SUMMARY, indent=1))
        _SUMMARY["written_to"] = str(path)


def pytest_terminal_summary(terminalreporter):
    if TALLY:
        terminalreporter.write_line("fault injection: " + ", ".join(f"{k} {v}" for k, v in sorted(TALLY.items())))


@pytest.fixture(scope="session")
def scorer(fault_bundle):
    """The torch-free edge scorer on ``fault_bundle`` (FP32 ONNX on the CPU); under tests/faults
    it stands in for the suite-wide ``scorer`` on ``tiny_bundle``."""
    from mtad.edge_runtime.bundle import load_bundle
    from mtad.edge_runtime.pipeline import EdgeScorer

    bundle = load_bundle(fault_bundle)
    return EdgeScorer(bundle, bundle.onnx_runner("fp32", "CPUExecutionProvider"))
