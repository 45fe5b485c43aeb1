#!/usr/bin/env bash
# The GPU check of issue 15, for a session that is lent the `device` machine (one run, about 10
# minutes). It needs a CUDA build of the CLI carried to the machine (the machine has no network,
# and a CUDA build downloads an LLVM bundle at build time; see README, "On a GPU"):
#
#   CARGO_TARGET_DIR=target/cuda cargo build --release -p cepa-cli --features cuda --locked
#   strip -o target/cepa-cuda target/cuda/release/cepa    # carried: `carry: ["target/cepa-cuda"]`
#
# and then, through the device tool, `bash scripts/device/gpu_check.sh target/cepa-cuda`. It writes
# everything under $OUT (or ./gpu-check): nvidia-smi, the device check of every interpreter
# fixture (logits and input gradients on CUDA against the CPU, 1e-4 relative), and the timed scan
# of the shipped example on both devices.
set -u
CEPA=${1:-target/cepa-cuda}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT/fixtures"
FX=crates/cepa/tests/fixtures
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

log "machine"
(nvidia-smi || echo "no nvidia-smi") > "$OUT/nvidia-smi.txt" 2>&1
head -15 "$OUT/nvidia-smi.txt" | tee -a "$OUT/summary.txt"
"$CEPA" --version | tee -a "$OUT/summary.txt"

# A .npy of images needs labels beside it; the fixtures have none, so write zeros (uint8): the
# check compares devices on the model's own predictions, not on labels.
labels() { # labels FILE N
  local h="{'descr': '|u1', 'fortran_order': False, 'shape': ($2,), }"
  local pad=$(( (64 - (10 + ${#h} + 1) % 64) % 64 ))
  { printf '\x93NUMPY\x01\x00'; printf "\\x$(printf %02x $(( (${#h} + pad + 1) % 256 )))\\x$(printf %02x $(( (${#h} + pad + 1) / 256 )))";
    printf '%s' "$h"; printf "%${pad}s" ''; printf '\n'; head -c "$2" /dev/zero; } > "$1"
}

log "device check: every interpreter fixture, CUDA against CPU"
# One process per fixture, all at once (each compiles its kernels first; the GPU is shared).
check_one() { # check_one ONNX
  local onnx=$1 name stem x n
  name=$(basename "$onnx" .onnx)
  stem=${name%-legacy-opset*}; stem=${stem%-dynamo}; stem=${stem%-opset*}
  x="$FX/$stem.x.npy"; [ -f "$x" ] || x="$FX/$name.x.npy"
  [ -f "$x" ] || { echo "$name: no input fixture"; return 0; }
  cp "$x" "$OUT/fixtures/$name.npy"
  n=$(python3 -c "import numpy as np; print(np.load('$x').shape[0])" 2>/dev/null || echo 4)
  labels "$OUT/fixtures/${name}_labels.npy" "$n"
  if timeout 120 "$CEPA" --device cuda inspect "$onnx" --data "$OUT/fixtures/$name.npy" \
      --compare-cpu --format json -q > "$OUT/fixtures/$name.json" 2> "$OUT/fixtures/$name.err"; then
    python3 -c "import json,sys; c=json.load(open(sys.argv[1]))['device_check']; print(sys.argv[2], c)" \
      "$OUT/fixtures/$name.json" "$name" 2>/dev/null || echo "$name: ok (see json)"
  else
    echo "$name: FAILED $(tail -1 "$OUT/fixtures/$name.err")"
  fi
}
for onnx in "$FX"/*.onnx; do
  check_one "$onnx" > "$OUT/fixtures/$(basename "$onnx" .onnx).line" &
done
wait
cat "$OUT"/fixtures/*.line | tee -a "$OUT/summary.txt"
fails=$(cat "$OUT"/fixtures/*.line | grep -c FAILED)

log "scan of the shipped example, CPU then CUDA (wall seconds)"
EX=examples/mnist-badnets
for dev in cpu cuda; do
  s=$(date +%s.%N)
  timeout 60 "$CEPA" --device $dev scan $EX/model.onnx --data $EX/images --format json -q \
    > "$OUT/scan-$dev.json" 2> "$OUT/scan-$dev.err"
  rc=$?; e=$(date +%s.%N)
  echo "$dev: exit $rc, $(awk "BEGIN{print $e - $s}") s" | tee -a "$OUT/summary.txt"
done
log "done: $fails fixture(s) failed"
