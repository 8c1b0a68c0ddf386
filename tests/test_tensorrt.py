"""TensorRT engine build and run. Runs where TensorRT, cuda-python and a GPU exist; elsewhere
it skips with the reason (the runner's logic is covered by test_tensorrt_logic.py)."""

import json
import shutil

import numpy as np
import pytest

from mtad.edge_runtime.tensorrt_runner import TensorRTUnavailable, require_tensorrt

try:
    require_tensorrt()
    _REASON = None
except TensorRTUnavailable as exc:
    _REASON = f"TensorRT path not testable here: {exc}"

pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

# Max |engine - ORT on the same ONNX| over the output's standard deviation. The engine runs the
# same graph (FP16 tensors, INT8 Q/DQ scales) as ORT, so only kernel rounding differs; FP32
# allows for TF32 matmuls, INT8 for int32-accumulated vs float-simulated Q/DQ.
TOLERANCE = {"fp32": 5e-3, "fp16": 2e-2, "int8": 5e-2}


def test_engine_matches_onnx_per_precision_chunks_and_is_keyed(tiny_bundle, tmp_path):
    from mtad.edge_runtime.bundle import load_bundle
    from mtad.edge_runtime.errors import BundleError
    from mtad.edge_runtime.tensorrt_build import build_engine
    from mtad.edge_runtime.tensorrt_runner import TensorRTRunner

    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, root)
    bundle = load_bundle(root)
    n_mels = int(bundle.manifest["model_config"]["n_mels"])
    x = np.random.default_rng(0).standard_normal((11, n_mels, bundle.window)).astype(np.float32)
    (root / "engines").mkdir()
    for precision, tol in TOLERANCE.items():
        ref = bundle.onnx_runner(precision, "CPUExecutionProvider").infer(x)
        engine = root / "engines" / f"{precision}.engine"
        build_engine(root / "models" / f"{precision}.onnx", engine, precision, bundle.window, n_mels, max_batch=4)
        runner = TensorRTRunner(engine, precision)
        out = runner.infer(x)  # 11 windows through a profile of at most 4: chunks of 4, 4, 3
        assert runner.max_batch == 4 and len(out) == len(ref)
        for name, got, want in zip(("prediction", "logits", "embedding"), out, ref):
            assert got.shape == want.shape, name
            err = float(np.abs(got - want).max() / (want.std() + 1e-12))
            assert err < tol, f"{precision} {name}: max error {err:.2e} of the output's std (tolerance {tol})"
    key = (root / "engines" / "int8.key.json").read_text()
    with pytest.raises(BundleError, match="another device.*rebuild with mtad-edge build-engine"):
        TensorRTRunner(engine, "int8", {**json.loads(key), "gpu": "some other GPU"})
    (root / "models" / "int8.onnx").write_bytes((root / "models" / "fp32.onnx").read_bytes())  # the ONNX changed
    with pytest.raises(BundleError, match="stale.*rebuild with mtad-edge build-engine"):
        TensorRTRunner(engine, "int8")
