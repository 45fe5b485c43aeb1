#!/usr/bin/env bash
# Session 40 (issue 14): the threshold of stimulation's single-value reading
# ([verdict] stimulation_positions_threshold, "TP") chosen by leave one dataset out, on the
# development scans of the networks that read their map position by position (the small CNN of
# zoo/standard.toml, whose last pool is flattened into a linear layer):
#   - CIFAR-10: the 36 saved scans of eval/standard-cifar10-s39, each with its stimulation
#     measured again by the binary of d680b5d (one-step CEPA: stimulation does not depend on it;
#     the channels' reading is checked equal to the saved one), in target/s40/pos-cifar:
#       CEPA=<binary of d680b5d> bash eval/stats-dev-s40/dump.sh target/s40/pos-cifar <the 36 models of target/zoo-dev-s3{6,7,8} and
#       target/zoo-standard-s39>
#   - MNIST and Fashion-MNIST: the 23 full scans of eval/stats-dev-s39/mnist-fashion-small-cnn
#     (made by the binary that has the reading).
# Every TP of the grid decides all 59 models again through `cepa eval --rescore --config`; the
# chooser (tp_choose.py) reads the `cepa-nc-agree` rows cepa wrote and computes no verdict.
#   bash eval/stats-dev-s40/tp-lodo.sh
set -euo pipefail
cepa=${CEPA:-target/release/cepa}
stim=${STIM:-target/s40/pos-cifar}
work=target/s40/tp
rm -rf "$work"
mkdir -p "$work"
# CIFAR-10: the saved scans with the new stimulation.
cp -r eval/standard-cifar10-s39 "$work/cifar"
python3 - "$work/cifar" "$stim" <<'PY'
import json, sys, glob, os
out, stim = sys.argv[1:]
for p in sorted(glob.glob(f'{out}/reports/cepa/*.json')):
    m = os.path.basename(p)[:-5]
    s = json.load(open(f'{stim}/{m}.json'))
    scan = json.load(open(p))
    old = scan['stimulation']
    # The channels' reading must be the one the saved scan holds (same images, same code).
    assert old['class'] == s['class'] and abs(old['index'] - s['index']) < 1e-6 * max(1, abs(s['index'])), (m, old['index'], s['index'])
    scan['stimulation'] = dict(s, seconds=old.get('seconds', 0.0))
    json.dump(scan, open(p, 'w'), indent=1)
PY
for tp in 0 2 2.5 3 3.5 4 4.5 5 5.5 6 7 8 10; do
  printf '[verdict]\nstimulation_positions_threshold = %s\n' "$tp" > "$work/tp$tp.toml"
  "$cepa" eval eval/zoo-standard-cifar10-s39-manifest.json --rescore --from "$work/cifar" \
    --config "$work/tp$tp.toml" --out "$work/cifar-tp$tp" >/dev/null
  "$cepa" eval eval/stats-dev-s39/mnist-fashion-small-cnn-manifest.json --rescore \
    --from eval/stats-dev-s39/mnist-fashion-small-cnn --config "$work/tp$tp.toml" \
    --out "$work/mf-tp$tp" >/dev/null
done
python3 eval/stats-dev-s40/tp_choose.py "$work"
# The CIFAR-10 zoo under the chosen threshold (the default since session 40), with the merged
# scans beside it (session 39's table, eval/standard-cifar10-s39, is decided from these scans
# again under eval/stats-dev-s40/rule-b55636e.toml by the rescore test).
rm -rf eval/standard-cifar10-s40
"$cepa" eval eval/zoo-standard-cifar10-s39-manifest.json --rescore --from "$work/cifar" \
  --config "$work/tp5.toml" --out eval/standard-cifar10-s40 >/dev/null
cp -r "$work/cifar/reports/nc" eval/standard-cifar10-s40/reports/
