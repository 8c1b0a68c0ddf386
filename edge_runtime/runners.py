"""Inference runners with one interface: ``infer(batch (N, n_mels, T)) -> (prediction, logits, embedding)``.

Builders (export, engine build) are elsewhere; runners only load and run artifacts.
"""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path

import numpy as np

from .errors import BundleError, MtadError


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class OnnxRuntimeMissing(MtadError):
    """Neither onnxruntime nor onnxruntime-gpu is importable."""


def import_onnxruntime():
    """``onnxruntime``, or one line naming what to install (the package is an extra, so that a
    Jetson's own onnxruntime-gpu from JetPack is never replaced)."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxRuntimeMissing(
            "ONNX Runtime is not installed: `pip install 'mtad[cpu]'` (CPU), `pip install 'mtad[gpu]'` (CUDA on x86), "
            "or on a Jetson NVIDIA's onnxruntime-gpu wheel for your JetPack before `pip install mtad`"
        ) from None
    return onnxruntime


# CPU features that give ONNX Runtime's fused Q/DQ kernels exact int8 dot products:
# x86 VNNI/AMX (/proc/cpuinfo "flags"), aarch64 SDOT/UDOT and I8MM ("Features").
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def int8_dot_features(cpuinfo: str | None = None) -> list[str]:
    """The int8 dot-product features of this CPU (``cpuinfo``: text of /proc/cpuinfo, for tests).

    Without /proc/cpuinfo, Apple silicon (which always has dot products) counts as ``asimddp``.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            import platform
            import sys

            return ["asimddp"] if sys.platform == "darwin" and platform.machine() == "arm64" else []
    words = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            words.update(value.split())
    return [f for f in INT8_DOT_FLAGS if f in words]


@functools.lru_cache(maxsize=1)
def cpu_int8_features() -> tuple[str, ...]:
    return tuple(int8_dot_features())


def has_qdq(model_path: Path) -> bool:
    """Whether an ONNX file holds QuantizeLinear/DequantizeLinear nodes, without the onnx package:
    op types are stored as plain strings in the protobuf (a float model could name a node so,
    which ours do not), so a byte search is exact enough and takes milliseconds."""
    data = Path(model_path).read_bytes()
    return b"DequantizeLinear" in data or b"QuantizeLinear" in data


def choose_optimization_level(qdq: bool, reduce_range: bool = False, int8_features=()) -> tuple[str, str]:
    """ONNX Runtime CPU graph optimisation level, and why: ``("ALL" | "BASIC", reason)``.

    At EXTENDED/ALL, ORT fuses Q/DQ pairs into u8s8 integer kernels. On x86 without VNNI those
    use VPMADDUBSW, which adds pairs of u8*s8 products in saturating int16: with full 8-bit
    weights the sums overflow and the logits come out wrong (measured: argmax agreement 56%).
    Weights quantised with ``reduce_range`` (7 bit) cannot overflow; with dot-product
    instructions (VNNI, aarch64 SDOT/I8MM) the integer kernels are exact and fast. Otherwise we
    stay at BASIC, which keeps Q/DQ as float-simulated quantisation: the expected INT8 error,
    at float speed. A model without Q/DQ always gets ALL.
    """
    if not qdq:
        return "ALL", "no Q/DQ nodes"
    if int8_features:
        return "ALL", f"Q/DQ, CPU has {'/'.join(int8_features)}"
    if reduce_range:
        return "ALL", "Q/DQ with 7-bit weights"
    return "BASIC", "Q/DQ, CPU has no int8 dot product: float-simulated"


def int8_cpu_optimization_level(reduce_range: bool):
    """ORT level for an INT8 Q/DQ model on this CPU (see :func:`choose_optimization_level`)."""
    ort = import_onnxruntime()
    level, _ = choose_optimization_level(True, reduce_range, cpu_int8_features())
    return getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")


def available_ort_providers() -> list[str]:
    return import_onnxruntime().get_available_providers()


class OnnxRuntimeRunner:
    """ONNX Runtime session over one ONNX variant; built once, reused for every window."""

    backend = "onnxruntime"

    def __init__(self, model_path: Path, precision: str = "fp32", provider: str = "auto", threads: int = 0, reduce_range: bool = False,
                 qdq: bool | None = None):
        """``qdq``: whether the model holds Q/DQ nodes (the bundle manifest says; None: look in the file)."""
        ort = import_onnxruntime()

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
        if providers[0] == "CPUExecutionProvider":
            qdq = has_qdq(model_path) if qdq is None else qdq
            level, self.optimization_reason = choose_optimization_level(qdq, reduce_range, cpu_int8_features())
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
        else:
            self.optimization_reason = "GPU provider"
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
        return (f"onnxruntime/{self.provider.replace('ExecutionProvider', '')}/{self.precision} "
                f"(opt {self.optimization_level}: {self.optimization_reason})")


class NoModelRunner:
    """Stands in for a runner when the bundle's scores need no model (``--components acoustic``):
    the device then loads no ONNX session or engine and runs no inference."""

    backend = "none"
    precision = "none"
    name = "model-free"  # what parity, reference and enrolled scores of a model-free bundle are keyed by

    def infer(self, batch: np.ndarray):
        raise RuntimeError("NoModelRunner.infer called: a model-free bundle must not run inference (a bug, not bad input)")

    __call__ = infer

    def describe(self) -> str:
        return "none (the bundle's scores are model-free: no inference)"
