"""End-to-end latency per 10 s clip: PyTorch eager FP32 vs every variant of a bundle, same clip,
same run, one process each, on one CPU core by default.

    .venv/bin/python benchmarks/edge_bench.py --bundle demo_out/bundle --run demo_out/run [--clip WAV] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mtad.edge_runtime.bench import format_results, machine_description, run_bench
from mtad.edge_runtime.bundle import load_bundle
from mtad.edge_runtime.dataset import parse_machine_from_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True, help="training run of the bundle (PyTorch reference)")
    ap.add_argument("--clip", type=Path, required=True, help="a 10 s WAV in the DCASE layout")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    parsed = parse_machine_from_path(args.clip)
    machine = "/".join(parsed) if parsed and "/".join(parsed) in bundle.class_map else bundle.class_map[0]
    # a model-free bundle runs no model: a PyTorch row would time the same statistics again
    torch_row = [("mtad.train.bench_worker", "pytorch", "fp32", str(args.run))] if bundle.stats.needs_model else []
    results = run_bench(args.bundle, args.clip, machine, args.repeats, args.threads, torch_row, log=lambda m: print(m, file=sys.stderr))
    print(format_results(results, machine_description() + f", {args.threads} thread(s)"))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_description(), "threads": args.threads, "results": results}, indent=1))


if __name__ == "__main__":
    main()
