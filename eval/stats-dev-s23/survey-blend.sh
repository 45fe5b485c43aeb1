#!/usr/bin/env bash
# Session 23: the measure `margin_blend` (how little of a class's largest-margin input, blended
# into clean images of the other classes, carries them to the class) of every development model
# still on disk (the 74 of target/pool-s22b: judge-s20, judge-allconv, judge-s21, judge-s22 and
# the four real models), from a scan whose CEPA stage runs 1 step (not read here). One line per
# model and class in eval/stats-dev-s23/blend.jsonl, with max_margin and margin_excess beside it
# (equal to the saved scans' values: the search is unchanged).
#   bash eval/stats-dev-s23/survey-blend.sh [target/release/cepa]
set -euo pipefail
cepa=${1:-target/release/cepa}
here=eval/stats-dev-s23
tmp=target/survey-s23/blend
mkdir -p "$tmp"
printf '[scan.cepa]\nsteps = 1\ninfeasible_factor = 1\n' >"$tmp.toml"
for z in target/zoo-judge-s20 target/zoo-judge-allconv target/zoo-judge-s21 target/zoo-judge-s22 zoo/real; do
  n=$(basename "$z")
  [ -s "$tmp/$n/results.jsonl" ] ||
    "$cepa" eval "$z" --detector cepa --config "$tmp.toml" --out "$tmp/$n" -q
done
for f in "$tmp"/*/reports/cepa/*.json; do
  jq -c --arg m "$(basename "$f" .json)" '.decision.classes[] | {model: $m, class,
    max_margin: (.statistics[] | select(.statistic == "max_margin") | .value),
    margin_excess: (.statistics[] | select(.statistic == "margin_excess") | .value),
    margin_blend: (.statistics[] | select(.statistic == "margin_blend") | .value)}' "$f"
done >"$here/blend.jsonl"
wc -l "$here/blend.jsonl"
