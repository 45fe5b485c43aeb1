#!/usr/bin/env bash
# Session 41 (issue 14): a decision variant (a settings file) against the default, on every saved
# scan that carries stimulation, and judge-s36's. Each folder is decided twice by
# `cepa eval --rescore` (the default, then CONFIG); variant_compare.py counts cepa's `agree` rows
# and lists the models whose verdict differs. judge-s41 joined the list after its scan, judge-s42
# after its (session 42: rank3, rank-off and confirm-off in eval/stats-dev-s42), judge-s43 after its.
#   bash eval/stats-dev-s41/variant.sh eval/stats-dev-s41/sum.toml > eval/stats-dev-s41/sum.txt
#   bash eval/stats-dev-s41/variant.sh eval/stats-dev-s33/sinks-stay.toml > eval/stats-dev-s41/sinks-stay.txt
set -euo pipefail
config=$1
cepa=${CEPA:-target/release/cepa}
work=target/s41/variant-$(basename "$config" .toml)
rm -rf "$work"
mkdir -p "$work"
for g in \
  "cifar-small eval/zoo-standard-cifar10-s39-manifest.json eval/standard-cifar10-s40" \
  "mf-small eval/stats-dev-s39/mnist-fashion-small-cnn-manifest.json eval/stats-dev-s39/mnist-fashion-small-cnn" \
  "gtsrb-small eval/stats-dev-s40/gtsrb-small-cnn-manifest.json eval/stats-dev-s40/gtsrb-small-cnn" \
  "judge-s36 eval/zoo-judge-s36-manifest.json eval/judge-s36" \
  "judge-s38 eval/zoo-judge-s38-manifest.json eval/judge-s38" \
  "judge-s39 eval/zoo-judge-s39-manifest.json eval/judge-s39" \
  "judge-s40 eval/zoo-judge-s40-manifest.json eval/judge-s40" \
  "judge-s40-mnist eval/zoo-judge-s40-mnist-manifest.json eval/judge-s40-mnist" \
  "judge-s41 eval/zoo-judge-s41-manifest.json eval/judge-s41" \
  "judge-s42 eval/zoo-judge-s42-manifest.json eval/judge-s42" \
  "judge-s43 eval/zoo-judge-s43-manifest.json eval/judge-s43"; do
  read -r name manifest from <<<"$g"
  "$cepa" eval "$manifest" --rescore --from "$from" --out "$work/$name-default" >/dev/null 2>&1
  "$cepa" eval "$manifest" --rescore --from "$from" --config "$config" \
    --out "$work/$name-variant" >/dev/null 2>&1
done
python3 eval/stats-dev-s41/variant_compare.py "$work"
