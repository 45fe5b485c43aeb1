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
srcs="target/s29/standard-cifar10 target/s29/judge-allconv target/s29/judge-s22 target/s29/real eval/realistic-cpu-s28"
manifests="target/zoo-standard/manifest.json target/zoo-judge-allconv/manifest.json target/zoo-judge-s22/manifest.json zoo/real/manifest.json eval/zoo-realistic-s28-manifest.json"
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
cp target/s29/standard-cifar10/settings.json "$out/"
echo "pooled: $(jq '.models | length' "$out/manifest.json") models, $(ls "$out/reports/cepa" | wc -l) reports"
