# Sourced by gpu_check.sh and gpu_population_scan.sh: the device check of one interpreter fixture,
# `cepa --device cuda inspect FIXTURE --compare-cpu` (logits and input gradients on CUDA against
# the CPU, 1e-4 relative of the largest value). Needs CEPA (the binary) and OUT; writes
# $OUT/fixtures/NAME$TAG.{json,err} and prints one line. TAG (default empty) tells runs apart,
# e.g. the same fixture with CEPA_CUDA_TF32=1 set by the caller.
FX=crates/cepa/tests/fixtures
mkdir -p "$OUT/fixtures"

# A .npy of images needs labels beside it; the fixtures have none, so write zeros (uint8): the
# check compares devices on the model's own predictions, not on labels.
labels() { # labels FILE N
  local h="{'descr': '|u1', 'fortran_order': False, 'shape': ($2,), }"
  local pad=$(( (64 - (10 + ${#h} + 1) % 64) % 64 ))
  { printf '\x93NUMPY\x01\x00'; printf "\\x$(printf %02x $(( (${#h} + pad + 1) % 256 )))\\x$(printf %02x $(( (${#h} + pad + 1) / 256 )))";
    printf '%s' "$h"; printf "%${pad}s" ''; printf '\n'; head -c "$2" /dev/zero; } > "$1"
}

check_one() { # check_one ONNX [SECONDS]
  local onnx=$1 lim=${2:-120} name stem x n out
  name=$(basename "$onnx" .onnx)
  stem=${name%-legacy-opset*}; stem=${stem%-dynamo}; stem=${stem%-opset*}
  x="$FX/$stem.x.npy"; [ -f "$x" ] || x="$FX/$name.x.npy"
  [ -f "$x" ] || { echo "$name: no input fixture"; return 0; }
  cp "$x" "$OUT/fixtures/$name.npy"
  n=$(python3 -c "import numpy as np; print(np.load('$x').shape[0])" 2>/dev/null || echo 4)
  labels "$OUT/fixtures/${name}_labels.npy" "$n"
  out="$OUT/fixtures/$name${TAG:-}"
  if timeout "$lim" "$CEPA" --device cuda inspect "$onnx" --data "$OUT/fixtures/$name.npy" \
      --compare-cpu --format json -q > "$out.json" 2> "$out.err"; then
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], r.get('device'), r['device_check'])" \
      "$out.json" "$name${TAG:-}" 2>/dev/null || echo "$name${TAG:-}: ok (see json)"
  else
    echo "$name${TAG:-}: FAILED $(tail -1 "$out.err")"
  fi
}
