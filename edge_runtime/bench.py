"""``mtad-edge bench``: per backend and precision, front-end / inference / scoring ms per clip,
real-time factor, peak RSS and start-up time. Each variant runs in its own process so that
start-up and memory are its own; all run on the same clip in the same invocation."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def make_runner(bundle, backend: str, precision: str, threads: int, extra: str | None):
    from .pipeline import choose_runner

    return choose_runner(bundle, backend, precision, threads)


def worker(bundle_dir: str, backend: str, precision: str, clip: str, machine: str, repeats: int, threads: int,
           extra: str | None = None, make=make_runner) -> dict:
    """Runs inside the child process; returns the measurements. ``make`` builds the runner
    (other packages pass their own, e.g. a PyTorch reference, without this module knowing them)."""
    t0 = time.perf_counter()
    from .allocator import keep_freed_memory
    from .audio import load_audio
    from .bundle import load_bundle
    from .pipeline import EdgeScorer

    keep_freed_memory()  # as mtad-edge does
    bundle = load_bundle(bundle_dir)
    runner = make(bundle, backend, precision, threads, extra)
    scorer = EdgeScorer(bundle, runner)
    audio = load_audio(clip)
    first = scorer.score_audio(audio, machine)
    startup = time.perf_counter() - t0
    runs = [scorer.score_audio(audio, machine) for _ in range(repeats)]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    fe, inf, sc = med([r.frontend_ms for r in runs]), med([r.inference_ms for r in runs]), med([r.scoring_ms for r in runs])
    seconds = len(audio) / 16000
    return {
        "backend": runner.describe() if hasattr(runner, "describe") else f"{runner.backend} eager",
        "precision": runner.precision, "frontend_ms": fe, "inference_ms": inf, "scoring_ms": sc, "total_ms": fe + inf + sc,
        "real_time_factor": (fe + inf + sc) / 1000 / seconds, "startup_s": startup,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "score": first.score,
        "torch_loaded": "torch" in sys.modules,
    }


def bundle_combos(bundle) -> list[tuple[str, str, str, str | None]]:
    """(worker module, backend, precision, extra) for every variant of the bundle; one, without a
    model, for a bundle whose scores are model-free."""
    if not bundle.stats.needs_model:
        return [("mtad.edge_runtime.bench", "none", "fp32", None)]
    combos = [("mtad.edge_runtime.bench", "onnxruntime", v.precision, None) for v in bundle.variants.values() if v.kind == "onnx"]
    for precision in ("fp32", "fp16", "int8"):
        if bundle.engine(precision)[0] is not None:
            combos.append(("mtad.edge_runtime.bench", "tensorrt", precision, None))
    return combos


def run_bench(bundle_dir: Path, clip: Path, machine: str, repeats: int = 20, threads: int = 1, extra_combos=(), log=print) -> list[dict]:
    """Time each combo in its own process; ``extra_combos`` are prepended (module, backend, precision, extra)."""
    from .bundle import load_bundle

    combos = list(extra_combos) + bundle_combos(load_bundle(bundle_dir))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    results = []
    for module, backend, precision, extra in combos:
        code = (
            f"import json; from {module} import worker; "
            f"print('RESULT', json.dumps(worker({str(bundle_dir)!r}, {backend!r}, {precision!r}, {str(clip)!r}, {machine!r}, {repeats}, {threads}, {extra!r})))"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            log(f"bench {backend}/{precision}: failed ({(proc.stderr.strip().splitlines() or ['?'])[-1]})")
            continue
        r = json.loads(line[len("RESULT "):])
        results.append(r)
        log(f"bench {r['backend']}: {r['total_ms']:.1f} ms per clip")
    return results


def format_results(results: list[dict], machine_desc: str) -> str:
    lines = [f"machine: {machine_desc}", "",
             "| backend | precision | front end ms | inference ms | scoring ms | total ms | real-time factor | start-up s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['frontend_ms']:.2f} | {r['inference_ms']:.2f} | {r['scoring_ms']:.2f} | "
                     f"{r['total_ms']:.2f} | {r['real_time_factor']:.4f} | {r['startup_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    base = next((r for r in results if r["backend"].startswith("pytorch")), None)
    if base:
        lines.append("")
        for r in results:
            if r is not base:
                ratio = base["total_ms"] / r["total_ms"]
                lines.append(f"- {r['backend']}: end to end {ratio:.2f}x the speed of PyTorch eager FP32 ({'faster' if ratio > 1 else 'slower'})")
    return "\n".join(lines)


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or "unknown CPU"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_description() -> str:
    import platform

    return f"{cpu_model_name()}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}"

