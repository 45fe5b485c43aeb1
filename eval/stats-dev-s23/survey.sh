#!/usr/bin/env bash
# Session 23: the measure `local_margin` (the median margin that clean images of the other
# classes reach within a small input change, `[scan.cepa] local_steps`, off by default) on the
# CIFAR-10 models of judge-s22 (development data since session 22), at the radius given, from a
# scan whose CEPA stage runs 1 step and whose data-free margin search is off (neither is read
# here). One line per model and class in eval/stats-dev-s23/local-margin-RADIUS.jsonl.
#   bash eval/stats-dev-s23/survey.sh [target/release/cepa] [radius]
set -euo pipefail
cepa=${1:-target/release/cepa}
r=${2:-0.02}
here=eval/stats-dev-s23
tmp=target/survey-s23/r$r
mkdir -p "$tmp"
printf '[scan.cepa]\nsteps = 1\ninfeasible_factor = 1\nmargin_steps = 0\nlocal_steps = 40\nlocal_radius = %s\n' "$r" >"$tmp.toml"
[ -s "$tmp/results.jsonl" ] ||
  "$cepa" eval target/zoo-judge-s22 --only cifar10 --detector cepa --config "$tmp.toml" --out "$tmp" -q
for f in "$tmp"/reports/cepa/*.json; do
  jq -c --arg m "$(basename "$f" .json)" '.decision.classes[] | {model: $m, class,
    local_margin: (.statistics[] | select(.statistic == "local_margin") | .value)}' "$f"
done >"$here/local-margin-$r.jsonl"
wc -l "$here/local-margin-$r.jsonl"
