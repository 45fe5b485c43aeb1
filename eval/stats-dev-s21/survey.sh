#!/usr/bin/env bash
# Session 21: the two new measures (`universal_norm`, `max_margin`) of every development model
# still on disk, from a scan whose CEPA stage runs 5 steps (the measures do not depend on it),
# written one line per model and class to eval/stats-dev-s21/measures.jsonl.
#   bash eval/stats-dev-s21/survey.sh [target/release/cepa]
set -euo pipefail
cepa=${1:-target/release/cepa}
here=eval/stats-dev-s21
tmp=target/survey-s21
printf '[scan.cepa]\nsteps = 5\ninfeasible_factor = 1\n' >"$tmp.toml"
: >"$here/measures.jsonl"
for z in target/zoo-judge-s20 target/zoo-judge-allconv zoo/real; do
  n=$(basename "$z")
  [ -d "$tmp/$n" ] || "$cepa" eval "$z" --detector cepa --config "$tmp.toml" --out "$tmp/$n" -q
  for f in "$tmp/$n"/reports/cepa/*.json; do
    jq -c --arg m "$(basename "$f" .json)" '.decision.classes[] | {model: $m, class,
      universal_norm: (.statistics[] | select(.statistic == "universal_norm") | .value),
      max_margin: (.statistics[] | select(.statistic == "max_margin") | .value)}' "$f" >>"$here/measures.jsonl"
  done
done
wc -l "$here/measures.jsonl"
