#!/usr/bin/env bash
# Session 33: every saved development evaluation with both detectors' reports (groups.txt: name,
# manifest; judge-s33 is development data since it judged the frozen rule), decided again by
# `cepa eval --rescore` under the default rule and under each rule of this folder (nothing is
# optimised again). Outputs (without the reports) are committed as RULE/GROUP/.
#   bash eval/stats-dev-s33/rescore.sh
set -euo pipefail
here=eval/stats-dev-s33
for rule in default "$here"/*.toml; do
  name=$(basename "$rule" .toml)
  config=()
  [ "$rule" = default ] || config=(--config "$rule")
  while read -r group manifest _; do
    out="target/s33/rescore/$name/$group"
    target/release/cepa eval "$manifest" --rescore --from "eval/$group" "${config[@]}" --out "$out" >/dev/null
    mkdir -p "$here/$name/$group"
    cp "$out"/{evaluation.md,evaluation.json,results.jsonl,combined.jsonl} "$here/$name/$group/"
  done <"$here/groups.txt"
done
