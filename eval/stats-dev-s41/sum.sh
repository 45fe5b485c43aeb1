#!/usr/bin/env bash
# Session 41 (issue 14): `[verdict] agree_score = "sum"` (where CEPA, Neural Cleanse and
# stimulation all single out one class, the sum of their relative scores over 2; two voices at
# one class count their mean as before) against the default, on every saved scan that carries
# stimulation. Each folder is decided twice by `cepa eval --rescore` (default, then
# eval/stats-dev-s41/sum.toml); sum_compare.py lists the models whose `agree` verdict differs.
#   bash eval/stats-dev-s41/sum.sh
set -euo pipefail
cepa=${CEPA:-target/release/cepa}
work=target/s41/sum
rm -rf "$work"
mkdir -p "$work"
for g in \
  "cifar-small eval/zoo-standard-cifar10-s39-manifest.json eval/standard-cifar10-s40" \
  "mf-small eval/stats-dev-s39/mnist-fashion-small-cnn-manifest.json eval/stats-dev-s39/mnist-fashion-small-cnn" \
  "gtsrb-small eval/stats-dev-s40/gtsrb-small-cnn-manifest.json eval/stats-dev-s40/gtsrb-small-cnn" \
  "judge-s38 eval/zoo-judge-s38-manifest.json eval/judge-s38" \
  "judge-s39 eval/zoo-judge-s39-manifest.json eval/judge-s39" \
  "judge-s40 eval/zoo-judge-s40-manifest.json eval/judge-s40" \
  "judge-s40-mnist eval/zoo-judge-s40-mnist-manifest.json eval/judge-s40-mnist"; do
  read -r name manifest from <<<"$g"
  "$cepa" eval "$manifest" --rescore --from "$from" --out "$work/$name-default" >/dev/null
  "$cepa" eval "$manifest" --rescore --from "$from" --config eval/stats-dev-s41/sum.toml \
    --out "$work/$name-sum" >/dev/null
done
python3 eval/stats-dev-s41/sum_compare.py "$work"
