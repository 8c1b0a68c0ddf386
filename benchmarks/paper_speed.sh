#!/usr/bin/env bash
# Edge latency of the paper-size model on one CPU core: PyTorch eager FP32 vs ONNX Runtime
# FP32 / FP16 / INT8 (full-range weights, run at BASIC on CPUs without VNNI) and INT8 with
# 7-bit weights (--int8-reduce-range, fused integer kernels). Speed does not depend on how
# well the model is trained, so it trains the paper preset for one epoch on a small set.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${MTAD_VENV:-.venv}/bin"
OUT="${MTAD_BENCH_OUT:-results/paper-speed}"
rm -rf "$OUT"; mkdir -p "$OUT"
"$BIN/mtad-synth" "$OUT/data" --types fan --ids 3 --train 8 --test 2
"$BIN/mtad-train" --data "$OUT/data" --out "$OUT/run" --preset paper --epochs 1 --quiet
"$BIN/mtad-export" --run "$OUT/run" --out "$OUT/bundle" --fp16 --int8 --calib-data "$OUT/data" --calib-windows 64 --quiet
"$BIN/mtad-export" --run "$OUT/run" --out "$OUT/bundle-rr" --int8 --int8-reduce-range --calib-data "$OUT/data" --calib-windows 64 --quiet
clip=$(ls "$OUT"/data/fan/test/normal_*.wav | head -1)
"$BIN/python" benchmarks/edge_bench.py --bundle "$OUT/bundle" --run "$OUT/run" --clip "$clip" --repeats 5 --json "$OUT/bench.json"
"$BIN/mtad-edge" bench --bundle "$OUT/bundle-rr" --clip "$clip" --repeats 5 --json "$OUT/bench-rr.json"
