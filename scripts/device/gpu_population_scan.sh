#!/usr/bin/env bash
# Device run of issue 15 (sessions 30-31): the full-width population of gpu_torch_population.sh
# (PyTorch, BackdoorBench's recipe, clean + BadNets, Blend, WaNet, SIG, seeds 600 and 601, all
# ten trained side by side), then scanned in one warm process rather than ten
# side by side (session 17's ten concurrent scans finished none in 225 s):
#   1. one CEPA scan alone, in a fresh process: the cold time of one full-width scan;
#   2. `eval --detector all` (CEPA and Neural Cleanse, which the default verdict `agree` needs)
#      over every model into the same folder, in one process: the compiled kernels and the
#      autotune choices are shared between models of one architecture.
# Carried: `.dev`: `bash scripts/device/build_cuda.sh` (the CUDA build, about 23 minutes cold
# here), then `EXTRA_TRAIN=3500 bash scripts/device/prepare.sh` (the CIFAR-10 subset, 13,500
# training images). The device tool carries the tracked tree too, and eval/ alone is 26 MB, so
# keep it out for the call: `git rm -r -q --cached eval && echo /eval/ >> .git/info/exclude`
# before, `git reset -q -- eval && sed -i '/^\/eval\/$/d' .git/info/exclude` after (nothing is
# committed in between; untried: session 30's call was refused before any transfer). Then run
# `bash scripts/device/gpu_population_scan.sh`, carry [".dev"],
# timeout 600.
# Everything finishes by DEADLINE seconds; the summary is $OUT/summary.txt, the details a tarball.
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
S="$OUT/summary.txt"; EPOCHS=${EPOCHS:-20}; DEADLINE=${DEADLINE:-570}
t0=$(date +%s)
left() { echo $((DEADLINE - ($(date +%s) - t0))); }
. scripts/device/setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$S"
# 0. Precision, beside the training (the training's `wait` waits for it too): every interpreter
#    fixture, CUDA against the CPU (1e-4 relative), with float32 products (build_cuda.sh's
#    default), and two of them again with TF32 allowed (CEPA_CUDA_TF32=1), all at once.
CEPA=/tmp/cepa; . scripts/device/fixture_check.sh
for onnx in "$FX"/*.onnx; do
  check_one "$onnx" 150 > "$OUT/fixtures/$(basename "$onnx" .onnx).line" 2>&1 &
done
for onnx in "$FX"/mobilenet-legacy-opset13.onnx "$FX"/opzoo-opset13.onnx; do
  TAG=-tf32 CEPA_CUDA_TF32=1 check_one "$onnx" 150 \
    > "$OUT/fixtures/$(basename "$onnx" .onnx)-tf32.line" 2>&1 &
done
RESERVE=300; . scripts/device/torch_train_all.sh
echo "== 0. precision, CUDA against the CPU (float32 products; -tf32: CEPA_CUDA_TF32=1)" | tee -a "$S"
cat "$OUT"/fixtures/*.line | tee -a "$S"

scan() { # $1 detector, $2 seconds, $3.. extra eval arguments
  local det=$1 lim=$2; shift 2
  local t=$(date +%s)
  timeout "$lim" /tmp/cepa --device cuda -v eval /tmp/tz --detector "$det" --out /tmp/eval "$@" \
    >> "/tmp/eval-$det.log" 2>&1
  echo "eval --detector $det $*: exit $?, $(( $(date +%s) - t )) s" | tee -a "$S"
}
# The scans run with TF32 allowed, the path session 17 ran and timed: the float32 one is new and
# unmeasured, and a failure of it must not cost the population (step 0 measures both).
export CEPA_CUDA_TF32=1
echo "== 1. one CEPA scan, cold process (CEPA_CUDA_TF32=1)" | tee -a "$S"
scan cepa $(( $(left) - 150 )) --only torch-clean-s600  # a clean model: never left out by --min-asr
grep -E "stage 1|layers" /tmp/eval-cepa.log | sed 's/\x1b\[[0-9;]*m//g' | tee -a "$S"
echo "== 2. both detectors on every model, one warm process" | tee -a "$S"
scan all $(( $(left) - 15 ))
/tmp/cepa eval /tmp/tz --out /tmp/eval --tables-only -q > /tmp/eval-tables.log 2>&1
cp /tmp/eval/evaluation.md "$OUT/" 2>/dev/null
python3 - <<'PY' | tee -a "$S"
import json
for l in open("/tmp/eval/results.jsonl"):
    r = json.loads(l)
    print({k: r.get(k) for k in ("model", "detector", "attack", "truth_target", "flagged",
                                 "target", "most_anomalous", "score", "seconds")})
PY
tar czf "$OUT/details.tgz" --exclude='*.onnx' -C /tmp tz eval $(cd /tmp && ls train-*.log eval-*.log) 2>/dev/null
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$S"
