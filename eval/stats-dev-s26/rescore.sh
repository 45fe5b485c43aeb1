#!/bin/bash
# Session 26, development only: the frozen rule and three index floors, decided again
# (`cepa eval --rescore`, nothing optimised) on every population whose scans are saved:
# the 76 scans of target/pool-s23 (judge-s20, judge-allconv, judge-s21, judge-s22, the real
# models; rebuilt by eval/stats-dev-s23), the CIFAR-10 standard zoo of session 23, and judge-s25.
set -eu
cd "$(dirname "$0")/../.."
B=${CEPA:-./target/release/cepa}
OUT=${OUT:-target/s26/floor}
for rule in default floor0 floor-0.5 floor-1; do
  cfg=(); [ "$rule" = default ] || cfg=(--config eval/stats-dev-s26/$rule.toml)
  $B eval target/pool-s23/manifest.json --rescore --from target/pool-s23 "${cfg[@]}" --out $OUT/pool-$rule -q >/dev/null
  $B eval eval/zoo-standard-cifar10-s23-manifest.json --rescore --from eval/standard-cifar10-s23 "${cfg[@]}" --out $OUT/std-$rule -q >/dev/null
  $B eval eval/zoo-judge-s25-manifest.json --rescore --from eval/judge-s25 "${cfg[@]}" --out $OUT/s25-$rule -q >/dev/null
done
