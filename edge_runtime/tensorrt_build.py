"""TensorRT engine building on the device or workstation (TensorRT >= 10: strongly typed).

Engines are not portable across GPUs or TensorRT versions, so each is saved with a key of
(ONNX sha256, TensorRT version, GPU name, compute capability) and refused elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_write
from .bundle_schema import engine_digest
from .errors import MtadError
from .tensorrt_runner import engine_key, gpu_info, require_tensorrt


class EngineBuildError(MtadError):
    """TensorRT could not build an engine."""


def build_engine(onnx_path: Path, engine_path: Path, precision: str, window: int, n_mels: int, max_batch: int = 32, log=print) -> dict:
    """Parse ``onnx_path`` and serialise an engine for this GPU; returns its key record.

    The engine and its key file (``engine_path`` with ``.key.json``) are written atomically,
    the old key removed first: a crash leaves no engine paired with a key it does not match.
    The profile admits 1 to ``max_batch`` windows; the runner chunks longer clips.

    On TensorRT >= 10 the network is strongly typed: precision comes from the ONNX itself
    (FP16 tensors, INT8 Q/DQ), no builder precision flags. Older TensorRT (8.x on JetPack 5)
    takes the builder-flag path. ``--fp16`` on a GPU without fast FP16 is an error.
    """
    if max_batch < 1:
        raise EngineBuildError(f"max batch must be >= 1, got {max_batch}")
    trt = require_tensorrt()
    info = gpu_info()
    major = int(trt.__version__.split(".")[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if precision == "fp16" and not builder.platform_has_fast_fp16:
        raise EngineBuildError(f"{info['name']} has no fast FP16; refusing to build an FP16 engine (it would silently run FP32)")
    if precision == "int8" and not builder.platform_has_fast_int8:
        raise EngineBuildError(f"{info['name']} has no fast INT8; refusing to build an INT8 engine")
    flags = 0
    if major >= 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    else:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    if major < 10:  # legacy path: precision from builder flags
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ in the ONNX supplies the scales
            config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, (1, n_mels, window), (min(8, max_batch), n_mels, window), (max_batch, n_mels, window))
    config.add_optimization_profile(profile)
    log(f"tensorrt {trt.__version__}: building {precision} engine for {info['name']} (sm_{info['compute_capability'].replace('.', '')})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build the {precision} engine from {onnx_path.name}")
    key = {**engine_key(onnx_path, engine_path), "max_batch": int(max_batch), **engine_digest(bytes(serialized))}  # load_bundle checks it
    key_path = Path(engine_path).with_suffix(".key.json")
    key_path.unlink(missing_ok=True)
    with atomic_write(engine_path) as f:
        f.write(bytes(serialized))
    with atomic_write(key_path, "w") as f:
        f.write(json.dumps(key, indent=1))
    return key
