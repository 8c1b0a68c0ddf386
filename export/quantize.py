"""INT8 ONNX by explicit quantisation: symmetric Q/DQ nodes, per-channel weights,
calibrated on spectrogram windows with onnxruntime.quantization."""

from __future__ import annotations

import tempfile
from enum import Enum
from pathlib import Path

import numpy as np

from mtad.calibration.calibration_set import CalibrationSet, validate_windows

from .onnx_export import INPUT


class CalibrationMethod(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


def preprocess(fp32_path: Path, out_path: Path) -> Path:
    """onnxruntime's recommended pre-quantisation pass (shape inference, graph clean-up).

    Deterministic: node names in its output are what ``nodes_to_exclude`` refers to.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process


    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=True)
    return out_path


def quantize_int8(
    fp32_path: Path,
    calib: CalibrationSet,
    out_path: Path,
    method: str = "minmax",
    reduce_range: bool = False,
    nodes_to_exclude: list[str] | None = None,
    batch_size: int = 32,
    preprocessed: bool = False,
) -> dict:
    """Write an INT8 Q/DQ model; zero points are all 0 (TensorRT's parser requires symmetric).

    Returns the quantisation settings for the manifest.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization import CalibrationMethod as OrtMethod

    method = CalibrationMethod(method)
    validate_windows(calib.windows, calib.windows.shape[1], calib.windows.shape[2])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calib.batches(batch_size))

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {INPUT: np.ascontiguousarray(batch)}

    ort_method = {"minmax": OrtMethod.MinMax, "entropy": OrtMethod.Entropy, "percentile": OrtMethod.Percentile}[method.value]
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if method is CalibrationMethod.PERCENTILE:
        extra["CalibPercentile"] = 99.99
    with tempfile.TemporaryDirectory() as tmp:
        pre = fp32_path if preprocessed else preprocess(fp32_path, Path(tmp) / "pre.onnx")
        quantize_static(
            str(pre), str(out_path), Reader(),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=True, reduce_range=reduce_range, calibrate_method=ort_method,
            nodes_to_exclude=nodes_to_exclude or [], extra_options=extra,
        )
    return {"format": "QDQ", "activations": "int8 symmetric", "weights": "int8 symmetric per-channel",
            "reduce_range": reduce_range, "calibration_method": method.value, "excluded_nodes": list(nodes_to_exclude or [])}


def qdq_zero_points(path: Path) -> list[int]:
    """Every QuantizeLinear/DequantizeLinear zero point in the model (for checks)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node if n.op_type == "Constant" and n.attribute}
    zps = []
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(node.input) < 3 or not node.input[2]:
                zps.append(0)  # absent zero point means 0
                continue
            zp = inits.get(node.input[2], consts.get(node.input[2]))
            zps += np.asarray(zp).ravel().astype(int).tolist()
    return zps
