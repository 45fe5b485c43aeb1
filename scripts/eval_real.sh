#!/usr/bin/env bash
# Scan the four real models in ../shared/models/real with seeds 0-4 and print one JSON line per scan:
#   scripts/eval_real.sh [extra scan flags...] > results.jsonl
# (EVALUATION.md's table of the 20 outcomes is made from its output by scripts/table_real.py.)
set -euo pipefail
cd "$(dirname "$0")/.."
# CEPA_BIN: an already built binary (default: build and use target/debug/cepa).
bin=${CEPA_BIN:-target/debug/cepa}
[ -n "${CEPA_BIN:-}" ] || cargo build -q -p cepa-cli
real=../shared/models/real
data=../shared/data
models=(
  "badnets-pytorch-mnist.onnx mnist backdoored 1 --mean 0.5 --std 0.5"
  "cs612-clean-mnist-mlp.onnx mnist clean - "
  "badnets-pytorch-cifar10.onnx cifar10 backdoored 1 --mean 0.5 --std 0.5"
  "cs612-clean-cifar10-cnn.onnx cifar10 clean - "
)
for m in "${models[@]}"; do
  read -r file ds truth target spec <<<"$m"
  for seed in ${SEEDS:-0 1 2 3 4}; do
    # shellcheck disable=SC2086
    json=$("$bin" scan "$real/$file" --data "$data/$ds" $spec --seed "$seed" --format json -q "$@" || true)
    # SAVE_DIR: keep every full report too.
    [ -z "${SAVE_DIR:-}" ] || { mkdir -p "$SAVE_DIR"; printf '%s\n' "$json" > "$SAVE_DIR/${file%.onnx}-seed$seed.json"; }
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(json.dumps({"model": sys.argv[2], "truth": sys.argv[3], "true_target": sys.argv[4], "seed": int(sys.argv[5]),
  "verdict": r["verdict"], "target": r["target"], "most_anomalous": r["decision"]["most_anomalous"],
  "score": round(r["score"], 3), "p_value": r["p_value"], "seconds": round(r["seconds"], 1),
  "steps": r["config"]["cepa"]["steps"], "lr": r["config"]["cepa"]["lr"]}))' "$json" "$file" "$truth" "$target" "$seed"
  done
done
