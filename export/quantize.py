"""INT8 ONNX by explicit quantisation: symmetric Q/DQ nodes, per-channel weights,
calibrated on spectrogram windows with onnxruntime.quantization."""

from __future__ import annotations

import tempfile
from enum import Enum
from pathlib import Path

import numpy as np

from mtad.calibration.calibration_set import CalibrationSet, validate_windows
from mtad.edge_runtime.errors import MtadError

from .onnx_export import INPUT

MAC_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
DEFAULT_INT8_FLOOR = 0.80  # fraction of the model's MACs that must run quantised for a file labelled int8


class Int8FloorError(MtadError):
    """An INT8 variant would leave too much of the model's compute in float."""


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
            "reduce_range": reduce_range, "calibration_method": method.value, "excluded_nodes": list(nodes_to_exclude or []),
            **mac_coverage(out_path, calib.windows.shape[2])}


def _shape(value_info) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


def node_macs(proto, window: int) -> dict[str, tuple[str, int]]:
    """Multiply-accumulates per Conv/MatMul/Gemm node for one window (batch 1, ``window`` frames):
    ``name -> (op_type, macs)``, from ONNX Runtime's symbolic shape inference (onnx's own
    cannot follow the causal pads computed from Shape/Gather/Slice)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for inp in proto.graph.input:  # pin the dynamic axes: batch 1, frames = the model window
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if not d.HasField("dim_value"):
                d.dim_value = window if i == len(dims) - 1 else 1
    inferred = SymbolicShapeInference.infer_shapes(proto, auto_merge=True)
    shapes = {v.name: _shape(v) for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    shapes.update({t.name: list(t.dims) for t in inferred.graph.initializer})
    out = {}
    for node in inferred.graph.node:
        if node.op_type not in MAC_OPS:
            continue
        try:
            y, w = shapes[node.output[0]], shapes[node.input[1]]
            if node.op_type in ("Conv", "ConvTranspose"):
                # every output element sums over in-channels/group x kernel: w is (Cout, Cin/g, *k)
                macs = int(np.prod(y)) * int(np.prod(w[1:])) if node.op_type == "Conv" else int(np.prod(shapes[node.input[0]])) * int(np.prod(w[1:]))
            elif node.op_type == "MatMul":
                macs = int(np.prod(y)) * int(shapes[node.input[0]][-1])
            else:  # Gemm: (M, K) x (K, N), either side possibly transposed
                trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
                a = shapes[node.input[0]]
                macs = int(np.prod(y)) * int(a[0] if trans_a else a[-1])
        except KeyError:
            raise MtadError(f"cannot infer the shapes around {node.op_type} node {node.name!r} to count its MACs") from None
        if min(y + w) < 1:
            raise MtadError(f"unresolved shapes around {node.op_type} node {node.name!r}: output {y}, weight {w}")
        out[node.name] = (node.op_type, macs)
    return out


def mac_coverage(path: Path, window: int) -> dict:
    """How much of the model's compute runs quantised: a Conv/MatMul/Gemm counts as INT8 when its
    input and its weight both come from DequantizeLinear (the Q/DQ pattern ORT and TensorRT fuse).

    Returns the fraction of MACs quantised, the total per window, and the layers left in float.
    """
    import onnx

    proto = onnx.load(str(path))
    macs = node_macs(proto, window)
    producer = {o: n.op_type for n in proto.graph.node for o in n.output}
    total = sum(m for _, m in macs.values()) or 1
    quantized, floats = 0, []
    for node in proto.graph.node:
        if node.name not in macs:
            continue
        op, m = macs[node.name]
        if all(producer.get(i) == "DequantizeLinear" for i in node.input[:2]):
            quantized += m
        else:
            floats.append({"name": node.name, "op": op, "mac_fraction": round(m / total, 5)})
    return {"quantized_mac_fraction": round(quantized / total, 5), "macs_per_window": int(total),
            "n_mac_layers": len(macs), "float_layers": floats}


def require_int8_floor(info: dict, floor: float) -> None:
    """Refuse to label a variant int8 when under ``floor`` of its MACs run quantised."""
    frac = info["quantized_mac_fraction"]
    if frac < floor:
        raise Int8FloorError(
            f"refusing to label this model int8: only {frac:.1%} of its MACs are quantised (floor {floor:.0%}; "
            f"{len(info['float_layers'])} of {info['n_mac_layers']} Conv/MatMul/Gemm layers stay float); "
            f"keep fewer layers in float (--int8-exclude, --accuracy-budget) or lower --int8-floor"
        )


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
