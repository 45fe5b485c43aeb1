#!/usr/bin/env bash
# Device run 3 of issue 15: a full-width population trained by PyTorch on the GPU
# (scripts/device/torch_population.py: PreAct-ResNet-18, BackdoorBench's recipe, clean + BadNets,
# Blend, WaNet, SIG, two seeds each, all ten side by side) and scanned by CEPA on the GPU (the
# CUDA build of the CLI, carried in .dev as for gpu_session.sh). Our own trainer ran at 265
# images/s on the device (run 2), 56 times slower than PyTorch, so it cannot train this
# population inside the session's 15 device minutes. Everything finishes by DEADLINE seconds.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
S="$OUT/summary.txt"; EPOCHS=${EPOCHS:-20}; DEADLINE=${DEADLINE:-320}
t0=$(date +%s)
left() { echo $((DEADLINE - ($(date +%s) - t0))); }
. scripts/device/setup.sh
RESERVE=150; . scripts/device/torch_train_all.sh
for id in $IDS; do tail -1 "/tmp/train-$id.log"; done | tee -a "$S"
echo "== CEPA scans (cepa eval --device cuda --detector cepa), one per model side by side" | tee -a "$S"
for id in $IDS; do
  [ -f "/tmp/tz/$id.onnx" ] || continue
  timeout $(( $(left) - 15 )) /tmp/cepa --device cuda eval /tmp/tz --detector cepa --only "$id" \
    --out "/tmp/ev/$id" -q > "/tmp/eval-$id.log" 2>&1 &
done
wait
echo "scanned at $(( $(date +%s) - t0 )) s" | tee -a "$S"
mkdir -p /tmp/eval; cat /tmp/ev/*/results.jsonl > /tmp/eval/results.jsonl 2>/dev/null
for d in /tmp/ev/*/; do cp -r "$d"/reports /tmp/eval/ 2>/dev/null; cp "$d"/settings.json /tmp/eval/ 2>/dev/null; done
/tmp/cepa eval /tmp/tz --detector cepa --out /tmp/eval --tables-only -q > /tmp/eval-tables.log 2>&1
cp /tmp/eval/evaluation.md "$OUT/" 2>/dev/null; grep -h "seconds\|error" /tmp/eval-*.log | tail -5 | tee -a "$S"
python3 - <<'PY' | tee -a "$S"
import json
for l in open("/tmp/eval/results.jsonl"):
    r = json.loads(l)
    print({k: r.get(k) for k in ("model", "attack", "truth_target", "flagged", "most_anomalous", "score", "seconds")})
PY
tar czf "$OUT/details.tgz" --exclude='*.onnx' -C /tmp tz eval $(cd /tmp && ls train-*.log eval-*.log) 2>/dev/null
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$S"
