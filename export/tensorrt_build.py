"""Engines for a bundle being exported (the builder itself lives in the edge runtime)."""

from __future__ import annotations

from pathlib import Path

from mtad.edge_runtime.tensorrt_build import EngineBuildError, build_engine
from mtad.edge_runtime.tensorrt_runner import engine_key, require_tensorrt

__all__ = ["EngineBuildError", "build_engine", "build_engines_into", "engine_key", "require_tensorrt"]


def build_engines_into(bundle_dir: Path, variants: dict, model_cfg, log=print) -> dict:
    """Build an engine for each ONNX variant of a bundle being written; returns new variants."""
    out = {}
    (bundle_dir / "engines").mkdir(exist_ok=True)
    for name, v in list(variants.items()):
        if v["kind"] != "onnx":
            continue
        engine = bundle_dir / "engines" / f"{name}.engine"
        key = build_engine(bundle_dir / v["file"], engine, v["precision"], model_cfg.window, model_cfg.n_mels, log=log)
        out[f"trt-{name}"] = {"precision": v["precision"], "kind": "tensorrt", "file": f"engines/{name}.engine", "engine_key": key}
    return out
