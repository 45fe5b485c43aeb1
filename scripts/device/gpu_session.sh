#!/usr/bin/env bash
# The device check of issue 15 (one call of the `device` tool, about 6 minutes; session 17's
# run 2). Carried: `.dev` (scripts/device/prepare.sh lays it out), holding the CUDA build of the
# CLI (.dev/cepa-cuda.xz, from scripts/device/build_cuda.sh) and a CIFAR-10 subset
# (data_batch_1, 10,000 training images, and the first 2,000 test records: what fits the 64 MiB
# the tool carries). The training probe is scripts/device/zoo-probe.toml (2 epochs of the
# full-width PreAct-ResNet-18, BadNets).
# Everything it reports lands in $OUT/summary.txt (and a tarball of the details).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
S="$OUT/summary.txt"
. scripts/device/setup.sh
t0=$(date +%s.%N)
el() { awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $1}"; }

rm -rf /tmp/gc /tmp/zoo; OUT=/tmp/gc bash scripts/device/gpu_check.sh /tmp/cepa > /tmp/gc.log 2>&1
cat /tmp/gc/summary.txt >> "$S"; echo "gpu_check: $(el $t0) s" | tee -a "$S"

echo "== zoo build --device cuda: full-width PreAct-ResNet-18, 2 epochs" | tee -a "$S"
t=$(date +%s.%N)
timeout 150 /tmp/cepa --device cuda -v zoo build --config scripts/device/zoo-probe.toml --out /tmp/zoo \
  > /tmp/zoo.log 2>&1; echo "exit $?, $(el $t) s" | tee -a "$S"
grep -E "trained one epoch|error|Error" /tmp/zoo.log | tail -6 | tee -a "$S"
python3 -c "import json; m=json.load(open('/tmp/zoo/probe-badnets-s1.json')); print({k: m[k] for k in ('clean_accuracy','attack_success_rate','train_seconds','device')})" 2>&1 | tee -a "$S"

if [ -f /tmp/zoo/probe-badnets-s1.onnx ]; then
  for det in cepa agree; do
    [ $det = agree ] && { echo "== PyTorch yardstick" | tee -a "$S"; timeout 90 python3 scripts/device/torch_probe.py .dev/data/cifar10 2>&1 | tail -3 | tee -a "$S"; }
    echo "== scan --device cuda --verdict $det (CEPA alone, then with Neural Cleanse)" | tee -a "$S"
    t=$(date +%s.%N)
    timeout 120 /tmp/cepa --device cuda scan /tmp/zoo/probe-badnets-s1.onnx --data .dev/data/cifar10 \
      --verdict $det --format json -q > /tmp/scan-$det.json 2> /tmp/scan-$det.err
    echo "exit $?, $(el $t) s" | tee -a "$S"; tail -2 /tmp/scan-$det.err | tee -a "$S"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r.get(k) for k in ('verdict','target','score','device','seconds')})" /tmp/scan-$det.json 2>&1 | head -c 1500 | tee -a "$S"; echo | tee -a "$S"
  done
else
  { echo "== PyTorch yardstick" | tee -a "$S"; timeout 90 python3 scripts/device/torch_probe.py .dev/data/cifar10 2>&1 | tail -3 | tee -a "$S"; }
fi

echo "total $(el $t0) s" | tee -a "$S"
tar czf "$OUT/details.tgz" --exclude='*.onnx' --exclude='*.ckpt' -C /tmp gc zoo.log scan-cepa.json scan-agree.json scan-cepa.err scan-agree.err gc.log zoo 2>/dev/null
