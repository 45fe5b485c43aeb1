#!/bin/bash
# Session 40: each model's stimulation report (default settings) from a scan whose CEPA is cut to
# one step (stimulation does not depend on it), one JSON file a model.
#   CEPA=BINARY bash eval/stats-dev-s40/dump.sh OUTDIR MODEL.onnx...   -> OUTDIR/ID.json
out=$1; shift
cepa=${CEPA:-target/release/cepa}
mkdir -p "$out"
cfg=$out/cfg.toml
printf '[scan.cepa]\nsteps = 1\nmargin_blend_samples = 0\nmargin_patch_samples = 0\nmargin_steps = 0\n' > "$cfg"
for m in "$@"; do
  id=$(basename "$m" .onnx)
  [ -s "$out/$id.json" ] && continue
  d=$(python3 -c "import json; print(json.load(open('${m%.onnx}.json'))['dataset'])")
  "$cepa" scan "$m" --data "../shared/data/$d" --verdict cepa --config "$cfg" --format json 2>/dev/null |
    python3 -c "import json,sys; json.dump(json.load(sys.stdin)['stimulation'], open('$out/$id.json','w'))"
  echo "$id done $(date +%T)"
done
