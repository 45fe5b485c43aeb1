#!/usr/bin/env bash
# Session 22: the new measure `margin_excess` (and `max_margin` beside it) of every development
# model still on disk, from a scan whose CEPA stage runs 5 steps (neither depends on it), one
# line per model and class in eval/stats-dev-s22/measures.jsonl.
#   bash eval/stats-dev-s22/survey.sh [target/release/cepa]
set -euo pipefail
cepa=${1:-target/release/cepa}
here=eval/stats-dev-s22
tmp=target/survey-s22
printf '[scan.cepa]\nsteps = 5\ninfeasible_factor = 1\n' >"$tmp.toml"
: >"$here/measures.jsonl"
for z in target/zoo-judge-s20 target/zoo-judge-allconv target/zoo-judge-s21 zoo/real; do
  n=$(basename "$z")
  [ -d "$tmp/$n" ] || "$cepa" eval "$z" --detector cepa --config "$tmp.toml" --out "$tmp/$n" -q
  for f in "$tmp/$n"/reports/cepa/*.json; do
    jq -c --arg m "$(basename "$f" .json)" '.decision.classes[] | {model: $m, class,
      max_margin: (.statistics[] | select(.statistic == "max_margin") | .value),
      margin_excess: (.statistics[] | select(.statistic == "margin_excess") | .value)}' "$f" >>"$here/measures.jsonl"
  done
done
wc -l "$here/measures.jsonl"
