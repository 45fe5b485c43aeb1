#!/usr/bin/env bash
# Session 22, after its judge: the development pool of merge.sh (53 models) with the judge of
# session 22 added (eval/judge-s22, 21 models, development data from then on), for measuring
# the margin gate (EVALUATION.md, "Session 22").
#   bash eval/stats-dev-s22/merge-b.sh      # needs target/pool-s22 (merge.sh)
set -euo pipefail
out=target/pool-s22b
[ -d target/pool-s22 ] || bash eval/stats-dev-s22/merge.sh
rm -rf "$out"
mkdir -p "$out/reports/cepa"
cp target/pool-s22/reports/cepa/*.json eval/judge-s22/reports/cepa/*.json "$out/reports/cepa/"
cat target/pool-s22/results.jsonl >"$out/results.jsonl"
jq -c 'select(.detector == "cepa" or .detector == "nc")' eval/judge-s22/results.jsonl >>"$out/results.jsonl"
cp target/pool-s22/settings.json "$out/settings.json"
jq -s '{models: [.[].models[]] | unique_by(.id)}' target/pool-s22/manifest.json \
  eval/zoo-judge-s22-manifest.json >"$out/manifest.json"
echo "pooled: $(jq -s 'map(select(.detector == "cepa")) | length' "$out/results.jsonl") models"
