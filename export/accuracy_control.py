"""Accuracy-controlled reduced precision: keep the layers that hurt most in float32 until the
AUC drift against PyTorch holds on a labelled validation set (the ModelOpt/anomalib INT8_ACQ
idea, driven by detection quality rather than tensor error). Used for INT8 (layers kept out of
quantisation) and FP16 (layers kept out of the float16 conversion). Without labelled validation
clips, the loop judges score drift against FP32 on held-out normals instead (Spearman rho and
the worst relative score error, mtad-parity's score budgets). The test clips are never used:
mtad-parity reports on them.

Layers are ranked by Polygraphy, which runs the FP32 and reduced graphs in ONNX Runtime with
every intermediate tensor marked as an output and compares them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from mtad.calibration.calibration_set import CalibrationSet
from mtad.edge_runtime.errors import MtadError
from mtad.edge_runtime.parity import Scored, compare
from mtad.edge_runtime.runners import OnnxRuntimeRunner, int8_cpu_optimization_level

from .onnx_export import INPUT, convert_fp16
from .quantize import DEFAULT_INT8_FLOOR, Int8FloorError, preprocess, quantize_int8

def require_polygraphy() -> None:
    """Polygraphy ranks the layers; without it, one line naming the extra."""
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        raise MtadError("--accuracy-budget needs Polygraphy to rank layers: `pip install 'mtad[train]'` "
                        "(or `pip install polygraphy`)") from None


QUANTIZED_OPS = {"Conv", "Gemm", "MatMul", "Add", "Mul", "Relu", "MaxPool", "GlobalAveragePool", "ReduceMean", "Sigmoid", "Tanh", "Pad"}


def rank_layers(fp32_path: Path, int8_path: Path, windows: np.ndarray, reduce_range: bool = False) -> list[tuple[str, float]]:
    """Nodes of the FP32 graph ranked by the error the reduced model (``int8_path``: INT8 or
    FP16) adds at their output.

    A node's local error is the normalised mean |FP32 - INT8| of its output minus the largest
    such error among its inputs: errors accumulate downstream, so raw output error would
    always blame the last layers.
    """
    import onnxruntime as ort

    require_polygraphy()
    from polygraphy import constants
    from polygraphy.backend.onnx import BytesFromOnnx, ModifyOutputs, OnnxFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    try:
        from polygraphy.comparator import SimpleCompareFunc  # polygraphy >= 0.50
    except ImportError:
        from polygraphy.comparator import CompareFunc

        SimpleCompareFunc = CompareFunc.simple

    def runner(path: Path, name: str, level):
        model_bytes = BytesFromOnnx(ModifyOutputs(OnnxFromPath(str(path)), outputs=constants.MARK_ALL))()
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.log_severity_level = 3
        return OnnxrtRunner(ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"]), name=name)

    basic = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    feeds = [{INPUT: np.ascontiguousarray(windows[i : i + 16])} for i in range(0, min(len(windows), 64), 16)]
    # INT8 differs from FP32 everywhere by design: Polygraphy's per-tensor FAILED lines (and its
    # "Loading model" lines) are noise here, and its relative differences divide by zero on
    # all-zero tensors; only absolute ones are used
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL), np.errstate(divide="ignore", invalid="ignore"):
        runners = [runner(fp32_path, "fp32", basic), runner(int8_path, "int8", int8_cpu_optimization_level(reduce_range))]
        results = Comparator.run(runners, data_loader=feeds)
        accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(check_shapes=False))
    pair = accuracy if hasattr(accuracy, "values") else accuracy[0]  # newer Polygraphy: a list, one per runner pair
    per_iter = list(pair.values())[0]
    fp32_outputs = dict(results.items())["fp32"]
    err: dict[str, float] = {}
    for it, compared in enumerate(per_iter):
        for tensor, res in compared.items():
            scale = float(np.std(fp32_outputs[it][tensor])) + 1e-12
            err[tensor] = err.get(tensor, 0.0) + res.mean_absdiff / scale / len(per_iter)
    graph = onnx.load(str(fp32_path)).graph
    ranked = []
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS or not node.output or node.output[0] not in err:
            continue
        upstream = max((err.get(i, 0.0) for i in node.input), default=0.0)
        ranked.append((node.name, err[node.output[0]] - upstream))
    return sorted(ranked, key=lambda t: -t[1])


def _fmt(v, spec=".4f") -> str:
    return "n/a" if v is None else format(v, spec)  # rho needs 3 clips of a machine


def _best_line(history: list[dict], drift: bool = False) -> str:
    if not history:
        return "no build reached the floor"
    if drift:
        best = min(history, key=lambda h: h["max_rel_error"])
        text = (f"best found: max relative score error {best['max_rel_error']:.4f} (lowest rho {_fmt(best['min_spearman'])}) "
                f"with {best['excluded']} layer(s) in float")
    else:
        best = min(history, key=lambda h: h["max_abs_dauc"])
        text = f"best found: max |dAUC| {best['max_abs_dauc']:.4f} with {best['excluded']} layer(s) in float"
    frac = best.get("quantized_mac_fraction")
    return text + ("" if frac is None else f", {frac:.1%} of MACs quantised")


def drift_budget_text(score_budget: dict) -> str:
    return f"Spearman rho >= {score_budget['min_spearman']} and max relative score error <= {score_budget['max_rel_error']} per machine"


def control_loop(build, rank, out_path: Path, precision: str, reference: list[Scored], score_variant, budget: float,
                 reduce_range: bool = False, max_rounds: int = 8, log=print, floor: float | None = None,
                 score_budget: dict | None = None) -> dict:
    """``build(excluded) -> info`` writes ``out_path``; while some machine is over budget, keep
    more of the ``rank(out_path)``-worst layers in float32 (2, 4, 8, ...).

    Over budget means |dAUC| over ``budget`` on labelled clips; with ``score_budget`` (the
    fallback without labelled validation clips: ``reference`` holds normals only), it means
    Spearman rho or the worst relative score error against FP32 missing ``score_budget``.

    With ``floor`` (INT8), ``info["quantized_mac_fraction"]`` may never drop under it: when the
    budget cannot be met above the floor, raise :class:`Int8FloorError` with the best round found.
    """
    drift = score_budget is not None
    what = f"the score-drift budget ({drift_budget_text(score_budget)})" if drift else f"the accuracy budget {budget}"
    remedy = "pass labelled validation clips with --val-data" if drift else "raise --accuracy-budget"
    excluded: list[str] = []
    history = []
    step = 2
    for round_ in range(max_rounds + 1):
        info = build(excluded)
        frac = info.get("quantized_mac_fraction")
        if floor is not None and frac is not None and frac < floor:
            raise Int8FloorError(
                f"{precision.upper()} cannot meet {what} with >= {floor:.0%} of MACs quantised "
                f"(keeping {len(excluded)} layers in float leaves {frac:.1%}); {_best_line(history, drift)}; no {precision} variant "
                f"written ({remedy}, lower --int8-floor, or export without --{precision})"
            )
        runner = OnnxRuntimeRunner(out_path, precision, "CPUExecutionProvider", reduce_range=reduce_range)
        if drift:
            res = compare(reference, score_variant(runner), budget, score_budget)
            over = res["score_over_budget"]
            entry = {"excluded": len(excluded), "min_spearman": res["min_spearman"], "max_rel_error": res["max_rel_error"] or 0.0,
                     "over_budget": over}
            figures = (f"lowest rho {_fmt(res['min_spearman'])}, max relative score error {entry['max_rel_error']:.4f} "
                       f"({drift_budget_text(score_budget)})")
        else:
            res = compare(reference, score_variant(runner), budget)
            over = res["over_budget"]
            entry = {"excluded": len(excluded), "max_abs_dauc": res["max_abs_dauc"] or 0.0, "over_budget": over}
            figures = f"max |dAUC| {entry['max_abs_dauc']:.4f} (budget {budget})"
        history.append({**entry, **({} if frac is None else {"quantized_mac_fraction": frac})})
        log(f"{precision} accuracy control round {round_}: {len(excluded)} layer(s) in float32"
            + ("" if frac is None else f" ({frac:.1%} of MACs quantised)") + f", {figures}")
        if not over:
            break
        if round_ == max_rounds:
            raise MtadError(f"{precision.upper()} stays over {what} after {max_rounds} rounds; "
                            f"{_best_line(history, drift)}; export without it or {remedy}")
        ranked = [n for n, _ in rank(out_path) if n not in excluded]
        excluded += ranked[:step]
        step *= 2
    info.update(accuracy_budget=budget, accuracy_criterion="score_drift" if drift else "dauc", excluded_nodes=list(excluded),
                accuracy_rounds=history, **({"score_budget": dict(score_budget)} if drift else {}))
    return info


def accuracy_controlled_int8(
    fp32_path: Path,
    calib: CalibrationSet,
    out_path: Path,
    reference: list[Scored],
    score_variant,
    budget: float,
    method: str = "minmax",
    reduce_range: bool = False,
    max_rounds: int = 8,
    log=print,
    floor: float = DEFAULT_INT8_FLOOR,
    score_budget: dict | None = None,
) -> dict:
    """INT8 with the worst layers left unquantised until the budget holds, never under ``floor``
    of the MACs quantised. ``score_variant(runner) -> list[Scored]``; ``score_budget``: judge by
    score drift on normals instead of |dAUC| (see :func:`control_loop`)."""
    windows = calib.heldout if len(calib.heldout) else calib.windows
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess(fp32_path, Path(tmp) / "pre.onnx")
        return control_loop(
            lambda excluded: quantize_int8(pre, calib, out_path, method, reduce_range, excluded, preprocessed=True),
            lambda path: rank_layers(pre, path, windows, reduce_range),
            out_path, "int8", reference, score_variant, budget, reduce_range, max_rounds, log, floor, score_budget,
        )


def accuracy_controlled_fp16(fp32_path: Path, windows: np.ndarray, out_path: Path, reference: list[Scored], score_variant,
                             budget: float, max_rounds: int = 8, log=print, score_budget: dict | None = None) -> dict:
    """FP16 with the worst layers left in float32 until the budget holds."""
    fp32 = onnx.load(str(fp32_path))

    def build(excluded):
        onnx.save(convert_fp16(fp32, keep_fp32_nodes=excluded), str(out_path))
        return {"format": "float16", "io": "float32"}

    return control_loop(build, lambda path: rank_layers(fp32_path, path, windows), out_path, "fp16", reference, score_variant,
                        budget, max_rounds=max_rounds, log=log, score_budget=score_budget)
