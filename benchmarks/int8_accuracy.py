"""INT8 accuracy in earnest (issue #11, item 3): post-training INT8 variants of the trained
``small`` multitask runs, each scored end to end like benchmarks/accuracy.py, against ONNX
Runtime FP32 on the same clips.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/int8_accuracy.py [--seeds 0,1,2] [--variants a,b4,...]

Inputs (made by benchmarks/accuracy.py): the runs ``results/accuracy/runs/seed{S}-multitask`` and
their data ``results/accuracy/data-seed{S}`` (6 types x 3 ids, 40 training normals per id, 50 normal +
50 anomalous test clips per id).

Per seed:
1. FP32 ONNX from the checkpoint (export/onnx_export.py), and onnxruntime's pre-processing
   (export/quantize.py ``preprocess``), exactly as the export does.
2. Calibration windows from the TRAINING normals only (calibration/calibration_set.py), 512 (the
   export default), 2048 and 8192.
3. Activation ranges per calibration method (MinMax; Entropy with onnxruntime's defaults, which
   equal MinMax, and with 2048 bins; Percentile 99.99 / 99.999), computed with onnxruntime's own
   calibrators (``create_calibrator``), fed in chunks so memory stays flat, and cached as JSON.
   Per-layer choices merge ranges of several calibrators tensor by tensor.
4. INT8 Q/DQ models by ``onnxruntime.quantization.quantize_static`` with quantize_int8's settings
   (QDQ, int8 activations and weights, symmetric, per-channel weights, no reduce_range), the
   chosen ranges passed in through ``calibration_cache_path`` (a TensorsData JSON, so ORT's own
   range adjustments, e.g. a Relu's input taking its output's range, still apply), and the
   variant's ``nodes_to_exclude``. Variant ``a`` is checked to be identical in its graph to what
   export/quantize.py ``quantize_int8`` writes. Extra rows: reduce_range, uint8 asymmetric
   activations (ORT's x86 CPU format), and the default scored with ORT's fused kernels.
5. Scoring as benchmarks/accuracy.py does, with the variant's own runner (OnnxRuntimeRunner, one
   thread): scoring statistics fitted with ``fit_scoring_stats`` on ``stats_inputs`` (the run's
   held-out training normals; the spectral part also on the clips the model trained on), never on
   test clips; then every test clip scored. The default fused score (recon + spectral) and each
   component's raw score are kept.
6. Per id: AUC, dAUC against ORT FP32 with a paired bootstrap 95 % interval
   (edge_runtime/parity.py ``dauc_interval``: 1000 resamples, within class, seed 0), and Spearman
   rho of the scores against FP32. The MAC share labelled int8 (export/quantize.py mac_coverage),
   and the MAC share ONNX Runtime actually runs in integer kernels at ALL (its optimised graph).
7. End-to-end time per clip (wav -> log-mel -> model -> score, edge_runtime/pipeline.py EdgeScorer)
   for FP32 and the INT8 variant in the same run, interleaved clip by clip, one ORT thread.
   ``OnnxRuntimeRunner`` runs a Q/DQ model with full-range weights on a CPU without int8 dot
   products at BASIC (float-simulated Q/DQ, correct but slow); the INT8 model is also timed at
   ALL (fused integer kernels, which saturate on this AVX2-only CPU: timing only) and at ALL with
   ``session.qdqisint8allowed=1`` (every symmetric Conv fused, s8s8 kernels, exact). None of
   these is a VNNI measurement.

Everything is cached under ``--out`` (results/int8): per-seed ``seed{S}.json`` holds the figures, so
a rerun only scores what is missing; ``int8_accuracy.md`` / ``.json`` hold the summary table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/onnxruntime/torch load their pools

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from mtad.edge_runtime.atomic import atomic_write

SEEDS_DEFAULT = "0"
N_BASE = 512  # the export's default number of calibration windows
FUSED_COMPONENTS = ("recon", "spectral")  # the default fusion when this study ran (envelope and acoustic, added since, use no model)
ALL_COMPONENTS = ("recon", "class", "embed", "spectral")
MODEL_COMPONENTS = ("recon", "class", "embed")
GOAL_DAUC = 0.01
GOAL_FLOOR = 0.80
# onnxruntime's Entropy defaults (num_bins = num_quantized_bins = 128, and quantize_static has no
# option to change them) leave its KL search one candidate: the full range, i.e. MinMax. "ent2048"
# gives it 2048 bins and 256 quantised bins (int8's 255 levels over the signed histogram).
ENTROPY_QUANTIZED_BINS = 256
CHUNK = 512  # calibration windows per collect_data call (each holds every intermediate tensor)
MSE_SAMPLE = 128
MSE_CANDIDATES = ("minmax", "ent2048", "pct99.99", "pct99.999")  # windows whose tensors judge the per-tensor MSE choice

# label, spec. Spec grammar: RECIPE@N[+OPTION...]
#   RECIPE: minmax | entropy (onnxruntime's defaults: identical to minmax, see ENTROPY_QUANTIZED_BINS) |
#           ent<B> (entropy over B histogram bins) | pct<P> (percentile P, symmetric, 2048 bins) | heads (minmax, but
#           percentile 99.999 for the activations around the output heads) | mse (per tensor, the
#           range among minmax / ent2048 / pct99.99 / pct99.999 with the least int8 round-trip error)
#   N:      calibration windows
#   OPTION: firstlast (the first Conv and the layers that produce the outputs stay float),
#           gating (the WaveNet gates: Tanh, Sigmoid and their product stay float),
#           reconhead (both recon-head convs stay float),
#           rr (reduce_range: 7-bit weights, which this CPU's fused u8s8 kernels run correctly at ALL),
#           u8 (asymmetric uint8 activations: ORT's x86 CPU format, not TensorRT's),
#           cpuall (score with the fused kernels forced on, ALL: on a CPU without VNNI this shows the
#           int16 saturation hazard of full-range weights; README "The INT8 hazard"),
#           s8all (score at ALL with the session option session.qdqisint8allowed=1, which lets ORT
#           fuse every symmetric int8 Q/DQ Conv into QLinearConv with s8 activations)
VARIANTS = {
    "a": ("a) default: minmax, 512 windows", "minmax@512"),
    "b4": ("b) minmax, 2048 windows (4x)", "minmax@2048"),
    "b16": ("b) minmax, 8192 windows (16x)", "minmax@8192"),
    "c_ent": ("c) entropy (onnxruntime defaults), 512", "entropy@512"),
    "c_ent2048": ("c) entropy, 2048 histogram bins, 512", "ent2048@512"),
    "c_p9999": ("c) percentile 99.99, 512", "pct99.99@512"),
    "c_p99999": ("c) percentile 99.999, 512", "pct99.999@512"),
    "d_heads": ("d) per-layer: percentile 99.999 around the output heads, minmax elsewhere", "heads@512"),
    "d_mse": ("d) per-layer: least-error method per tensor (minmax/entropy-2048/percentile)", "mse@512"),
    "e": ("e) first and last layers float (minmax, 512)", "minmax@512+firstlast"),
    "f": ("f) WaveNet gates float (minmax, 512)", "minmax@512+gating"),
    "g": ("g) combination: per-tensor least error, 2048 windows, first/last + gates float", "mse@2048+firstlast+gating"),
    "g2": ("g2) combination (chosen after seed 0): percentile 99.999 + first/last float", "pct99.999@512+firstlast"),
    "rr": ("CPU fleet: default + reduce_range (7-bit weights), scored at ALL here", "minmax@512+rr"),
    "a_all": ("hazard: default scored with fused kernels forced (ALL) on this non-VNNI CPU", "minmax@512+cpuall"),
    "a_s8": ("default scored at ALL with session.qdqisint8allowed=1 (every Conv fused, s8s8)", "minmax@512+s8all"),
    "u8": ("x86 CPU format: uint8 asymmetric activations (minmax, 512)", "minmax@512+u8"),
    "u8rr": ("x86 CPU format: uint8 asymmetric activations + reduce_range, scored at ALL here", "minmax@512+u8+rr"),
}
TIMED = ("fp32", "int8", "int8_all", "int8_all_s8")  # runners in the timing: FP32, INT8 as OnnxRuntimeRunner picks, ALL, ALL + int8 allowed
S8_ALLOWED = "session.qdqisint8allowed"  # ORT session config key: let the QDQ selectors keep int8 activations


def code_key() -> str:
    """Digest of the scoring code: cached scores are reused only while it is unchanged."""
    import hashlib

    import mtad.edge_runtime.scoring as sc
    import mtad.edge_runtime.windows as wi
    import mtad.train.stats as st
    import mtad.train.trainer as tr

    h = hashlib.sha256()
    for mod in (sc, wi, st, tr):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12]


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---------------------------------------------------------------------------------------------
# graph helpers


def parse_spec(spec: str) -> tuple[str, int, list[str]]:
    head, *options = spec.split("+")
    recipe, n = head.split("@")
    bad = [o for o in options if o not in ("firstlast", "gating", "reconhead", "rr", "u8", "cpuall", "s8all")]
    if bad or not re.fullmatch(r"minmax|entropy|ent[0-9]+|pct[0-9.]+|heads|mse", recipe):
        raise SystemExit(f"bad variant spec {spec!r}")
    return recipe, int(n), options


def graph_facts(pre_path: Path) -> dict:
    """Node groups of the pre-processed FP32 graph that the variants keep float or treat apart."""
    import onnx

    from mtad.export.quantize import MAC_OPS

    g = onnx.load(str(pre_path)).graph
    producer = {o: n for n in g.node for o in n.output}
    inputs = {i.name for i in g.input}
    outputs = [o.name for o in g.output]
    mac = [n for n in g.node if n.op_type in MAC_OPS]
    first = [n.name for n in mac if n.input[0] in inputs]
    last = [producer[o].name for o in outputs if o in producer and producer[o].op_type in MAC_OPS]
    gating = []
    for n in g.node:
        if n.op_type == "Mul" and len(n.input) == 2 and all(i in producer for i in n.input):
            ops = sorted(producer[i].op_type for i in n.input)
            if ops == ["Sigmoid", "Tanh"]:
                gating += [producer[i].name for i in n.input] + [n.name]
    recon_head = [n.name for n in mac if n.name.startswith("/recon_head/")]
    head_nodes = [n for n in g.node if n.name.startswith("/recon_head/") or n.name.startswith("/classifier/fc/")
                  or n.name == "/classifier/ReduceMean"]
    inits = {i.name for i in g.initializer}
    head_tensors = sorted({t for n in head_nodes for t in [*n.input, *n.output] if t and t not in inits})
    return {"first": first, "last": last, "gating": gating, "reconhead": recon_head, "head_tensors": head_tensors}


def excluded_nodes(options: list[str], facts: dict) -> list[str]:
    out: list[str] = []
    for o in options:
        if o in ("firstlast", "gating", "reconhead"):
            out += facts["first"] + facts["last"] if o == "firstlast" else facts[o]
    return sorted(set(out))


# ---------------------------------------------------------------------------------------------
# calibration ranges with onnxruntime's calibrators


def op_types_to_quantize() -> list[str]:
    """quantize_static's default: every op type its QLinear and QDQ registries know."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def batches(windows: np.ndarray, batch_size: int = 32) -> list[np.ndarray]:
    """CalibrationSet.batches: equal-size batches, the remainder dropped."""
    n = len(windows)
    if n <= batch_size:
        return [windows]
    return [windows[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def calibrate(pre_path: Path, windows: np.ndarray, method: str) -> dict[str, tuple[float, float]]:
    """``{tensor: (lo, hi)}`` from onnxruntime's calibrator for ``method``, with the calibrator
    options quantize_static would pass for quantize_int8's settings."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    from mtad.export.onnx_export import INPUT

    if method == "minmax":
        ort_method, opts = CalibrationMethod.MinMax, {}
    elif method == "entropy":  # onnxruntime's defaults, as quantize_static (and so quantize_int8) run it
        ort_method, opts = CalibrationMethod.Entropy, {}
    elif method.startswith("ent"):  # a histogram fine enough for the KL search to choose anything
        ort_method, opts = CalibrationMethod.Entropy, {"num_bins": int(method[3:]), "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
    elif method.startswith("pct"):
        ort_method, opts = CalibrationMethod.Percentile, {"percentile": float(method[3:])}
    else:
        raise ValueError(method)

    class Reader(CalibrationDataReader):
        def __init__(self, bs):
            self._it = iter(bs)

        def get_next(self):
            b = next(self._it, None)
            return None if b is None else {INPUT: np.ascontiguousarray(b)}

    bs = batches(windows)
    with tempfile.TemporaryDirectory() as tmp:
        cal = create_calibrator(pre_path, op_types_to_quantize(), augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                calibrate_method=ort_method, extra_options=opts)
        per_call = max(1, CHUNK // 32)
        for i in range(0, len(bs), per_call):  # one collect per chunk: MinMax merges ranges, the histogram ones merge histograms
            cal.collect_data(Reader(bs[i : i + per_call]))
        td = cal.compute_data()
    def scalar(x) -> float:
        x = np.asarray(x).reshape(-1)
        if x.size != 1:
            raise ValueError(f"expected a per-tensor range, got shape {x.shape}")
        return float(x[0])

    return {k: (scalar(v.range_value[0]), scalar(v.range_value[1])) for k, v in td.items()}


def tensor_samples(pre_path: Path, windows: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Values of the named tensors on ``windows`` (the graph with those tensors as outputs)."""
    import onnx
    import onnxruntime as ort

    from mtad.export.onnx_export import INPUT

    proto = onnx.load(str(pre_path))
    have = {o.name for o in proto.graph.output}
    for n in names:
        if n not in have:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    acc: dict[str, list] = {n: [] for n in names}
    for b in batches(windows, 16):
        res = dict(zip(out_names, sess.run(None, {INPUT: np.ascontiguousarray(b)})))
        for n in names:
            if n in res:
                acc[n].append(np.asarray(res[n], np.float32).ravel())
    return {n: np.concatenate(v) for n, v in acc.items() if v}


def int8_roundtrip_mse(x: np.ndarray, amax: float) -> float:
    """Mean squared error of symmetric int8 quantisation of ``x`` with range +-amax (qmax 127)."""
    if amax <= 0:
        return float(np.mean(x.astype(np.float64) ** 2))
    s = amax / 127.0
    q = np.clip(np.round(x / s), -127, 127) * s
    return float(np.mean((x.astype(np.float64) - q) ** 2))


class RangeStore:
    """Calibrated ranges per (method, windows), cached as JSON in ``folder``."""

    def __init__(self, folder: Path, pre_path: Path, calib_sets):
        self.folder, self.pre, self.calib_sets = folder, pre_path, calib_sets
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, method: str, n: int) -> dict[str, tuple[float, float]]:
        path = self.folder / f"{method}@{n}.json"
        if path.exists():
            return {k: tuple(v) for k, v in json.loads(path.read_text())["ranges"].items()}
        cs = self.calib_sets(n)
        t0 = time.perf_counter()
        ranges = calibrate(self.pre, cs.windows, method)
        log(f"  ranges {method}@{n}: {len(ranges)} tensors from {len(cs.windows)} windows in {time.perf_counter() - t0:.0f} s")
        with atomic_write(path, "w") as f:
            f.write(json.dumps({"method": method, "n_windows": int(len(cs.windows)), "calibration_key": cs.manifest["key"],
                                "ranges": ranges}))
        return ranges

    def recipe(self, recipe: str, n: int, facts: dict) -> tuple[dict[str, tuple[float, float]], dict]:
        """The ranges of a recipe, and what it chose (for the record)."""
        if recipe in ("minmax", "entropy") or recipe.startswith("pct") or recipe.startswith("ent"):
            return self.get(recipe, n), {}
        base = self.get("minmax", n)
        if recipe == "heads":
            pct = self.get("pct99.999", n)
            out = dict(base)
            for t in facts["head_tensors"]:
                if t in pct:
                    out[t] = pct[t]
            return out, {"percentile_tensors": [t for t in facts["head_tensors"] if t in pct]}
        if recipe == "mse":
            path = self.folder / f"mse@{n}.json"
            if path.exists():
                d = json.loads(path.read_text())
                return {k: tuple(v) for k, v in d["ranges"].items()}, {"choice_counts": d["choice_counts"]}
            cands = {m: self.get(m, n) for m in MSE_CANDIDATES}
            cs = self.calib_sets(n)
            step = max(1, len(cs.windows) // MSE_SAMPLE)
            sample = cs.windows[::step][:MSE_SAMPLE]
            names = sorted(base)
            values = tensor_samples(self.pre, sample, names)
            out, choice = {}, {}
            for t in names:
                if t not in values:
                    out[t], choice[t] = base[t], "minmax"
                    continue
                errs = {m: int8_roundtrip_mse(values[t], max(abs(r[t][0]), abs(r[t][1]))) for m, r in cands.items() if t in r}
                best = min(errs, key=errs.get)
                out[t], choice[t] = cands[best][t], best
            counts = {m: sum(1 for c in choice.values() if c == m) for m in cands}
            with atomic_write(path, "w") as f:
                f.write(json.dumps({"ranges": out, "choice": choice, "choice_counts": counts}))
            return out, {"choice_counts": counts}
        raise ValueError(recipe)


def quantize_with_ranges(pre_path: Path, out_path: Path, ranges: dict[str, tuple[float, float]], exclude: list[str],
                         reduce_range: bool = False, u8: bool = False) -> None:
    """quantize_static with quantize_int8's settings, the activation ranges given (as onnxruntime's
    calibration cache), and ``exclude`` kept float. ``u8``: asymmetric uint8 activations instead
    (ORT's x86 CPU format; TensorRT cannot take it)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    td = TensorsData(CalibrationMethod.MinMax, {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.items()})
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(td, cache)
        quantize_static(
            str(pre_path), str(out_path), None,
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8 if u8 else QuantType.QInt8, weight_type=QuantType.QInt8,
            per_channel=True, reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(exclude), extra_options={"ActivationSymmetric": not u8, "WeightSymmetric": True},
            calibration_cache_path=str(cache),
        )


def fused_macs(path: Path, window: int, config: dict) -> dict:
    """Which Conv/MatMul/Gemm nodes ONNX Runtime (CPU, ALL) turns into integer kernels
    (QLinearConv, QGemm, MatMulInteger...), as a share of the model's MACs: Q/DQ around a layer
    is no promise that ORT runs it in int8."""
    import onnx
    import onnxruntime as ort

    from mtad.export.quantize import node_macs

    macs = node_macs(onnx.load(str(path)), window)
    total = sum(m for _, m in macs.values()) or 1
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for k, v in config.items():
            so.add_session_config_entry(k, v)
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(so.optimized_model_filepath)
    integer_ops = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat")
    names = {n.name.rsplit("_token", 1)[0] for n in opt.graph.node if n.op_type in integer_ops}
    fused = [n for n in macs if n in names]
    return {"fused_mac_fraction": round(sum(macs[n][1] for n in fused) / total, 5), "n_fused": len(fused), "n_mac_layers": len(macs)}


def same_graph(a: Path, b: Path) -> bool:
    """Two ONNX files hold the same nodes and initialisers (producer metadata aside)."""
    import onnx

    pa, pb = onnx.load(str(a)), onnx.load(str(b))
    return pa.graph.SerializeToString() == pb.graph.SerializeToString()


# ---------------------------------------------------------------------------------------------
# scoring


def auc(y, s) -> float:
    from mtad.edge_runtime.parity import roc_auc

    return roc_auc(y, s)


class SeedContext:
    """Everything per seed that every variant shares: run, data, FP32 model, calibration sets."""

    def __init__(self, seed: int, accuracy_dir: Path, out: Path):
        from mtad.calibration.calibration_set import build_calibration_set
        from mtad.edge_runtime.dataset import scan_dataset
        from mtad.edge_runtime.hashing import sha256_file
        from mtad.export.onnx_export import export_fp32
        from mtad.export.quantize import preprocess
        from mtad.train.checkpoint import model_from_checkpoint, norms_from_checkpoint
        from mtad.train.evaluate import load_run
        from mtad.train.feature_cache import load_features
        from mtad.train.trainer import split_holdout

        self.seed = seed
        self.run_dir = accuracy_dir / "runs" / f"seed{seed}-multitask"
        self.data = accuracy_dir / f"data-seed{seed}"
        self.dir = out / f"seed{seed}"
        (self.dir / "models").mkdir(parents=True, exist_ok=True)
        self.scores_dir = self.dir / "scores" / code_key()
        self.scores_dir.mkdir(parents=True, exist_ok=True)
        self.run = load_run(self.run_dir, require_stats=False)
        self.norms = norms_from_checkpoint(self.run.ckpt)
        self.class_map = list(self.run.ckpt["class_map"])
        self.tcfg = self.run.ckpt["config"]["train"]
        self.window = self.run.model_cfg.window
        self.fp32 = self.dir / "models" / "fp32.onnx"
        self.pre = self.dir / "models" / "fp32-pre.onnx"
        digest = sha256_file(self.run_dir / "checkpoint.pt")
        stamp = self.dir / "models" / "fp32.sha256"
        if not (self.fp32.exists() and self.pre.exists() and stamp.exists() and stamp.read_text() == digest):
            export_fp32(model_from_checkpoint(self.run.ckpt), self.fp32)
            preprocess(self.fp32, self.pre)
            stamp.write_text(digest)
        index = scan_dataset(self.data)
        self.train_store = load_features(index.select("train", label=0), progress=False)
        self.test_store = load_features(index.select("test"), progress=False)
        self.train_idx, self.held_idx = split_holdout(self.train_store, self.tcfg["stats_holdout"], self.tcfg["seed"])
        self.labels = np.array([c.label for c in self.test_store.clips])
        self.machines = np.array([c.machine for c in self.test_store.clips])
        self._calib = {}

        def calib_sets(n: int):
            if n not in self._calib:
                self._calib[n] = build_calibration_set(self.data, self.norms, self.class_map, self.window, n, seed=0,
                                                       model_digest=digest, cache_dir=out / "calibration", progress=False)
            return self._calib[n]

        self.calib_sets = calib_sets
        self.ranges = RangeStore(self.dir / "ranges", self.pre, calib_sets)
        self.facts = graph_facts(self.pre)

    def runner(self, path: Path, precision: str, mode: str = "auto", reduce_range: bool = False):
        """OnnxRuntimeRunner on one thread. ``mode``: ``auto`` (the runner's own level choice),
        ``all`` (ALL forced), ``s8`` (ALL forced, with session.qdqisint8allowed=1)."""
        import onnxruntime as ort

        from mtad.edge_runtime.runners import OnnxRuntimeRunner

        r = OnnxRuntimeRunner(path, precision, "CPUExecutionProvider", threads=1, reduce_range=reduce_range,
                              qdq=False if mode != "auto" else None)
        if mode == "all":
            r.optimization_reason = "forced ALL: fused integer kernels"
        elif mode == "s8":
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.add_session_config_entry(S8_ALLOWED, "1")
            r.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            r.optimization_reason = f"forced ALL, {S8_ALLOWED}=1: s8s8 integer kernels"
        return r

    def fit_and_score(self, runner) -> tuple[dict, dict]:
        """Scores of every test clip under ``runner``: the default fused score and each raw
        component (statistics fitted on the held-out training normals, as benchmarks/accuracy.py),
        plus the two fitted statistics."""
        from mtad.train.evaluate import score_outputs
        from mtad.train.stats import fit_scoring_stats
        from mtad.train.trainer import compute_outputs, stats_inputs

        far = self.tcfg["false_alarm_rate"]
        held, extra = stats_inputs(runner, self.train_store, self.train_idx, self.held_idx, self.norms, self.run.model_cfg)
        test = compute_outputs(runner, self.test_store, list(range(len(self.test_store))), self.norms, self.run.model_cfg)
        st_def, _ = fit_scoring_stats("multitask", self.class_map, self.norms, held, far, "fusion", FUSED_COMPONENTS, extra)
        st_all, _ = fit_scoring_stats("multitask", self.class_map, self.norms, held, far, "fusion", ALL_COMPONENTS, extra)
        fused = score_outputs(st_def, self.test_store.clips, test)
        comps = score_outputs(st_all, self.test_store.clips, test)
        scores = {"fused": np.array([s.score for s in fused])}
        for c in ALL_COMPONENTS:
            scores[c] = np.array([s.components[c] for s in comps])
        scores["anomaly"] = np.array([s.anomaly for s in fused])
        return scores, {"default": st_def}

    def scores(self, name: str, path: Path, precision: str, mode: str = "auto", reduce_range: bool = False) -> dict:
        cache = self.scores_dir / f"{name}.npz"
        if cache.exists():
            with np.load(cache, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        t0 = time.perf_counter()
        sc, _ = self.fit_and_score(self.runner(path, precision, mode, reduce_range))
        np.savez(cache, **sc)
        log(f"  scored {name} in {time.perf_counter() - t0:.0f} s")
        return sc


def compare_scores(ref: dict, var: dict, labels: np.ndarray, machines: np.ndarray) -> dict:
    """Per machine and score: AUC (ref, variant), dAUC with its paired bootstrap interval, Spearman rho."""
    from scipy.stats import spearmanr

    from mtad.edge_runtime.parity import dauc_interval

    out = {}
    for m in sorted(set(machines.tolist())):
        sel = machines == m
        y = labels[sel]
        entry = {}
        for k in ("fused", *ALL_COMPONENTS):
            r, v = ref[k][sel].astype(np.float64), var[k][sel].astype(np.float64)
            a_r, a_v = auc(y, r), auc(y, v)
            lo, hi = dauc_interval(y, r, v)
            rho = float(spearmanr(r, v).statistic) if np.ptp(r) > 0 and np.ptp(v) > 0 else 1.0
            entry[k] = {"auc_ref": a_r, "auc": a_v, "dauc": a_v - a_r, "ci": [lo, hi], "spearman": rho}
        entry["decision_flips"] = int((ref["anomaly"][sel] != var["anomaly"][sel]).sum())
        out[m] = entry
    return out


# ---------------------------------------------------------------------------------------------
# timing


def time_e2e(ctx: SeedContext, runners: dict, stats, per_machine: int = 2, repeats: int = 3) -> dict:
    """Median end-to-end ms per clip (wav file -> score) and median inference ms, per runner,
    interleaved clip by clip so load changes hit every runner alike."""
    from mtad.edge_runtime.pipeline import EdgeScorer

    clips = []
    for m in sorted(set(ctx.machines.tolist())):
        idx = [i for i, c in enumerate(ctx.test_store.clips) if c.machine == m]
        clips += [ctx.test_store.clips[i] for i in idx[:per_machine]]
    bundle = SimpleNamespace(stats=stats, window=ctx.window, warmup=ctx.run.model_cfg.warmup)
    scorers = {k: EdgeScorer(bundle, r) for k, r in runners.items()}
    for s in scorers.values():  # warm-up: first runs allocate
        for c in clips[:3]:
            s.score_file(Path(c.path), c.machine)
    e2e = {k: [[] for _ in clips] for k in scorers}
    inf = {k: [[] for _ in clips] for k in scorers}
    front = {k: [[] for _ in clips] for k in scorers}
    post = {k: [[] for _ in clips] for k in scorers}
    for _ in range(repeats):
        for j, c in enumerate(clips):
            for k, s in scorers.items():
                t0 = time.perf_counter()
                res = s.score_file(Path(c.path), c.machine)
                e2e[k][j].append((time.perf_counter() - t0) * 1000)
                inf[k][j].append(res.inference_ms)
                front[k][j].append(res.frontend_ms)
                post[k][j].append(res.scoring_ms)
    out = {}
    for k in scorers:
        per_clip = np.array([np.median(v) for v in e2e[k]])
        per_inf = np.array([np.median(v) for v in inf[k]])
        out[k] = {"e2e_ms": float(per_clip.mean()), "e2e_ms_se": float(per_clip.std(ddof=1) / np.sqrt(len(per_clip))),
                  "inference_ms": float(per_inf.mean()), "describe": runners[k].describe(),
                  # EdgeScorer's own split: log-mel front end (after reading the file), and windowing + scoring
                  "frontend_ms": float(np.mean([np.median(v) for v in front[k]])),
                  "scoring_ms": float(np.mean([np.median(v) for v in post[k]]))}
        # the part no INT8 model can speed up: everything but inference, so FP32 e2e / this bounds any speed-up
        out[k]["non_model_ms"] = out[k]["e2e_ms"] - out[k]["inference_ms"]
    ref = np.array([np.median(v) for v in e2e["fp32"]])
    for k in scorers:
        if k == "fp32":
            continue
        per = np.array([np.median(v) for v in e2e[k]])
        ratio = ref / per  # > 1: the variant is faster
        out[k]["speedup_vs_fp32"] = float(ref.mean() / per.mean())
        out[k]["speedup_per_clip_mean"] = float(ratio.mean())
        out[k]["speedup_per_clip_se"] = float(ratio.std(ddof=1) / np.sqrt(len(ratio)))
        inf_ref = np.array([np.median(v) for v in inf["fp32"]]).mean()
        out[k]["inference_speedup_vs_fp32"] = float(inf_ref / np.array([np.median(v) for v in inf[k]]).mean())
    out["n_clips"], out["repeats"] = len(clips), repeats
    return out


# ---------------------------------------------------------------------------------------------
# per seed


def run_seed(seed: int, keys: list[str], accuracy_dir: Path, out: Path, timing: bool, check_default: bool) -> dict:
    from mtad.export.quantize import mac_coverage

    cache = out / f"seed{seed}.json"
    res = json.loads(cache.read_text()) if cache.exists() else {"seed": seed, "variants": {}}
    key = code_key()
    if res.get("code_key") != key:  # the scoring code changed: every score is redone (models and timings stay)
        res.pop("fp32", None)
        for e in res["variants"].values():
            e.pop("per_id", None)
        res["code_key"] = key

    def save():
        with atomic_write(cache, "w") as f:
            f.write(json.dumps(res, indent=1))

    def wants_timing(spec: str) -> bool:
        return timing and not {"cpuall", "s8all"} & set(parse_spec(spec)[2])

    def timed(entry: dict) -> bool:
        return "frontend_ms" in entry.get("timing", {}).get("int8_all_s8", {})

    need = [k for k in keys if VARIANTS[k][1] not in res["variants"] or "per_id" not in res["variants"][VARIANTS[k][1]]
            or (wants_timing(VARIANTS[k][1]) and not timed(res["variants"][VARIANTS[k][1]]))
            or "fused_at_all" not in res["variants"][VARIANTS[k][1]]]
    if not need and "fp32" in res:
        return res
    log(f"seed {seed}: preparing")
    ctx = SeedContext(seed, accuracy_dir, out)
    ref = ctx.scores("fp32", ctx.fp32, "fp32")
    if "fp32" not in res:
        res["fp32"] = per_id_auc(ref, ctx.labels, ctx.machines)
        res["graph"] = {k: v for k, v in ctx.facts.items()}
        save()
    fp32_stats = None
    for k in need:
        label, spec = VARIANTS[k]
        recipe, n, options = parse_spec(spec)
        log(f"seed {seed}: variant {k} = {spec}")
        path = ctx.dir / "models" / f"{spec}.onnx"
        entry = res["variants"].get(spec, {})
        if not path.exists() or "mac" not in entry:
            ranges, chosen = ctx.ranges.recipe(recipe, n, ctx.facts)
            exclude = excluded_nodes(options, ctx.facts)
            quantize_with_ranges(ctx.pre, path, ranges, exclude, reduce_range="rr" in options, u8="u8" in options)
            cov = mac_coverage(path, ctx.window)
            entry.update(label=label, key=k, spec=spec, excluded_nodes=exclude, recipe_detail=chosen,
                         n_windows=int(len(ctx.calib_sets(n).windows)),
                         mac={"quantized_mac_fraction": cov["quantized_mac_fraction"], "macs_per_window": cov["macs_per_window"],
                              "n_mac_layers": cov["n_mac_layers"], "float_layers": cov["float_layers"]})
            if check_default and spec == VARIANTS["a"][1]:
                from mtad.export.quantize import quantize_int8

                ref_path = ctx.dir / "models" / "quantize_int8-default.onnx"
                quantize_int8(ctx.fp32, ctx.calib_sets(N_BASE), ref_path)
                entry["identical_to_quantize_int8"] = same_graph(path, ref_path)
                log(f"  variant a identical to export/quantize.py quantize_int8: {entry['identical_to_quantize_int8']}")
            res["variants"][spec] = entry
            save()
        if "per_id" not in entry:
            mode = "all" if "cpuall" in options else "s8" if "s8all" in options else "auto"
            var = ctx.scores(spec, path, "int8", mode, reduce_range="rr" in options)
            entry["per_id"] = compare_scores(ref, var, ctx.labels, ctx.machines)
            save()
        if "fused_at_all" not in entry:
            entry["fused_at_all"] = {"default": fused_macs(path, ctx.window, {}),
                                     "s8_allowed": fused_macs(path, ctx.window, {S8_ALLOWED: "1"})}
            save()
        if wants_timing(spec) and not timed(entry):
            if fp32_stats is None:
                _, st = ctx.fit_and_score(ctx.runner(ctx.fp32, "fp32"))
                fp32_stats = st["default"]
            runners = {"fp32": ctx.runner(ctx.fp32, "fp32"), "int8": ctx.runner(path, "int8", reduce_range="rr" in options),
                       "int8_all": ctx.runner(path, "int8", "all"), "int8_all_s8": ctx.runner(path, "int8", "s8")}
            entry["timing"] = time_e2e(ctx, runners, fp32_stats)
            t = entry["timing"]
            log(f"  e2e ms/clip: fp32 {t['fp32']['e2e_ms']:.1f}, int8 ({runners['int8'].optimization_level}) {t['int8']['e2e_ms']:.1f}, "
                f"int8 ALL {t['int8_all']['e2e_ms']:.1f}, int8 ALL s8 {t['int8_all_s8']['e2e_ms']:.1f}")
            save()
    return res


def per_id_auc(scores: dict, labels, machines) -> dict:
    return {m: {k: auc(labels[machines == m], scores[k][machines == m]) for k in ("fused", *ALL_COMPONENTS)}
            for m in sorted(set(machines.tolist()))}


# ---------------------------------------------------------------------------------------------
# summary


def se(x) -> float:
    x = np.asarray(x, np.float64)
    return float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def summarise(per_seed: dict[int, dict], keys: list[str]) -> dict:
    rows = []
    for k in keys:
        label, spec = VARIANTS[k]
        entries = [per_seed[s]["variants"][spec] for s in per_seed if spec in per_seed[s]["variants"]]
        if not entries or any("per_id" not in e for e in entries):
            continue
        row = {"key": k, "label": label, "spec": spec, "seeds": [s for s in per_seed if spec in per_seed[s]["variants"]]}
        row["mac_fraction"] = [e["mac"]["quantized_mac_fraction"] for e in entries]
        for score in ("fused", *MODEL_COMPONENTS):
            d = np.array([e["per_id"][m][score]["dauc"] for e in entries for m in sorted(e["per_id"])])
            a = np.array([e["per_id"][m][score]["auc"] for e in entries for m in sorted(e["per_id"])])
            rho = np.array([e["per_id"][m][score]["spearman"] for e in entries for m in sorted(e["per_id"])])
            ci_excl0 = sum(1 for e in entries for m in e["per_id"] if e["per_id"][m][score]["ci"][0] > 0 or e["per_id"][m][score]["ci"][1] < 0)
            row[score] = {"auc": float(a.mean()), "auc_se": se(a), "dauc": float(d.mean()), "dauc_se": se(d),
                          "mean_abs_dauc": float(np.abs(d).mean()), "max_abs_dauc": float(np.abs(d).max()),
                          "n_over_goal": int((np.abs(d) > GOAL_DAUC + 1e-12).sum()), "n_units": int(d.size),
                          "n_ci_excludes_0": ci_excl0,
                          "spearman_mean": float(rho.mean()), "spearman_min": float(rho.min())}
        row["decision_flips"] = int(sum(e["per_id"][m]["decision_flips"] for e in entries for m in e["per_id"]))
        fa = [e["fused_at_all"] for e in entries if "fused_at_all" in e]
        if fa:
            row["fused_at_all"] = {k: min(f[k]["fused_mac_fraction"] for f in fa) for k in ("default", "s8_allowed")}
        timed = [e["timing"] for e in entries if "frontend_ms" in e.get("timing", {}).get("int8_all_s8", {})]
        if timed:
            row["timing"] = {r: {q: float(np.mean([t[r][q] for t in timed])) for q in ("e2e_ms", "inference_ms", "frontend_ms", "scoring_ms", "non_model_ms")}
                             for r in TIMED}
            row["timing"]["amdahl_bound"] = float(np.mean([t["fp32"]["e2e_ms"] / t["fp32"]["non_model_ms"] for t in timed]))
            row["timing"]["n_runs"] = len(timed)
            for r in TIMED[1:]:
                row["timing"][r]["speedup"] = float(np.mean([t[r]["speedup_vs_fp32"] for t in timed]))
                row["timing"][r]["speedup_se"] = se([t[r]["speedup_per_clip_mean"] for t in timed]) if len(timed) > 1 else float(np.mean([t[r]["speedup_per_clip_se"] for t in timed]))
        row["meets_accuracy_fused"] = min(row["mac_fraction"]) >= GOAL_FLOOR and row["fused"]["max_abs_dauc"] <= GOAL_DAUC + 1e-12
        row["meets_accuracy_recon"] = min(row["mac_fraction"]) >= GOAL_FLOOR and row["recon"]["max_abs_dauc"] <= GOAL_DAUC + 1e-12
        rows.append(row)
    fp32 = {}
    for s in per_seed:
        for m, v in per_seed[s]["fp32"].items():
            for k, a in v.items():
                fp32.setdefault(k, []).append(a)
    return {"seeds": sorted(per_seed), "rows": rows, "fp32_auc": {k: {"mean": float(np.mean(v)), "se": se(v)} for k, v in fp32.items()}}


def render(summary: dict, cpu: str) -> str:
    s = summary
    units = f"{len(s['seeds'])} seed(s) {s['seeds']} x 18 ids"
    lines = [f"INT8 against ONNX Runtime FP32, per-id units over {units} (50 normal + 50 anomalous test clips per id).",
             f"AUC of ORT FP32: fused {s['fp32_auc']['fused']['mean']:.3f}, recon {s['fp32_auc']['recon']['mean']:.3f}, "
             f"class {s['fp32_auc']['class']['mean']:.3f}, embed {s['fp32_auc']['embed']['mean']:.3f}.",
             "dAUC = AUC(INT8) - AUC(FP32), mean +- SE over units; max |dAUC| over units; '>0.01' counts units over the goal; "
             "'CI!=0' counts units whose paired bootstrap 95 % interval excludes 0.", ""]
    lines.append("| variant | MACs quantised | fused dAUC | fused mean / max abs dAUC (>0.01, CI!=0) | recon dAUC | recon mean / max abs dAUC (>0.01, CI!=0) "
                 "| class / embed max abs dAUC | min Spearman fused / recon | goal (fused / recon) |")
    lines.append("|---" * 9 + "|")
    for r in s["rows"]:
        f, c = r["fused"], r["recon"]
        mac = f"{min(r['mac_fraction']):.1%}" + ("" if len(set(r["mac_fraction"])) == 1 else f"-{max(r['mac_fraction']):.1%}")
        lines.append(
            f"| {r['label']} | {mac} | {f['dauc']:+.4f} +- {f['dauc_se']:.4f} | {f['mean_abs_dauc']:.4f} / {f['max_abs_dauc']:.4f} ({f['n_over_goal']}/{f['n_units']}, {f['n_ci_excludes_0']}) "
            f"| {c['dauc']:+.4f} +- {c['dauc_se']:.4f} | {c['mean_abs_dauc']:.4f} / {c['max_abs_dauc']:.4f} ({c['n_over_goal']}/{c['n_units']}, {c['n_ci_excludes_0']}) "
            f"| {r['class']['max_abs_dauc']:.4f} / {r['embed']['max_abs_dauc']:.4f} | {f['spearman_min']:.4f} / {c['spearman_min']:.4f} "
            f"| {'yes' if r['meets_accuracy_fused'] else 'no'} / {'yes' if r['meets_accuracy_recon'] else 'no'} |")
    timed = [r for r in s["rows"] if "timing" in r]
    if timed:
        lines += ["", f"Speed, ONNX Runtime CPU, 1 thread, this CPU: {cpu}. End-to-end ms per 10 s clip (wav -> log-mel -> model -> score, "
                  "EdgeScorer), the runners interleaved clip by clip; speed-up = FP32 time / INT8 time in the same run (mean over seeds).",
                  "INT8 'auto': OnnxRuntimeRunner's own choice here (BASIC, float-simulated Q/DQ, for full-range weights without an int8 dot product; "
                  "ALL for reduce_range). 'ALL': fused integer kernels forced (for full-range weights on this non-VNNI CPU the u8s8 kernels saturate: "
                  "timing only). 'ALL s8': ALL with session.qdqisint8allowed=1. 'fused MACs': share of MACs that ORT actually runs in integer "
                  "kernels at ALL (default / int8 allowed). NOT a VNNI measurement.", "",
                  "| variant | fused MACs at ALL (default / s8 allowed) | FP32 ms | INT8 auto ms (x) | INT8 ALL ms (x) | INT8 ALL s8 ms (x) | inference ms FP32 / auto / ALL / ALL s8 | FP32 non-model ms (front end, scoring) | e2e bound at zero inference |",
                  "|---" * 9 + "|"]
        for r in timed:
            t = r["timing"]
            fa = r.get("fused_at_all", {})
            fused = f"{fa.get('default', float('nan')):.1%} / {fa.get('s8_allowed', float('nan')):.1%}"
            cell = lambda k: f"{t[k]['e2e_ms']:.1f} ({t[k]['speedup']:.2f}x +- {t[k]['speedup_se']:.2f})"
            inference = " / ".join(f"{t[k]['inference_ms']:.1f}" for k in TIMED)
            lines.append(f"| {r['label']} | {fused} | {t['fp32']['e2e_ms']:.1f} | {cell('int8')} | {cell('int8_all')} | {cell('int8_all_s8')} "
                         f"| {inference} | {t['fp32']['non_model_ms']:.1f} ({t['fp32']['frontend_ms']:.1f}, {t['fp32']['scoring_ms']:.1f}) | {t['amdahl_bound']:.2f}x |")
    return "\n".join(lines)


def cpu_name() -> str:
    from mtad.edge_runtime.bench import cpu_model_name
    from mtad.edge_runtime.runners import cpu_int8_features

    feats = cpu_int8_features()
    return f"{cpu_model_name()}, int8 dot products: {'/'.join(feats) if feats else 'none (no VNNI)'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default=SEEDS_DEFAULT)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"from {', '.join(VARIANTS)}")
    ap.add_argument("--accuracy-dir", type=Path, default=Path("results/accuracy"))
    ap.add_argument("--out", type=Path, default=Path("results/int8"))
    ap.add_argument("--no-timing", action="store_true", help="skip the end-to-end timing")
    args = ap.parse_args()
    keys = args.variants.split(",")
    bad = [k for k in keys if k not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        per_seed[seed] = run_seed(seed, keys, args.accuracy_dir, args.out, not args.no_timing, check_default=True)
    summary = summarise(per_seed, keys)
    summary["cpu"] = cpu_name()
    text = render(summary, summary["cpu"])
    with atomic_write(args.out / "int8_accuracy.md", "w") as f:
        f.write(text + "\n")
    with atomic_write(args.out / "int8_accuracy.json", "w") as f:
        f.write(json.dumps(summary, indent=1, default=float))
    print(text)


if __name__ == "__main__":
    main()
