#!/usr/bin/env bash
# README result (a): the synthetic default set, all six types, multitask vs the paper's two
# single-task ablations (WaveNet-only = recon, ResNet-only = classify), small preset, CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${MTAD_RESULTS_OUT:-results/synthetic}"
BIN="${MTAD_VENV:-.venv}/bin"
rm -rf "$OUT/runs"
mkdir -p "$OUT"
"$BIN/mtad-synth" "$OUT/data"
for task in multitask recon classify; do
  "$BIN/mtad-train" --data "$OUT/data" --out "$OUT/runs/$task" --preset small --task "$task" --quiet
done
"$BIN/mtad-eval" --run "$OUT/runs/multitask" --data "$OUT/data" --json "$OUT/multitask.json" --plots "$OUT/plots" \
  --compare "$OUT/runs/recon" --compare "$OUT/runs/classify" --quiet | tee "$OUT/eval.txt"
