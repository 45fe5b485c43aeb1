#!/usr/bin/env bash
# A population on one many-core machine without a scheduler (a lent 16-core machine, a
# workstation): N processes build their shards of the zoo side by side, then the manifest is
# written once, then N processes scan their shards into the same evaluation folder (sharded
# files never collide), each pinned to its own cores when taskset is there and the machine has
# them; then the tables of everything. Resumable: rerun the same command (a kill, e.g. by
# `timeout`, loses at most the models in progress).
#   deploy/local/run-shards.sh N CONFIG ZOO_DIR EVAL_DIR [cepa eval flags...]
# CEPA: the cepa binary (default: cepa on PATH). CORES_PER_SHARD (default 2).
set -euo pipefail
n=$1 config=$2 zoo=$3 out=$4
shift 4
cepa=${CEPA:-cepa}
per=${CORES_PER_SHARD:-2}
mkdir -p "$out"
cores=$(nproc 2>/dev/null || echo 1)

# Runs "$@" for every shard, side by side, each pinned; fails when one failed.
each_shard() {
  local phase=$1
  shift
  local pids=() i
  for i in $(seq 0 $((n - 1))); do
    local pin=()
    if command -v taskset >/dev/null && [ $(((i + 1) * per)) -le "$cores" ]; then
      pin=(taskset -c "$((i * per))-$((i * per + per - 1))")
    fi
    ${pin[@]+"${pin[@]}"} "$@" --shard "$i/$n" > "$out/$phase-shard-$i-of-$n.log" 2>&1 &
    pids+=($!)
  done
  local status=0 pid
  for pid in "${pids[@]}"; do
    wait "$pid" || status=1
  done
  if [ "$status" != 0 ]; then
    echo "error: a $phase shard failed (logs: $out/$phase-shard-*-of-$n.log); rerun to resume" >&2
    exit 1
  fi
}

each_shard build "$cepa" zoo build --config "$config" --out "$zoo" -q
# Every model built: the manifest, written once, before any shard reads it.
"$cepa" zoo build --config "$config" --out "$zoo" -q
each_shard eval "$cepa" eval "$zoo" --out "$out" "$@"
"$cepa" eval "$zoo" --out "$out" --tables-only "$@"
