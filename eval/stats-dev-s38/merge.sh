#!/usr/bin/env bash
# Session 38: the development scans of GROUP (eval/GROUP: CEPA and Neural Cleanse, saved before
# channel stimulation existed) with each model's stimulation (eval/stats-dev-s38/stimulation.jsonl,
# measured on the same models rebuilt, on the same clean images) put into its saved CEPA scan, in
# target/s38/merged-GROUP; then `cepa eval --rescore` decides them under the current rule.
#   bash eval/stats-dev-s38/merge.sh GROUP    (standard-cifar10-s29, judge-s21, judge-s36)
set -euo pipefail
group=$1
out=target/s38/merged-$group
rm -rf "$out"
mkdir -p "$out"
cp -r "eval/$group/." "$out/"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for line in open('eval/stats-dev-s38/stimulation.jsonl'):
    r = json.loads(line)
    path = f"{out}/reports/cepa/{r['model']}.json"
    try:
        scan = json.load(open(path))
    except FileNotFoundError:
        continue
    if r['stimulation'] is not None:
        scan['stimulation'] = dict(r['stimulation'], seconds=0.0)
    json.dump(scan, open(path, 'w'), indent=1)
PY
target/release/cepa eval "eval/zoo-$group-manifest.json" --rescore --from "$out" --out "$out-rescored" >/dev/null
echo "$out-rescored"
