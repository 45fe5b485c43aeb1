#!/usr/bin/env bash
# Session 29: the development scans that measured `margin_patch` (every scan made since session
# 28), pooled into one folder so that candidate rules are decided by `cepa eval --rescore`:
#   the CIFAR-10 standard zoo rebuilt this session (clean, BadNets, SIG, chessboard; small CNN),
#   three clean models rebuilt because their largest margin stood out in earlier builds
#   (mnist-allconv-clean-s901, fashion-allconv-clean-s900, cifar10-vgg-clean-s1200),
#   the four real models, and the realistic CPU BadNets model of session 28.
#   bash eval/stats-dev-s29/pool.sh
set -euo pipefail
out=target/pool-s29
srcs="eval/standard-cifar10-s29 eval/stats-dev-s29/rebuilt-allconv eval/stats-dev-s29/rebuilt-vgg eval/real-s29 eval/realistic-cpu-s28"
manifests="eval/zoo-standard-cifar10-s29-manifest.json eval/stats-dev-s29/rebuilt-allconv-manifest.json eval/stats-dev-s29/rebuilt-vgg-manifest.json zoo/real/manifest.json eval/zoo-realistic-s28-manifest.json"
rm -rf "$out"
mkdir -p "$out/reports/cepa"
: >"$out/results.jsonl"
for s in $srcs; do
  cat "$s/results.jsonl" >>"$out/results.jsonl"
  cp "$s"/reports/cepa/*.json "$out/reports/cepa/"
done
# Only the models that were scanned (the standard zoo's other datasets and families were not
# built this session).
scanned=$(jq -R -s -c 'split("\n") | map(select(length > 0) | fromjson | .model) | unique' "$out/results.jsonl")
jq -s --argjson keep "$scanned" '{models: [.[].models[] | select(.id as $i | $keep | index($i))]}' $manifests >"$out/manifest.json"
cp eval/standard-cifar10-s29/settings.json "$out/"
echo "pooled: $(jq '.models | length' "$out/manifest.json") models, $(ls "$out/reports/cepa" | wc -l) reports"
# Every rule of this folder (and the default) decided again on the pool; the outputs (without
# the reports) are committed beside the rules as pool-RULE/.
for rule in default eval/stats-dev-s29/*.toml; do
  name=$(basename "$rule" .toml)
  config=()
  [ "$rule" = default ] || config=(--config "$rule")
  target/release/cepa eval "$out/manifest.json" --rescore --from "$out" "${config[@]}" \
    --out "target/pool-s29-$name" >/dev/null
  mkdir -p "eval/stats-dev-s29/pool-$name"
  cp "target/pool-s29-$name"/{evaluation.md,evaluation.json,results.jsonl,settings.json} \
    "eval/stats-dev-s29/pool-$name/"
done
