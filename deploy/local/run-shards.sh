#!/usr/bin/env bash
# A population on one many-core machine without a scheduler (a lent 16-core machine, a
# workstation): N processes, each building and then scanning its own shard into the same
# folders (sharded files never collide), pinned to its own cores when taskset is there; then
# the manifest and the tables of everything. Resumable: rerun the same command.
#   deploy/local/run-shards.sh N CONFIG ZOO_DIR EVAL_DIR [cepa eval flags...]
# CEPA: the cepa binary (default: cepa on PATH). CORES_PER_SHARD (default 2).
set -euo pipefail
n=$1 config=$2 zoo=$3 out=$4
shift 4
cepa=${CEPA:-cepa}
per=${CORES_PER_SHARD:-2}
mkdir -p "$out"
for i in $(seq 0 $((n - 1))); do
  (
    pin=()
    if command -v taskset >/dev/null; then
      pin=(taskset -c "$((i * per))-$((i * per + per - 1))")
    fi
    "${pin[@]}" "$cepa" zoo build --config "$config" --out "$zoo" --shard "$i/$n" -q
    "${pin[@]}" "$cepa" eval "$zoo" --out "$out" --shard "$i/$n" "$@"
  ) > "$out/shard-$i-of-$n.log" 2>&1 &
done
status=0
for job in $(jobs -p); do
  wait "$job" || status=1
done
[ "$status" = 0 ] || echo "warning: a shard failed (logs: $out/shard-*-of-$n.log); rerun to resume" >&2
"$cepa" zoo build --config "$config" --out "$zoo" -q
"$cepa" eval "$zoo" --out "$out" --tables-only "$@"
