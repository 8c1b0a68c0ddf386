"""PyTorch -> ONNX (FP32) and the FP16 conversion."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from mtad.train.model import MultitaskModel

INPUT = "logmel"
OUTPUTS = ("prediction", "logits", "embedding")
OPSET = 17  # TensorRT 10's parser takes 9-20; Jetson JetPack 6 ships TensorRT 8.6/10.x


def export_fp32(model: MultitaskModel, path: Path, opset: int = OPSET) -> onnx.ModelProto:
    """Export ``logmel (B, n_mels, T) -> prediction (B, n_mels, T), logits (B, K), embedding (B, E)``.

    Uses the TorchScript exporter: it honours the requested opset and keeps weights inside
    the file (the dynamo exporter silently moves to opset 18 and external data).
    """
    model = model.eval().cpu()
    dummy = torch.zeros(1, model.cfg.n_mels, model.cfg.window)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            dynamic_axes={INPUT: {0: "batch", 2: "frames"}, "prediction": {0: "batch", 2: "frames"}, "logits": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def route_outputs_through_identity(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Give every graph output its own Identity node.

    The FP16 converter with ``keep_io_types`` inserts a Cast on each output; when that
    output tensor is also read inside the graph, ONNX Runtime refuses the result. A private
    Identity per output makes the outputs leaves.
    """
    graph = proto.graph
    for out in graph.output:
        inner = out.name + "_inner"
        for node in graph.node:
            node.output[:] = [inner if o == out.name else o for o in node.output]
            node.input[:] = [inner if i == out.name else i for i in node.input]
        graph.node.append(onnx.helper.make_node("Identity", [inner], [out.name], name=out.name + "_identity"))
    return proto


def convert_fp16(fp32: onnx.ModelProto, keep_fp32_nodes: list[str] | None = None) -> onnx.ModelProto:
    """FP16 weights and compute with float32 inputs/outputs (onnxconverter-common).

    ``keep_fp32_nodes`` (node names) stay in float32 where FP16 error would be too large (see
    accuracy_control); onnxconverter-common's default op block list applies too.
    """
    from onnxconverter_common import float16

    proto = route_outputs_through_identity(onnx.ModelProto.FromString(fp32.SerializeToString()))
    with warnings.catch_warnings():  # it warns for every weight below FP16's range; expected
        warnings.simplefilter("ignore", UserWarning)
        return float16.convert_float_to_float16(proto, keep_io_types=True,
                                                 node_block_list=keep_fp32_nodes or None, disable_shape_infer=False)
