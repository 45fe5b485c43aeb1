#!/usr/bin/env bash
# Session 33: the groups of groups.txt marked `pool` (their model ids do not collide; the first
# build of the standard zoo stands for its two CIFAR-10 rebuilds), pooled into one folder so that
# `cepa eval --rescore` sets each threshold leaving one dataset out, under the default rule and
# under each rule of this folder. Outputs (without the reports) in pool-RULE/.
#   bash eval/stats-dev-s33/pool.sh [FOLDER]   (a later session's folder with its own groups.txt)
set -euo pipefail
shopt -s nullglob
here=${1:-eval/stats-dev-s33}
out=target/$(basename "$here" | sed "s/^stats-dev-//")/pool
rm -rf "$out"
mkdir -p "$out/reports/cepa"
: >"$out/results.jsonl"
manifests=()
while read -r group manifest pool; do
  [ "$pool" = pool ] || continue
  manifests+=("$manifest")
  cat "eval/$group/results.jsonl" >>"$out/results.jsonl"
  cp "eval/$group"/reports/cepa/*.json "$out/reports/cepa/"
done <"$here/groups.txt"
scanned=$(jq -R -s -c 'split("\n") | map(select(length > 0) | fromjson | .model) | unique' "$out/results.jsonl")
jq -s --argjson keep "$scanned" '{models: [.[].models[] | select(.id as $i | $keep | index($i))]}' "${manifests[@]}" >"$out/manifest.json"
ids=$(jq '.models | length' "$out/manifest.json")
unique=$(jq '[.models[].id] | unique | length' "$out/manifest.json")
[ "$ids" = "$unique" ] || { echo "model ids collide: $ids models, $unique ids" >&2; exit 1; }
cp eval/standard/settings.json "$out/"
echo "pooled: $ids models, $(ls "$out/reports/cepa" | wc -l) reports"
for rule in default "$here"/*.toml; do
  name=$(basename "$rule" .toml)
  config=()
  [ "$rule" = default ] || config=(--config "$rule")
  target/release/cepa eval "$out/manifest.json" --rescore --from "$out" "${config[@]}" \
    --out "$out-$name" >/dev/null
  mkdir -p "$here/pool-$name"
  cp "$out-$name"/{evaluation.md,evaluation.json} "$here/pool-$name/"
done
