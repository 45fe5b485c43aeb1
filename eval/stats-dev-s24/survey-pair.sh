#!/usr/bin/env bash
# Session 24: `pair_agreement` (how far the (source, target) pairs' embedded consensuses agree)
# on the CIFAR-10 standard zoo (target/zoo-standard, development data), from CEPA scans with the
# consensus per target (the default) and per pair (`consensus = "pair"`); the margin search is
# off (not read here). One line per model, mode and class in eval/stats-dev-s24/pair.jsonl.
#   bash eval/stats-dev-s24/survey-pair.sh [target/release/cepa]
set -euo pipefail
cepa=${1:-target/release/cepa}
here=eval/stats-dev-s24
tmp=target/survey-s24
mkdir -p "$tmp"
for mode in target pair; do
  printf '[scan.cepa]\nmargin_steps = 0\nmargin_blend_samples = 0\nconsensus = "%s"\n' "$mode" >"$tmp/$mode.toml"
  "$cepa" eval target/zoo-standard --only cifar10 --detector cepa --config "$tmp/$mode.toml" \
    --out "$tmp/$mode" -q
done
for mode in target pair; do
  for f in "$tmp/$mode"/reports/cepa/*.json; do
    jq -c --arg m "$(basename "$f" .json)" --arg mode "$mode" '.decision.classes[] | {model: $m,
      mode: $mode, class, delta_norm: (.statistics[] | select(.statistic == "delta_norm") | .value),
      pair_agreement: [.statistics[] | select(.statistic == "pair_agreement") | .value],
      dispersion: [.statistics[] | select(.statistic == "dispersion") | .value]}' "$f"
  done
done >"$here/pair.jsonl"
wc -l "$here/pair.jsonl"
