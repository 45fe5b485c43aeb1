#!/usr/bin/env bash
# Session 40 (issue 14): the threshold of stimulation's single-value reading
# ([verdict] stimulation_positions_threshold, "TP") chosen by leave one dataset out, on the
# development scans of the networks that read their map position by position (the small CNN of
# zoo/standard.toml, whose last pool is flattened into a linear layer):
#   - CIFAR-10: the 36 saved scans of eval/standard-cifar10-s40: session 39's scans
#     (eval/standard-cifar10-s39) with each model's stimulation measured again by the binary of
#     d680b5d, which has the reading (one-step CEPA: stimulation does not depend on it; the
#     channels' reading was checked equal to the saved one when they were merged, in session 40:
#       CEPA=<binary of d680b5d> bash eval/stats-dev-s40/dump.sh target/s40/pos-cifar <the 36
#       models of target/zoo-dev-s3{6,7,8} and target/zoo-standard-s39>
#     then put into the saved scans; this script did so until session 41, when it was changed to
#     read the merged scans, committed, rather than session 39's reports, since removed).
#   - MNIST and Fashion-MNIST: the 23 full scans of eval/stats-dev-s39/mnist-fashion-small-cnn
#     (made by the binary that has the reading).
#   - GTSRB-32 (session 41, the fourth fold): the 4 full scans of eval/stats-dev-s40/gtsrb-small-cnn,
#     made after the freeze (session 40's table, tp-lodo.txt, has the first three folds only;
#     session 41's, eval/stats-dev-s41/tp-lodo4.txt, all four).
# Every TP of the grid decides all the models again through `cepa eval --rescore --config`; the
# chooser (tp_choose.py) reads the `cepa-nc-agree` rows cepa wrote and computes no verdict.
#   bash eval/stats-dev-s40/tp-lodo.sh
set -euo pipefail
cepa=${CEPA:-target/release/cepa}
work=target/s40/tp
rm -rf "$work"
mkdir -p "$work"
groups=(
  "cifar eval/zoo-standard-cifar10-s39-manifest.json eval/standard-cifar10-s40"
  "mf eval/stats-dev-s39/mnist-fashion-small-cnn-manifest.json eval/stats-dev-s39/mnist-fashion-small-cnn"
  "gtsrb eval/stats-dev-s40/gtsrb-small-cnn-manifest.json eval/stats-dev-s40/gtsrb-small-cnn"
)
for tp in 0 2 2.5 3 3.5 4 4.5 5 5.5 6 7 8 10; do
  printf '[verdict]\nstimulation_positions_threshold = %s\n' "$tp" > "$work/tp$tp.toml"
  for g in "${groups[@]}"; do
    read -r name manifest from <<<"$g"
    "$cepa" eval "$manifest" --rescore --from "$from" --config "$work/tp$tp.toml" \
      --out "$work/$name-tp$tp" >/dev/null
  done
done
python3 eval/stats-dev-s40/tp_choose.py "$work"
