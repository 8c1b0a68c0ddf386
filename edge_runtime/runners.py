"""Inference runners with one interface: ``infer(batch (N, n_mels, T)) -> (prediction, logits, embedding)``.

Builders (export, engine build) are elsewhere; runners only load and run artifacts.
"""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import BundleError


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Runner(Protocol):
    backend: str
    precision: str

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, ...]: ...


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI int8 dot products (AVX512-VNNI or AVX-VNNI)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def int8_cpu_optimization_level(reduce_range: bool):
    """Graph optimisation level for an INT8 Q/DQ model on ONNX Runtime's CPU provider.

    At EXTENDED/ALL, ORT fuses Q/DQ pairs into u8s8 integer kernels. On x86 without VNNI
    those use VPMADDUBSW, which adds pairs of u8*s8 products in saturating int16: with
    full 8-bit weights the sums overflow and the logits come out wrong (measured: argmax
    agreement 56%). Weights quantised with ``reduce_range`` (7 bit) cannot overflow; for
    full-range weights (what TensorRT wants) we stay at BASIC, which keeps Q/DQ as
    float-simulated quantisation and gives the expected INT8 error.
    """
    import onnxruntime as ort

    if reduce_range or cpu_has_vnni():
        return ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def available_ort_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


class OnnxRuntimeRunner:
    """ONNX Runtime session over one ONNX variant; built once, reused for every window."""

    backend = "onnxruntime"

    def __init__(self, model_path: Path, precision: str = "fp32", provider: str = "auto", threads: int = 0, reduce_range: bool = False):
        import onnxruntime as ort

        self.precision = Precision(precision).value
        available = ort.get_available_providers()
        order = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        if provider == "auto":
            providers = [p for p in order if p in available]
        else:
            if provider not in available:
                raise BundleError(f"ONNX Runtime provider {provider} is not available here (have: {', '.join(available)})")
            providers = [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        if self.precision == "int8" and providers[0] == "CPUExecutionProvider":
            so.graph_optimization_level = int8_cpu_optimization_level(reduce_range)
        self.optimization_level = str(so.graph_optimization_level).rsplit(".", 1)[-1]
        try:
            self.session = ort.InferenceSession(str(model_path), so, providers=providers)
        except Exception as exc:
            raise BundleError(f"{model_path}: ONNX Runtime cannot load this model ({str(exc).splitlines()[0][:200]})") from None
        self.provider = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(prediction, logits)``, plus ``embedding`` where the model has one (bundles since 0.2)."""
        return tuple(self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}))

    __call__ = infer

    def describe(self) -> str:
        return f"onnxruntime/{self.provider.replace('ExecutionProvider', '')}/{self.precision} (opt {self.optimization_level})"
