#!/usr/bin/env bash
# Session 23: the 74 development scans of target/pool-s22b (eval/stats-dev-s22/merge-b.sh)
# joined with the measure added in session 23 (`margin_blend`, from blend.jsonl, made by
# survey-blend.sh), so that candidate rules are decided by `cepa eval --rescore` without
# optimising CEPA again. `margin_blend` does not depend on CEPA's optimisation (the
# largest-margin search starts from the seed alone; the blended images are the scan's held-out
# ones), so the join is what a full scan with the session-23 binary reports.
#   bash eval/stats-dev-s23/merge.sh
set -euo pipefail
out=target/pool-s23
here=eval/stats-dev-s23
[ -d target/pool-s22b ] || bash eval/stats-dev-s22/merge-b.sh
rm -rf "$out"
mkdir -p "$out/reports/cepa"
cp target/pool-s22b/results.jsonl target/pool-s22b/settings.json target/pool-s22b/manifest.json "$out/"
for f in target/pool-s22b/reports/cepa/*.json; do
  m=$(basename "$f" .json)
  jq --slurpfile add <(jq -c --arg m "$m" 'select(.model == $m)' "$here/blend.jsonl") '
    if ($add | length) == 0 then error("no measures for \(input_filename)") else . end
    | .decision.classes |= map(. as $c | .statistics |= map(select(.statistic != "margin_blend"))
      | .statistics += [$add[] | select(.class == $c.class)
        | {statistic: "margin_blend", layer: null, value: .margin_blend}])' "$f" >"$out/reports/cepa/$m.json"
done
echo "pooled: $(ls "$out/reports/cepa" | wc -l) models"
