#!/usr/bin/env bash
# The main job on the embedded default, end to end on a CPU:
#   synthetic data -> train (small preset) -> evaluate -> export (FP32/FP16/INT8) -> edge scoring
#   -> edge benchmark -> QA parity.
# Each stage prints its headline; full logs land in $MTAD_DEMO_OUT/logs (default demo_out/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT="${MTAD_DEMO_OUT:-demo_out}"
BIN="${MTAD_VENV:-.venv}/bin"
rm -rf "$OUT/run" "$OUT/bundle" "$OUT/logs" "$OUT/edge.jsonl"  # mtad-edge --out appends
mkdir -p "$OUT/logs"
export PYTHONUNBUFFERED=1
start=$(date +%s)

stage() {  # stage NAME LOG COMMAND...: run, keep the log, print the headline (last stdout line)
  local name=$1 log=$2; shift 2
  local t0=$(date +%s)
  printf '\n== %s\n$ %s\n' "$name" "$*"
  if ! "$@" >"$OUT/logs/$log.out" 2>"$OUT/logs/$log.err"; then
    echo "FAILED: $name (see $OUT/logs/$log.err)"; tail -5 "$OUT/logs/$log.err"; exit 1
  fi
  echo "-> $(tail -n 1 "$OUT/logs/$log.out")  [$(( $(date +%s) - t0 )) s]"
}

# --val 10: a labelled validation split (<type>/val/) that FP16 accuracy control selects on, so the
# test clips stay unseen until the parity stage reports on them.
stage "1/7 synthesise the default set (6 types x 3 ids, 40 train + 10/10 test + 10/10 validation clips per id)" synth \
  "$BIN/mtad-synth" "$OUT/data" --val 10
stage "2/7 train the multitask model (small preset, CPU)" train \
  "$BIN/mtad-train" --data "$OUT/data" --out "$OUT/run" --preset small --quiet
stage "3/7 evaluate AUC/pAUC and false alarms on the test split, beside the simple baseline" eval \
  "$BIN/mtad-eval" --run "$OUT/run" --data "$OUT/data" --json "$OUT/eval.json" --plots "$OUT/plots" --baseline --quiet
# INT8 is plain (every layer quantised): on 10 + 10 clips per id, accuracy control met a 0.01
# budget only with every layer in float, which the INT8 floor refuses (no float file is labelled int8).
# FP16 accuracy control selects on the val split (mtad-export finds it under --calib-data); the
# manifest records the three disjoint sets (calibration, accuracy control, reference/test).
stage "4/7 export the edge bundle (FP32; FP16 accuracy-controlled on the validation split; INT8 fully quantised)" export \
  "$BIN/mtad-export" --run "$OUT/run" --out "$OUT/bundle" --fp16 --int8 --calib-data "$OUT/data" --accuracy-budget fp16=0.005 --quiet
stage "5/7 edge scoring, INT8, torch-free runtime (one JSON line per clip)" edge \
  bash -c "'$BIN/mtad-edge' --bundle '$OUT/bundle' --precision int8 --out '$OUT/edge.jsonl' '$OUT/data/fan/test' '$OUT/data/valve/test' && echo \"\$(wc -l < '$OUT/edge.jsonl') JSON lines in $OUT/edge.jsonl; \$(grep -c '\"anomaly\": true' '$OUT/edge.jsonl') flagged anomalous\""
stage "6/7 edge benchmark on one core (PyTorch eager FP32 vs each ONNX Runtime variant, same clip)" bench \
  bash -c "'$BIN/python' benchmarks/edge_bench.py --bundle '$OUT/bundle' --run '$OUT/run' --clip \"\$(ls '$OUT'/data/fan/test/normal_*.wav | head -1)\" --json '$OUT/bench.json' | tee '$OUT/bench.md' | grep int8 | tail -1"
# Exit 4 (a variant over its budget) is a finding the demo reports, not a failure of the demo.
stage "7/7 QA parity: AUC and score drift of every variant vs PyTorch" parity \
  bash -c "'$BIN/mtad-parity' --run '$OUT/run' --bundle '$OUT/bundle' --data '$OUT/data' --json '$OUT/parity.json' --plot '$OUT/parity.png' --quiet; rc=\$?; [ \$rc -eq 0 ] || [ \$rc -eq 4 ]"

printf '\ndemo finished in %d s; outputs in %s/ (run/, bundle/, plots/, eval.json, bench.md, parity.json, logs/)\n' "$(( $(date +%s) - start ))" "$OUT"
