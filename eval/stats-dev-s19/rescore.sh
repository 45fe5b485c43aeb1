#!/usr/bin/env bash
# Session 19: the saved development scans (CEPA rescanned in session 18 with the per-source
# input_reach, Neural Cleanse's results of the same models) decided again under the default
# rule and under each leave-one-dataset-out fold's settings. No model is opened.
#   bash eval/stats-dev-s19/rescore.sh [target/release/cepa]
set -euo pipefail
cepa=${1:-target/release/cepa}
s18=eval/stats-dev-s18
out=eval/stats-dev-s19
declare -A manifest=(
  [dev]=$s18/zoo-dev-manifest.json
  [judge-vgg]=eval/zoo-judge-vgg-manifest.json
  [real]=zoo/real/manifest.json
  [realistic]=eval/zoo-realistic-manifest.json
  [realistic30]=eval/zoo-realistic-30ep-manifest.json
  [cifar-small]=eval/stats-dev-s15/zoo-standard-rebuilt-manifest.json
)
for set in dev judge-vgg real realistic realistic30 cifar-small; do
  for rule in default rank-off confirm-off fold-mnist fold-fashion; do
    cfg=()
    [ "$rule" != default ] && cfg=(--config "$out/$rule.toml")
    "$cepa" eval "${manifest[$set]}" --rescore --from "$s18/src-$set" \
      --out "$out/rs-$rule-$set" "${cfg[@]}" -q
  done
done
