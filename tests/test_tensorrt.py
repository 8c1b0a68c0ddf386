"""TensorRT engine build and run. Runs where TensorRT, cuda-python and a GPU exist."""

import numpy as np
import pytest

from mtad.edge_runtime.tensorrt_runner import TensorRTUnavailable, require_tensorrt

try:
    require_tensorrt()
    _REASON = None
except TensorRTUnavailable as exc:
    _REASON = f"TensorRT path not testable here: {exc}"

pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def test_engine_build_matches_onnx_and_is_keyed(tiny_bundle, tmp_path):
    from mtad.edge_runtime.bundle import load_bundle
    from mtad.edge_runtime.errors import BundleError
    from mtad.edge_runtime.tensorrt_runner import TensorRTRunner
    from mtad.edge_runtime.tensorrt_build import build_engine

    bundle = load_bundle(tiny_bundle)
    x = np.random.default_rng(0).standard_normal((4, 128, bundle.window)).astype(np.float32)
    ref = bundle.onnx_runner("fp32", "CPUExecutionProvider").infer(x)[1]
    for precision, tol in (("fp16", 0.05), ("int8", 1.0)):
        engine = tmp_path / f"{precision}.engine"
        key = build_engine(tiny_bundle / "models" / f"{precision}.onnx", engine, precision, bundle.window, 128)
        logits = TensorRTRunner(engine, precision, key).infer(x)[1]
        assert np.abs(logits - ref).max() < tol
    with pytest.raises(BundleError, match="another device"):
        TensorRTRunner(engine, "int8", {**key, "gpu": "some other GPU"})
