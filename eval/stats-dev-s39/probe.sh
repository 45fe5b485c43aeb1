#!/bin/bash
# Session 39, analysis only: each model's channel stimulation with [scan.stimulation] layer = LAYER
# (and the lines of $EXTRA, e.g. EXTRA='group = 4\n'), read from a scan whose CEPA is cut to one
# step (stimulation does not depend on it). One line a model: id, true target, layer, group,
# class singled out, its index, the rank of the true target (0 = first), the target's index.
# usage: probe.sh LAYER MODEL... : one line per model: id truth layer class index indices
layer=$1; shift
mkdir -p target/s39
cfg=target/s39/q-$layer-${TAG:-x}.toml
printf '[scan.cepa]\nsteps = 1\nmargin_blend_samples = 0\nmargin_patch_samples = 0\nmargin_steps = 0\n[scan.stimulation]\nlayer = "%s"\n%b' "$layer" "${EXTRA:-}" > $cfg
for m in "$@"; do
  id=$(basename $m .onnx)
  data=$(python3 -c "import json; print(json.load(open('${m%.onnx}.json'))['dataset'])" 2>/dev/null)
  case $data in cifar10) d=cifar10;; fashion-mnist) d=fashion-mnist;; mnist) d=mnist;; gtsrb32) d=gtsrb32;; *) d=$data;; esac
  t=$(python3 -c "import json; a=json.load(open('${m%.onnx}.json'))['params']['attack']; print(a['target'] if a else '-')")
  target/release/cepa scan "$m" --data ../shared/data/$d --verdict cepa --config $cfg --format json 2>/dev/null | python3 -c "
import json,sys; r=json.load(sys.stdin)['stimulation']
ix=r['indices']; t='$t'
rank = sorted(range(len(ix)),key=lambda i:-ix[i]).index(int(t)) if t!='-' else '-'
print('$id', t, r['layer'], r.get('group'), r['class'], round(r['index'],2), 'rank', rank, 'at_t', round(ix[int(t)],2) if t!='-' else '-')"
done
