#!/usr/bin/env bash
# Session 24: join CEPA scans made with `consensus = "pair"` and the margin search off
# (survey-pair.sh, survey-pool-pair.sh) with the largest-margin statistics (`max_margin`,
# `margin_excess`, `margin_blend`) of the saved default scans of the same models, seed and images:
# those do not depend on the consensus, so the join is what a full pair-consensus scan reports.
# Neural Cleanse's lines are the saved scans'. The results are decided by `cepa eval --rescore`.
#   bash eval/stats-dev-s24/merge-pair.sh PAIR_REPORTS_DIR SAVED_POOL OUT
#   e.g. target/survey-s24/pair/reports/cepa eval/standard-cifar10-s23 target/s24/std-pair
set -euo pipefail
pair=$1 saved=$2 out=$3
rm -rf "$out"
mkdir -p "$out/reports/cepa"
cp "$saved/results.jsonl" "$saved/settings.json" "$out/"
[ -f "$saved/manifest.json" ] && cp "$saved/manifest.json" "$out/"
n=0
for f in "$saved"/reports/cepa/*.json; do
  m=$(basename "$f" .json)
  p="$pair/$m.json"
  [ -f "$p" ] || { echo "no pair scan of $m" >&2; exit 1; }
  jq --slurpfile s "$f" '
    def margins($c): [$s[0].decision.classes[] | select(.class == $c) | .statistics[]
      | select(.statistic == "max_margin" or .statistic == "margin_excess" or .statistic == "margin_blend")];
    .decision.classes |= map(. as $c | .statistics |= (map(select(.statistic != "max_margin"
      and .statistic != "margin_excess" and .statistic != "margin_blend")) + margins($c.class)))' \
    "$p" >"$out/reports/cepa/$m.json"
  n=$((n + 1))
done
echo "merged: $n models"
