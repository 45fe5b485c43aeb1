#!/bin/bash
# Neural Cleanse on each model of ids.txt (a line "ID all" runs both detectors and an inversion
# instead), 8 at a time, 2 cores each, all stopped by a deadline; everything tarred into one file.
cd "$(dirname "$0")"  # target/gpu, made by scripts/device/bundle.py
echo "cores $(nproc)"
export DEADLINE=$(( $(date +%s) + ${BUDGET:-540} ))
export BIN=${BIN:-./cepa}
mkdir -p "$OUT/r"
xargs -a ids.txt -P 8 --process-slot-var=SLOT -L1 bash -c '
  id=$0; det=nc; extra=""
  [ "$1" = all ] && { det=all; extra=--invert; }
  left=$(( DEADLINE - $(date +%s) )); [ $left -lt 60 ] && { echo "$id skipped"; exit 0; }
  c=$(( SLOT * 2 ))
  start=$(date +%s)
  timeout $left taskset -c $c,$((c+1)) $BIN eval zoo --detector $det $extra --only $id --data-root data --out "$OUT/r/$id" -q > "$OUT/r/log-$id.txt" 2>&1
  echo "$id exit $? $(( $(date +%s) - start )) s"'
tar czf "$OUT/all.tgz" -C "$OUT" r && rm -rf "$OUT/r"
ls -la "$OUT"
