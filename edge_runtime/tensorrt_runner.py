"""Native TensorRT engine runner (optional: needs the ``tensorrt`` extra, cuda-python and a GPU).

Engines are tied to a GPU and a TensorRT version; each carries a key file and is refused on
any device whose key differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import BundleError, MtadError
from .hashing import sha256_file


class TensorRTUnavailable(MtadError):
    """TensorRT, cuda-python or a CUDA GPU is missing."""


def require_tensorrt():
    """Import TensorRT or raise a message naming what to install."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        raise TensorRTUnavailable(
            "TensorRT is not installed: on a Jetson use JetPack's python3-libnvinfer; on x86 `pip install mtad[tensorrt]`"
        ) from None
    gpu_info()  # also needs cuda-python and a visible GPU
    return trt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise TensorRTUnavailable("cuda-python is not installed (`pip install cuda-python`)") from None
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise MtadError(f"CUDA call failed with error {int(err)}")
    return rest[0] if len(rest) == 1 else rest


def gpu_info(device: int = 0) -> dict:
    cudart = _cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise TensorRTUnavailable("no CUDA GPU is visible to this process")
    props = _check(cudart.cudaGetDeviceProperties(device))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"name": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}"}


def engine_key(onnx_path: Path) -> dict:
    """What an engine depends on: its ONNX, the TensorRT version, the GPU."""
    import tensorrt as trt

    info = gpu_info()
    return {
        "onnx_sha256": sha256_file(onnx_path),
        "tensorrt_version": trt.__version__,
        "gpu": info["name"],
        "compute_capability": info["compute_capability"],
    }


def check_engine_key(stored: dict) -> None:
    """Refuse an engine built for another GPU or TensorRT version."""
    import tensorrt as trt

    info = gpu_info()
    here = {"tensorrt_version": trt.__version__, "gpu": info["name"], "compute_capability": info["compute_capability"]}
    diffs = [f"{k}: engine {stored.get(k)!r}, device {v!r}" for k, v in here.items() if stored.get(k) != v]
    if diffs:
        raise BundleError("TensorRT engine was built for another device (" + "; ".join(diffs) + "); rebuild it with `mtad-edge build-engine`")


class TensorRTRunner:
    """Runs a serialised engine: ``infer(batch (N, n_mels, T)) -> (prediction, logits[, embedding])``."""

    backend = "tensorrt"

    def __init__(self, engine_path: Path, precision: str, key: dict | None = None):
        trt = require_tensorrt()
        self.cudart = _cudart()
        self.precision = precision
        key = key or json.loads(Path(engine_path).with_suffix(".key.json").read_text())
        check_engine_key(key)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise BundleError(f"{engine_path}: TensorRT could not deserialise this engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.stream = _check(self.cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        h2d = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        x = np.ascontiguousarray(batch, dtype=self.dtypes[self.inputs[0]])
        self.context.set_input_shape(self.inputs[0], x.shape)
        ptr = self._device_buffer(self.inputs[0], x.nbytes)
        _check(self.cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self.stream))
        self.context.set_tensor_address(self.inputs[0], ptr)
        host = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            host[name] = np.empty(shape, self.dtypes[name])
            self.context.set_tensor_address(name, self._device_buffer(name, host[name].nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise MtadError("TensorRT execution failed")
        for name in self.outputs:
            _check(self.cudart.cudaMemcpyAsync(host[name].ctypes.data, self._buffers[name][0], host[name].nbytes, d2h, self.stream))
        _check(self.cudart.cudaStreamSynchronize(self.stream))
        outs = [host[n].astype(np.float32, copy=False) for n in ("prediction", "logits", "embedding") if n in host]
        return outs[0], outs[1]

    __call__ = infer

    def describe(self) -> str:
        return f"tensorrt/{self.precision}"

    def __del__(self):
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self.cudart.cudaFree(ptr)
