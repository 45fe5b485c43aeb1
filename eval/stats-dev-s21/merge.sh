#!/usr/bin/env bash
# Session 21: the development scans of sessions 19-20 (judge-s20, judge-allconv, the real
# models), their saved full CEPA reports joined with the two measures added in session 21
# (`universal_norm`, `max_margin`), so that candidate rules can be decided by `cepa eval
# --rescore` without optimising CEPA again. Neither measure depends on CEPA's optimisation (each
# starts from the same clean images or from the seed alone), so the join is what a full scan
# with the session-21 binary reports (checked on cifar10-vgg-sig-s1000: the same mean indices
# and margins to the last digit).
#   bash eval/stats-dev-s21/merge.sh            # uses eval/stats-dev-s21/measures.jsonl
# measures.jsonl was made by survey.sh (a scan whose CEPA stage runs 5 steps, for the two
# measures only).
set -euo pipefail
out=target/pool-s21
here=eval/stats-dev-s21
sets=(
  "eval/judge-s20:eval/zoo-judge-s20-manifest.json"
  "eval/judge-allconv:eval/zoo-judge-allconv-manifest.json"
  "eval/real:zoo/real/manifest.json"
)
rm -rf "$out"
mkdir -p "$out/reports/cepa"
: >"$out/results.jsonl"
manifests=()
for s in "${sets[@]}"; do
  src=${s%%:*} man=${s#*:}
  manifests+=("$man")
  jq -c 'select(.detector == "cepa" or .detector == "nc")' "$src/results.jsonl" >>"$out/results.jsonl"
  for f in "$src"/reports/cepa/*.json; do
    m=$(basename "$f" .json)
    jq --slurpfile add <(jq -c --arg m "$m" 'select(.model == $m)' "$here/measures.jsonl") '
      .decision.classes |= map(. as $c | .statistics += [
        $add[] | select(.class == $c.class) | {statistic: "universal_norm", layer: null, value: .universal_norm},
        {statistic: "max_margin", layer: null, value: .max_margin}] )' "$f" >"$out/reports/cepa/$m.json"
  done
done
cp eval/judge-s20/settings.json "$out/settings.json"
jq -s '{models: [.[].models[]] | unique_by(.id)}' "${manifests[@]}" >"$out/manifest.json"
echo "pooled: $(jq -s 'map(select(.detector == "cepa")) | length' "$out/results.jsonl") models"
