#!/bin/bash
# CEPA variants (per_class 20; layer pool1) on chosen CIFAR models, 16 at a time, 1 core each.
cd "$(dirname "$0")"  # target/gpu, made by scripts/device/bundle.py
echo "cores $(nproc)"
export DEADLINE=$(( $(date +%s) + ${BUDGET:-250} ))
export BIN=${BIN:-./cepa} RAYON_NUM_THREADS=1
mkdir -p "$OUT/r"
xargs -a jobs.txt -P 16 --process-slot-var=SLOT -L1 bash -c '
  v=$0; id=$1
  left=$(( DEADLINE - $(date +%s) )); [ $left -lt 30 ] && { echo "$v $id skipped"; exit 0; }
  start=$(date +%s)
  timeout $left taskset -c $SLOT $BIN eval zoo --detector cepa --config $v.toml --only $id --data-root data --out "$OUT/r/$v-$id" -q > "$OUT/r/log-$v-$id.txt" 2>&1
  echo "$v $id exit $? $(( $(date +%s) - start )) s"'
tar czf "$OUT/all.tgz" -C "$OUT" r && rm -rf "$OUT/r"
ls -la "$OUT"
