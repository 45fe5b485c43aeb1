#!/usr/bin/env bash
# Session 25 (issue 14, development data only): Neural Cleanse with a longer schedule
# (nc-long.toml: 1000 steps, the cost controller's and the early stop's patience 3x the default)
# on eight models of the CIFAR-10 standard zoo rebuilt in session 23 (target/zoo-standard):
# the four BadNets that count and the four clean models whose Neural Cleanse index was highest.
# Writes target/s25/zoo-sub (links to the models and a manifest of the eight) and
# target/s25/nc-long; nc-long-results.jsonl beside this script is its results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p target/s25/zoo-sub
python3 - <<'PY'
import json, os
m = json.load(open('target/zoo-standard/manifest.json'))
keep = {f'cifar10-badnets-s{s}' for s in (2, 3, 4, 6)} | {f'cifar10-clean-s{s}' for s in (1, 4, 7, 8)}
m['models'] = [e for e in m['models'] if e['id'] in keep]
for e in m['models']:
    for ext in ('.onnx', '.cepa.toml', '.json'):
        dst = f"target/s25/zoo-sub/{e['id']}{ext}"
        if not os.path.exists(dst):
            os.symlink(os.path.abspath(f"target/zoo-standard/{e['id']}{ext}"), dst)
json.dump(m, open('target/s25/zoo-sub/manifest.json', 'w'), indent=1)
PY
target/release/cepa eval target/s25/zoo-sub --detector nc --config eval/stats-dev-s25/nc-long.toml \
  --out target/s25/nc-long -q > /dev/null
