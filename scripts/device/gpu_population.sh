#!/usr/bin/env bash
# For a lent device once our trainer is fast enough (not yet run there; checked here with
# DEV=cpu and a tiny config): the full-width population (clean + BadNets, Blend, WaNet, SIG, two
# seeds each: the `realistic-gpu-*` groups of zoo/realistic.toml) trained and scanned on the GPU.
# Carried: `.dev` as for gpu_session.sh; the groups are scripts/device/zoo-gpu.toml (with the
# epochs the device time allows). One build per model, all side by side on the one GPU, then one eval
# per model likewise, merged into one evaluation.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
DEV=${DEV:-cuda}; EVAL_ARGS=${EVAL_ARGS:-}
S="$OUT/summary.txt"; BUILD_S=${BUILD_S:-300}; EVAL_S=${EVAL_S:-150}
IDS=$(python3 -c "import tomllib; c=tomllib.load(open('scripts/device/zoo-gpu.toml','rb')); print(' '.join(f\"{m['name']}-s{s}\" for m in c['models'] for s in m['seeds']))")
. scripts/device/setup.sh
el() { awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $1}"; }
t0=$(date +%s.%N)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$S"
echo "== zoo build --device cuda, side by side: $IDS" | tee -a "$S"
for id in $IDS; do
  timeout "$BUILD_S" /tmp/cepa --device "$DEV" -v zoo build --config scripts/device/zoo-gpu.toml --out "/tmp/z/$id" \
    --only "$id" > "/tmp/build-$id.log" 2>&1 &
done
wait
echo "built in $(el $t0) s" | tee -a "$S"
mkdir -p /tmp/zoo; cp /tmp/z/*/*.onnx /tmp/z/*/*.json /tmp/z/*/*.toml /tmp/zoo/ 2>/dev/null; rm -f /tmp/zoo/manifest.json
/tmp/cepa zoo build --config scripts/device/zoo-gpu.toml --out /tmp/zoo -q 2>&1 | tail -2 | tee -a "$S"
python3 - <<'PY' | tee -a "$S"
import glob, json
for f in sorted(glob.glob("/tmp/zoo/*.json")):
    m = json.load(open(f))
    if "id" in m:
        n = m["params"]["train_images"] * m["params"]["train"]["epochs"]
        print(m["id"], m["clean_accuracy"], m["attack_success_rate"], round(m["train_seconds"], 1),
              f"{n / m['train_seconds']:.0f} images/s", m["device"])
PY
grep -h "trained one epoch" /tmp/build-*.log | tail -3 | tee -a "$S"
echo "== eval --device cuda --detector all, one per model side by side" | tee -a "$S"
t=$(date +%s.%N)
for id in $IDS; do
  timeout "$EVAL_S" /tmp/cepa --device "$DEV" eval /tmp/zoo --detector all $EVAL_ARGS --out "/tmp/ev/$id" \
    --only "$id" -q > "/tmp/eval-$id.log" 2>&1 &
done
wait
mkdir -p /tmp/eval; cat /tmp/ev/*/results.jsonl > /tmp/eval/results.jsonl
for d in /tmp/ev/*/; do cp -r "$d"/reports /tmp/eval/ 2>/dev/null; cp "$d"/settings.json /tmp/eval/ 2>/dev/null; done
/tmp/cepa eval /tmp/zoo --detector all $EVAL_ARGS --out /tmp/eval --tables-only -q > /tmp/eval-tables.log 2>&1
echo "evaluated in $(el $t) s (exit of the tables: $?)" | tee -a "$S"
tail -5 /tmp/eval-*.log | tee -a "$S"
cp /tmp/eval/evaluation.md "$OUT/" 2>/dev/null
echo "total $(el $t0) s" | tee -a "$S"
tar czf "$OUT/details.tgz" --exclude='*.onnx' --exclude='*.ckpt' -C /tmp eval zoo $(cd /tmp && ls build-*.log eval-*.log) 2>/dev/null
