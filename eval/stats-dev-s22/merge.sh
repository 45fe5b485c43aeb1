#!/usr/bin/env bash
# Session 22: the development scans still on disk with saved full reports (judge-s20,
# judge-allconv, the real models, judge-s21: 54 models), joined with the measure added in
# session 22 (`margin_excess`), so that candidate rules are decided by `cepa eval --rescore`
# without optimising CEPA again. `margin_excess` does not depend on CEPA's optimisation (the
# largest-margin search starts from the seed alone; the clean margins are the scan's images),
# so the join is what a full scan with the session-22 binary reports.
#   bash eval/stats-dev-s22/merge.sh      # needs target/pool-s21 (eval/stats-dev-s21/merge.sh)
# measures.jsonl was made by survey.sh (a scan whose CEPA stage runs 5 steps).
set -euo pipefail
out=target/pool-s22
here=eval/stats-dev-s22
[ -d target/pool-s21 ] || bash eval/stats-dev-s21/merge.sh
rm -rf "$out"
mkdir -p "$out/reports/cepa"
cp target/pool-s21/results.jsonl "$out/results.jsonl"
jq -c 'select(.detector == "cepa" or .detector == "nc")' eval/judge-s21/results.jsonl >>"$out/results.jsonl"
for f in target/pool-s21/reports/cepa/*.json eval/judge-s21/reports/cepa/*.json; do
  m=$(basename "$f" .json)
  jq --slurpfile add <(jq -c --arg m "$m" 'select(.model == $m)' "$here/measures.jsonl") '
    if ($add | length) == 0 then error("no measures for \(input_filename)") else . end
    | .decision.classes |= map(. as $c | .statistics |= map(select(.statistic != "margin_excess"))
      | .statistics += [$add[] | select(.class == $c.class)
        | {statistic: "margin_excess", layer: null, value: .margin_excess}])' "$f" >"$out/reports/cepa/$m.json"
done
cp target/pool-s21/settings.json "$out/settings.json"
jq -s '{models: [.[].models[]] | unique_by(.id)}' target/pool-s21/manifest.json \
  eval/zoo-judge-s21-manifest.json >"$out/manifest.json"
echo "pooled: $(jq -s 'map(select(.detector == "cepa")) | length' "$out/results.jsonl") models"
