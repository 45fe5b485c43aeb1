#!/usr/bin/env bash
# Session 39: the whole CIFAR-10 small-CNN zoo of zoo/standard.toml under the rule of b55636e.
# Session 29's 26 models (eval/standard-cifar10-s29, their stimulation put into the saved CEPA
# scans by eval/stats-dev-s38/merge.sh) and session 39's rebuilt Blend and WaNet models
# (built and scanned after the freeze by the binary of e3cb03c:
#   cepa zoo build --config zoo/standard.toml --only cifar10-blend --out target/zoo-standard-s39
#   cepa zoo build --config zoo/standard.toml --only cifar10-wanet --out target/zoo-standard-s39
#   cepa eval target/zoo-standard-s39 --detector all --out target/s39/eval-bw)
# in one folder, decided again by `cepa eval --rescore` into eval/standard-cifar10-s39.
#   bash eval/stats-dev-s39/merge-cifar.sh
# Since session 40 the scans (with the single-value reading) are kept in
# eval/standard-cifar10-s40/reports only, and this folder keeps its tables.
set -euo pipefail
bash eval/stats-dev-s38/merge.sh standard-cifar10-s29 >/dev/null
src29=target/s38/merged-standard-cifar10-s29
bw=${BW:-target/s39/eval-bw}
out=target/s39/merged-cifar
rm -rf "$out"
mkdir -p "$out/reports/cepa" "$out/reports/nc"
cp "$src29"/reports/cepa/*.json "$bw"/reports/cepa/*.json "$out/reports/cepa/"
cp "$src29"/reports/nc/*.json "$bw"/reports/nc/*.json "$out/reports/nc/"
cat "$src29/results.jsonl" "$bw/results.jsonl" > "$out/results.jsonl"
cp "$src29/settings.json" "$out/settings.json"
python3 - eval/zoo-standard-cifar10-s29-manifest.json target/zoo-standard-s39/manifest.json \
  > eval/zoo-standard-cifar10-s39-manifest.json <<'PY'
import json, sys
models = []
for p in sys.argv[1:]:
    models += json.load(open(p))['models']
json.dump({'models': models}, sys.stdout, indent=2)
print()
PY
rm -rf eval/standard-cifar10-s39
target/release/cepa eval eval/zoo-standard-cifar10-s39-manifest.json --rescore --from "$out" --out eval/standard-cifar10-s39 >/dev/null
cp -r "$out/reports" eval/standard-cifar10-s39/
echo eval/standard-cifar10-s39
