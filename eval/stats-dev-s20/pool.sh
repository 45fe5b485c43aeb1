#!/usr/bin/env bash
# Session 20: every development scan that both detectors judged, pooled in one folder
# (target/pool-s20: the saved scans' results and CEPA reports, linked, and one manifest), then
# decided again under the frozen rule of session 19 (`agree_score = "larger"`, 0.973) and under
# the default (`"mean"`, 0.947). Each output folder's leave-one-dataset-out.json is the table of
# EVALUATION.md, "Session 20". No model is opened.
#   bash eval/stats-dev-s20/pool.sh [target/release/cepa]
# Where a model was scanned again in session 18 (per-source reach), that scan is the one used.
set -euo pipefail
cepa=${1:-target/release/cepa}
pool=target/pool-s20
out=eval/stats-dev-s20
s18=eval/stats-dev-s18
# source folder : manifest
sets=(
  "$s18/src-dev:$s18/zoo-dev-manifest.json"
  "$s18/src-judge-vgg:eval/zoo-judge-vgg-manifest.json"
  "$s18/src-real:zoo/real/manifest.json"
  "$s18/src-realistic:eval/zoo-realistic-manifest.json"
  "$s18/src-realistic30:eval/zoo-realistic-30ep-manifest.json"
  "eval/judge-allconv:eval/zoo-judge-allconv-manifest.json"
  "eval/standard:eval/zoo-standard-manifest.json"
  "eval/holdout-fashion:eval/zoo-holdout-manifest.json"
  "eval/holdout-resnet:eval/zoo-holdout-resnet-manifest.json"
  "eval/judge-full:eval/zoo-judge-manifest.json"
)
rm -rf "$pool"
mkdir -p "$pool/reports/cepa"
: >"$pool/results.jsonl"
manifests=()
for s in "${sets[@]}"; do
  src=${s%%:*} man=${s#*:}
  manifests+=("$man")
  # The models this set adds: those no earlier set holds.
  jq -c --slurpfile seen <(jq -s '[.[].model] | unique' "$pool/results.jsonl") \
    'select(.detector == "cepa" or .detector == "nc") | select(.model as $m | $seen[0] | index($m) | not)' \
    "$src/results.jsonl" >"$pool/add.jsonl"
  for m in $(jq -r 'select(.detector == "cepa") | .model' "$pool/add.jsonl"); do
    ln -s "$PWD/$src/reports/cepa/$m.json" "$pool/reports/cepa/$m.json"
  done
  cat "$pool/add.jsonl" >>"$pool/results.jsonl"
done
rm "$pool/add.jsonl"
cp "$s18/src-dev/settings.json" "$pool/settings.json"
jq -s '{models: [.[].models[]] | unique_by(.id)}' "${manifests[@]}" >"$pool/manifest.json"
echo "pooled: $(jq -s 'map(select(.detector == "cepa")) | length' "$pool/results.jsonl") models"
"$cepa" eval "$pool/manifest.json" --rescore --from "$pool" --out "$out/pool-larger" \
  --config "$out/larger.toml" -q
"$cepa" eval "$pool/manifest.json" --rescore --from "$pool" --out "$out/pool-mean" -q
