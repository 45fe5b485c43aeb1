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
FX=crates/cepa/tests/fixtures
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
. scripts/device/fixture_check.sh

log "machine"
(nvidia-smi || echo "no nvidia-smi") > "$OUT/nvidia-smi.txt" 2>&1
head -15 "$OUT/nvidia-smi.txt" | tee -a "$OUT/summary.txt"
"$CEPA" --version | tee -a "$OUT/summary.txt"

log "device check: every interpreter fixture, CUDA against CPU"
# One process per fixture, all at once (each compiles its kernels first; the GPU is shared).
for onnx in "$FX"/*.onnx; do
  check_one "$onnx" > "$OUT/fixtures/$(basename "$onnx" .onnx).line" &
done
wait
cat "$OUT"/fixtures/*.line | tee -a "$OUT/summary.txt"
fails=$(cat "$OUT"/fixtures/*.line | grep -c FAILED)

log "scan of the shipped example, CPU then CUDA (wall seconds)"
EX=examples/mnist-badnets
# cuda-tf32: the same with TF32 allowed (CEPA_CUDA_TF32=1; scripts/device/build_cuda.sh).
for dev in cpu cuda cuda-tf32; do
  s=$(date +%s.%N)
  tf=0; [ "$dev" = cuda-tf32 ] && tf=1
  CEPA_CUDA_TF32=$tf timeout 60 "$CEPA" --device ${dev%-tf32} scan $EX/model.onnx --data $EX/images \
    --format json -q > "$OUT/scan-$dev.json" 2> "$OUT/scan-$dev.err"
  rc=$?; e=$(date +%s.%N)
  echo "$dev: exit $rc, $(awk "BEGIN{print $e - $s}") s" | tee -a "$OUT/summary.txt"
done
log "done: $fails fixture(s) failed"
