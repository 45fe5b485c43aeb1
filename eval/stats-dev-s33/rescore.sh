#!/usr/bin/env bash
# Session 33: every saved development evaluation with both detectors' reports, decided again by
# `cepa eval --rescore` under the default rule and under each rule of this folder (nothing is
# optimised again). Outputs (without the reports) are committed as RULE/GROUP/.
#   bash eval/stats-dev-s33/rescore.sh
set -euo pipefail
here=eval/stats-dev-s33
groups="standard:eval/zoo-standard-manifest.json
standard-cifar10-s23:eval/zoo-standard-cifar10-s23-manifest.json
standard-cifar10-s29:eval/zoo-standard-cifar10-s29-manifest.json
judge-allconv:eval/zoo-judge-allconv-manifest.json
judge-s20:eval/zoo-judge-s20-manifest.json
judge-s21:eval/zoo-judge-s21-manifest.json
judge-s22:eval/zoo-judge-s22-manifest.json
judge-s25:eval/zoo-judge-s25-manifest.json
judge-vgg:eval/zoo-judge-vgg-manifest.json
holdout-fashion:eval/zoo-holdout-manifest.json
holdout-resnet:eval/zoo-holdout-resnet-manifest.json
real-s29:zoo/real/manifest.json
judge-s33:eval/zoo-judge-s33-manifest.json"
for rule in default "$here"/*.toml; do
  name=$(basename "$rule" .toml)
  config=()
  [ "$rule" = default ] || config=(--config "$rule")
  for g in $groups; do
    group=${g%%:*}
    manifest=${g#*:}
    out="target/s33/rescore/$name/$group"
    target/release/cepa eval "$manifest" --rescore --from "eval/$group" "${config[@]}" --out "$out" >/dev/null
    mkdir -p "$here/$name/$group"
    cp "$out"/{evaluation.md,evaluation.json,results.jsonl,combined.jsonl} "$here/$name/$group/"
  done
done
