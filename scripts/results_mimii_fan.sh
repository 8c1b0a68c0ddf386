#!/usr/bin/env bash
# README result (b): the real MIMII fan clips in ../shared/data/mimii-fan-0db (0 dB SNR).
# Train on its train split (15 clips), evaluate on its test split (15 normal, 30 anomalous).
# A tiny set: a sanity check of the whole pipeline on real sound, not a benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA="${MTAD_MIMII_FAN:-../shared/data/mimii-fan-0db}"
OUT="${MTAD_RESULTS_OUT:-results/mimii-fan}"
BIN="${MTAD_VENV:-.venv}/bin"
rm -rf "$OUT/run"
mkdir -p "$OUT"
"$BIN/mtad-train" --data "$DATA" --out "$OUT/run" --preset small --config scripts/mimii-fan.yaml --quiet
"$BIN/mtad-eval" --run "$OUT/run" --data "$DATA" --json "$OUT/eval.json" --plots "$OUT/plots" --quiet | tee "$OUT/eval.txt"
