#!/usr/bin/env bash
# Session 32: the development evaluations of rescore.sh whose model ids do not collide (the
# first build of the standard zoo stands for its two CIFAR-10 rebuilds), pooled into one folder
# so that `cepa eval --rescore` sets each threshold leaving one dataset out, under the default
# rule and under layer_max. Outputs (without the reports) in pool-RULE/.
#   bash eval/stats-dev-s32/pool.sh
set -euo pipefail
here=eval/stats-dev-s32
out=target/s32/pool
groups="standard:eval/zoo-standard-manifest.json
judge-allconv:eval/zoo-judge-allconv-manifest.json
judge-s20:eval/zoo-judge-s20-manifest.json
judge-s21:eval/zoo-judge-s21-manifest.json
judge-s22:eval/zoo-judge-s22-manifest.json
judge-s25:eval/zoo-judge-s25-manifest.json
judge-vgg:eval/zoo-judge-vgg-manifest.json
holdout-fashion:eval/zoo-holdout-manifest.json
holdout-resnet:eval/zoo-holdout-resnet-manifest.json
real-s29:zoo/real/manifest.json"
rm -rf "$out"
mkdir -p "$out/reports/cepa"
: >"$out/results.jsonl"
manifests=()
for g in $groups; do
  group=${g%%:*}
  manifests+=("${g#*:}")
  cat "eval/$group/results.jsonl" >>"$out/results.jsonl"
  cp "eval/$group"/reports/cepa/*.json "$out/reports/cepa/"
done
scanned=$(jq -R -s -c 'split("\n") | map(select(length > 0) | fromjson | .model) | unique' "$out/results.jsonl")
jq -s --argjson keep "$scanned" '{models: [.[].models[] | select(.id as $i | $keep | index($i))]}' "${manifests[@]}" >"$out/manifest.json"
ids=$(jq '.models | length' "$out/manifest.json")
unique=$(jq '[.models[].id] | unique | length' "$out/manifest.json")
[ "$ids" = "$unique" ] || { echo "model ids collide: $ids models, $unique ids" >&2; exit 1; }
cp eval/standard/settings.json "$out/"
echo "pooled: $ids models, $(ls "$out/reports/cepa" | wc -l) reports"
for rule in default "$here"/layer-max.toml; do
  name=$(basename "$rule" .toml)
  config=()
  [ "$rule" = default ] || config=(--config "$rule")
  target/release/cepa eval "$out/manifest.json" --rescore --from "$out" "${config[@]}" \
    --out "target/s32/pool-$name" >/dev/null
  mkdir -p "$here/pool-$name"
  cp "target/s32/pool-$name"/{evaluation.md,evaluation.json} "$here/pool-$name/"
done
