"""Native TensorRT engine runner (optional: needs the ``tensorrt`` extra, cuda-python and a GPU).

Engines are tied to their ONNX, a GPU and a TensorRT version; each carries a key file and is
refused wherever its key differs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .errors import BundleError, MtadError
from .hashing import sha256_file

REBUILD = "rebuild with mtad-edge build-engine"
OUTPUT_ORDER = ("prediction", "logits", "embedding")  # the ONNX outputs, in the order ORT returns them


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


def engine_key(onnx_path: Path, engine_path: Path | None = None) -> dict:
    """What an engine depends on: its ONNX (by sha256), the TensorRT version, the GPU.

    With ``engine_path``, the key also names the ONNX relative to the engine, so a runner
    given only the engine can re-hash the ONNX it came from.
    """
    import tensorrt as trt

    info = gpu_info()
    key = {
        "onnx_sha256": sha256_file(onnx_path),
        "tensorrt_version": trt.__version__,
        "gpu": info["name"],
        "compute_capability": info["compute_capability"],
    }
    if engine_path is not None:
        key["onnx_file"] = os.path.relpath(Path(onnx_path).resolve(), Path(engine_path).resolve().parent)
    return key


def key_mismatches(stored: dict, here: dict) -> list[str]:
    """``'field: engine X, here Y'`` for every field of ``here`` the stored key does not match."""
    return [f"{k}: engine {stored.get(k)!r}, here {v!r}" for k, v in here.items() if stored.get(k) != v]


def check_engine_key(stored: dict, onnx_path: Path | None = None) -> None:
    """Refuse an engine built from another ONNX, or for another GPU or TensorRT version."""
    import tensorrt as trt

    if onnx_path is None:
        raise BundleError(f"TensorRT engine key names no ONNX file to check it against; {REBUILD}")
    if not Path(onnx_path).is_file():
        raise BundleError(f"TensorRT engine was built from {onnx_path}, which is missing; {REBUILD}")
    if stored.get("onnx_sha256") != sha256_file(onnx_path):
        raise BundleError(f"TensorRT engine is stale: {Path(onnx_path).name} changed since it was built; {REBUILD}")
    info = gpu_info()
    here = {"tensorrt_version": trt.__version__, "gpu": info["name"], "compute_capability": info["compute_capability"]}
    diffs = key_mismatches(stored, here)
    if diffs:
        raise BundleError("TensorRT engine was built for another device (" + "; ".join(diffs) + f"); {REBUILD}")


def batch_chunks(n: int, max_batch: int) -> list[slice]:
    """Slices of at most ``max_batch`` rows covering ``range(n)`` in order."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return [slice(i, min(i + max_batch, n)) for i in range(0, n, max_batch)]


class TensorRTRunner:
    """Runs a serialised engine: ``infer(batch (N, n_mels, T)) -> (prediction, logits[, embedding])``.

    ``N`` may exceed the optimisation profile's largest batch: the windows are run in chunks.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: Path, precision: str, key: dict | None = None, onnx_path: Path | None = None):
        trt = require_tensorrt()
        self.cudart = _cudart()
        self.precision = precision
        engine_path = Path(engine_path)
        key_path = engine_path.with_suffix(".key.json")
        if key is None:
            if not key_path.is_file():
                raise BundleError(f"{engine_path}: no key file {key_path.name}; {REBUILD}")
            key = json.loads(key_path.read_text())
        if onnx_path is None and key.get("onnx_file"):
            onnx_path = engine_path.parent / key["onnx_file"]
        check_engine_key(key, onnx_path)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BundleError(f"{engine_path}: TensorRT could not deserialise this engine; {REBUILD}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise BundleError(f"{engine_path}: expected one input tensor, engine has {inputs}; {REBUILD}")
        self.input = inputs[0]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        missing = [n for n in OUTPUT_ORDER[:2] if n not in self.outputs]
        if missing:
            raise BundleError(f"{engine_path}: engine lacks output(s) {missing} (has {self.outputs}); {REBUILD}")
        self.outputs = [n for n in OUTPUT_ORDER if n in self.outputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        lo, _, hi = (tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape(self.input, 0))
        self.profile_min, self.profile_max = lo, hi
        self.max_batch = hi[0]
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

    def _run_chunk(self, x: np.ndarray) -> list[np.ndarray]:
        h2d = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if not self.context.set_input_shape(self.input, x.shape):
            raise MtadError(f"TensorRT refused input shape {x.shape}: the engine's profile allows {self.profile_min} to "
                            f"{self.profile_max} (window or n_mels differ from the bundle's? {REBUILD})")
        n = x.shape[0]
        shapes = {name: tuple(int(d) for d in self.context.get_tensor_shape(name)) for name in self.outputs}
        bad = {name: s for name, s in shapes.items() if not s or s[0] != n or min(s) < 0}
        if shapes["prediction"] != x.shape:
            bad["prediction"] = shapes["prediction"]
        if bad:
            raise MtadError(f"TensorRT gave unexpected output shapes {bad} for input {x.shape}; {REBUILD}")
        ptr = self._device_buffer(self.input, x.nbytes)
        _check(self.cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self.stream))
        self.context.set_tensor_address(self.input, ptr)
        host = {}
        for name in self.outputs:
            host[name] = np.empty(shapes[name], self.dtypes[name])
            self.context.set_tensor_address(name, self._device_buffer(name, host[name].nbytes))
        if not self.context.execute_async_v3(self.stream):
            raise MtadError("TensorRT execution failed")
        for name in self.outputs:
            _check(self.cudart.cudaMemcpyAsync(host[name].ctypes.data, self._buffers[name][0], host[name].nbytes, d2h, self.stream))
        _check(self.cudart.cudaStreamSynchronize(self.stream))
        return [host[name].astype(np.float32, copy=False) for name in self.outputs]

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(prediction, logits[, embedding])`` for ``batch``, run in chunks of the profile's max batch."""
        x = np.ascontiguousarray(batch, dtype=self.dtypes[self.input])
        parts = [self._run_chunk(np.ascontiguousarray(x[s])) for s in batch_chunks(len(x), self.max_batch)]
        return tuple(np.concatenate(outs) if len(outs) > 1 else outs[0] for outs in zip(*parts))

    __call__ = infer

    def describe(self) -> str:
        return f"tensorrt/{self.precision} (max batch {self.max_batch})"

    def __del__(self):
        for ptr, _ in getattr(self, "_buffers", {}).values():
            self.cudart.cudaFree(ptr)
