#!/bin/bash
# Train and scan on the lent 16-core machine: for each model id of ids.txt, `cepa zoo build
# --only ID` into its own folder (its own manifest, so that parallel builds never write one
# file), then `cepa eval --detector all` on it; 8 at a time, 2 cores each, all stopped by a
# deadline, everything tarred into one file. Made ready by:
#   mkdir -p target/gpu/data && cp -r ../shared/data/fashion-mnist target/gpu/data/
#   sed 's|^data_root = .*|data_root = "data"|' zoo/holdout.toml > target/gpu/zoo.toml
#   cp target/debug/cepa target/gpu/ && strip target/gpu/cepa
#   cp scripts/device/build_scan.sh target/gpu/run.sh; (ids, one a line, longest first) > target/gpu/ids.txt
# device tool: run  command="BUDGET=540 target/gpu/run.sh"  carry=["target/gpu"]
# A model already built here can travel as target/gpu/built/ID/ (its zoo folder): it is scanned only.
cd "$(dirname "$0")"
echo "cores $(nproc)"
export DEADLINE=$(( $(date +%s) + ${BUDGET:-540} ))
mkdir -p "$OUT/r"
xargs -a ids.txt -P 8 --process-slot-var=SLOT -L1 bash -c '
  id=$0; dir="$OUT/r/$id"; c=$(( SLOT * 2 )); start=$(date +%s)
  left=$(( DEADLINE - start )); [ $left -lt 60 ] && { echo "$id skipped"; exit 0; }
  if [ -d "built/$id" ]; then cp -r "built/$id" "$dir"; else
    timeout $left taskset -c $c,$((c+1)) ./cepa zoo build --config zoo.toml --out "$dir" --only $id -q > "$OUT/r/build-$id.txt" 2>&1
    echo "$id built, exit $? $(( $(date +%s) - start )) s"
  fi
  left=$(( DEADLINE - $(date +%s) )); [ $left -lt 30 ] && { echo "$id not scanned"; exit 0; }
  s2=$(date +%s)
  timeout $left taskset -c $c,$((c+1)) ./cepa eval "$dir" --detector all --data-root data --out "$dir/eval" -q > "$OUT/r/eval-$id.txt" 2>&1
  echo "$id scanned, exit $? $(( $(date +%s) - s2 )) s"'
tar czf "$OUT/all.tgz" -C "$OUT" r && rm -rf "$OUT/r"
ls -la "$OUT"
