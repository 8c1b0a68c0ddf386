"""TensorRT runner logic (chunking, shape checks, engine keys) against a stand-in for the
``tensorrt`` and ``cuda-python`` modules, so it runs without TensorRT or a GPU.

The stand-in follows TensorRT 10's Python API: ``set_input_shape`` returns False outside the
optimisation profile, ``get_tensor_profile_shape`` gives (min, opt, max), ``execute_async_v3``
runs on whatever the tensor addresses point to. "Device" memory is host memory here.
"""

import ctypes
import json
import sys
import types

import numpy as np
import pytest

from mtad.edge_runtime.errors import BundleError, MtadError

N_MELS, WINDOW, K, E = 6, 10, 3, 4


def _array_at(ptr: int, shape, dtype=np.float32) -> np.ndarray:
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * n).from_address(ptr), dtype=dtype).reshape(shape)


def model(x: np.ndarray):
    """What the fake engine computes: prediction, logits, embedding."""
    return 2 * x, x.mean(axis=2)[:, :K], np.repeat(x.sum(axis=(1, 2))[:, None], E, axis=1)


class FakeContext:
    def __init__(self, engine):
        self.engine, self.shape, self.addr, self.shapes_set = engine, None, {}, []

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile
        ok = len(shape) == 3 and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
        if ok:
            self.shape = tuple(shape)
            self.shapes_set.append(self.shape)
        return ok

    def get_tensor_shape(self, name):
        if self.shape is None:
            return (-1, N_MELS, WINDOW)
        n = self.shape[0]
        shapes = {"prediction": self.shape, "logits": (n, K), "embedding": (n, E)}
        if self.engine.broken_output:
            shapes["logits"] = (n + 1, K)
        return shapes[name]

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def execute_async_v3(self, stream):
        outs = model(_array_at(self.addr["x"], self.shape).copy())
        for name, out in zip(("prediction", "logits", "embedding"), outs):
            out = np.ascontiguousarray(out, dtype=np.float32)
            ctypes.memmove(self.addr[name], out.ctypes.data, out.nbytes)
        return True


class FakeEngine:
    names = ["x", "logits", "prediction", "embedding"]  # not in ORT's order on purpose

    def __init__(self, max_batch, broken_output=False):
        self.profile = ((1, N_MELS, WINDOW), (min(8, max_batch), N_MELS, WINDOW), (max_batch, N_MELS, WINDOW))
        self.broken_output = broken_output
        self.num_io_tensors = len(self.names)
        self.contexts = []

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "in" if name == "x" else "out"

    def get_tensor_dtype(self, name):
        return np.float32

    def get_tensor_profile_shape(self, name, profile):
        assert name == "x" and profile == 0
        return [list(s) for s in self.profile]

    def create_execution_context(self):
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def fake_tensorrt(version="10.3.0"):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda dt: dt

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            spec = json.loads(data)  # a fake engine file holds its own settings
            return FakeEngine(spec["max_batch"], spec.get("broken_output", False)) if spec else None

    trt.Runtime = Runtime
    return trt


