#!/usr/bin/env bash
# Session 24: CEPA scans with one consensus per (source, target) pair (`consensus = "pair"`) of
# every development model on disk (the 74 of target/pool-s23: judge-s20, judge-allconv,
# judge-s21, judge-s22 and the four real models), the margin search off: the largest-margin
# statistics do not depend on the consensus (the search starts from the seed alone), so
# merge-pair.sh takes them from the saved scans.
#   bash eval/stats-dev-s24/survey-pool-pair.sh [target/release/cepa]
set -euo pipefail
cepa=${1:-target/release/cepa}
tmp=target/survey-s24
mkdir -p "$tmp"
printf '[scan.cepa]\nmargin_steps = 0\nmargin_blend_samples = 0\nconsensus = "pair"\n' >"$tmp/pair.toml"
for z in target/zoo-judge-s20 target/zoo-judge-allconv target/zoo-judge-s21 target/zoo-judge-s22 zoo/real; do
  n=$(basename "$z")
  "$cepa" eval "$z" --detector cepa --config "$tmp/pair.toml" --out "$tmp/pool-pair/$n" -q
done