def fake_cudart(gpu=b"Fake GPU"):
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.memory = {}

    def malloc(n):
        buf = np.zeros(n, np.uint8)
        rt.memory[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    rt.cudaMalloc = malloc
    rt.cudaFree = lambda ptr: (rt.memory.pop(ptr, None), 0)[1:]
    rt.cudaMemcpyAsync = lambda dst, src, n, kind, stream: (ctypes.memmove(dst, src, n), 0)[1:]
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.cudaStreamCreate = lambda: (0, 1)
    rt.cudaStreamSynchronize = lambda stream: (0,)
    rt.cudaGetDeviceCount = lambda: (0, 1)
    rt.cudaGetDeviceProperties = lambda i: (0, types.SimpleNamespace(name=gpu, major=8, minor=7))
    return rt


@pytest.fixture
def fake_trt(monkeypatch):
    """Install the stand-ins; returns a function to swap the GPU or TensorRT version."""

    def install(version="10.3.0", gpu=b"Fake GPU"):
        rt = fake_cudart(gpu)
        cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        cuda.bindings, bindings.runtime = bindings, rt
        for name, mod in {"tensorrt": fake_tensorrt(version), "cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt}.items():
            monkeypatch.setitem(sys.modules, name, mod)
        return rt

    install()
    return install


@pytest.fixture
def engine_files(tmp_path, fake_trt):
    """A bundle-like layout: models/fp32.onnx and engines/fp32.engine with its key file."""
    from mtad.edge_runtime.tensorrt_runner import engine_key

    (tmp_path / "models").mkdir()
    (tmp_path / "engines").mkdir()
    onnx = tmp_path / "models" / "fp32.onnx"
    onnx.write_bytes(b"pretend onnx")
    engine = tmp_path / "engines" / "fp32.engine"

    def write(max_batch=32, **spec):
        engine.write_bytes(json.dumps({"max_batch": max_batch, **spec}).encode())
        engine.with_suffix(".key.json").write_text(json.dumps(engine_key(onnx, engine)))
        return engine

    write.onnx = onnx
    return write


def test_batch_chunks_cover_every_window_once():
    from mtad.edge_runtime.tensorrt_runner import batch_chunks

    assert [(s.start, s.stop) for s in batch_chunks(70, 32)] == [(0, 32), (32, 64), (64, 70)]
    assert [(s.start, s.stop) for s in batch_chunks(32, 32)] == [(0, 32)]
    assert [(s.start, s.stop) for s in batch_chunks(3, 1)] == [(0, 1), (1, 2), (2, 3)]
    assert batch_chunks(0, 8) == []
    with pytest.raises(ValueError):
        batch_chunks(5, 0)


def test_runner_chunks_a_long_clip_to_the_profile_max_batch(engine_files, rng):
    from mtad.edge_runtime.tensorrt_runner import TensorRTRunner

    runner = TensorRTRunner(engine_files(max_batch=32), "fp32")
    x = rng.standard_normal((70, N_MELS, WINDOW)).astype(np.float32)  # > 35 s of windows under `small`
    out = runner.infer(x)
    assert [c[0] for c in runner.engine.contexts[0].shapes_set] == [32, 32, 6]
    assert len(out) == 3  # prediction, logits, embedding, in the ONNX order whatever the engine's order
    for got, want in zip(out, model(x)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert runner.max_batch == 32 and "max batch 32" in runner.describe()


def test_runner_checks_set_input_shape_and_output_shapes(engine_files, rng):
    from mtad.edge_runtime.tensorrt_runner import TensorRTRunner

    runner = TensorRTRunner(engine_files(max_batch=8), "fp32")
    with pytest.raises(MtadError, match=r"refused input shape \(2, 6, 12\).*\(1, 6, 10\) to \(8, 6, 10\)"):
        runner.infer(rng.standard_normal((2, N_MELS, WINDOW + 2)).astype(np.float32))
    broken = TensorRTRunner(engine_files(max_batch=8, broken_output=True), "fp32")
    with pytest.raises(MtadError, match="unexpected output shapes.*logits"):
        broken.infer(rng.standard_normal((3, N_MELS, WINDOW)).astype(np.float32))


def test_engine_key_names_its_onnx_and_refuses_a_stale_engine(engine_files):
    from mtad.edge_runtime.hashing import sha256_file
    from mtad.edge_runtime.tensorrt_runner import TensorRTRunner

    engine = engine_files()
    key = json.loads(engine.with_suffix(".key.json").read_text())
    assert key["onnx_file"] == "../models/fp32.onnx" and key["onnx_sha256"] == sha256_file(engine_files.onnx)
    assert key["gpu"] == "Fake GPU" and key["tensorrt_version"] == "10.3.0"
    TensorRTRunner(engine, "fp32")  # fresh: accepted
    engine_files.onnx.write_bytes(b"re-exported onnx")
    with pytest.raises(BundleError, match="stale: fp32.onnx changed.*rebuild with mtad-edge build-engine"):
        TensorRTRunner(engine, "fp32")
    with pytest.raises(BundleError, match="names no ONNX.*rebuild with mtad-edge build-engine"):
        TensorRTRunner(engine, "fp32", key={k: v for k, v in key.items() if k != "onnx_file"})
    engine_files.onnx.unlink()
    with pytest.raises(BundleError, match="missing; rebuild with mtad-edge build-engine"):
        TensorRTRunner(engine, "fp32")


def test_engine_for_another_gpu_or_tensorrt_is_refused(engine_files, fake_trt):
    from mtad.edge_runtime.tensorrt_runner import TensorRTRunner

    engine = engine_files()
    fake_trt(gpu=b"Orin")
    with pytest.raises(BundleError, match="another device.*gpu: engine 'Fake GPU', here 'Orin'.*rebuild with mtad-edge build-engine"):
        TensorRTRunner(engine, "fp32")
    fake_trt(version="10.7.0")
    with pytest.raises(BundleError, match="tensorrt_version: engine '10.3.0', here '10.7.0'"):
        TensorRTRunner(engine, "fp32")
    engine.with_suffix(".key.json").unlink()
    with pytest.raises(BundleError, match="no key file"):
        TensorRTRunner(engine, "fp32")
