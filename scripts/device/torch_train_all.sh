# Sourced by gpu_torch_population.sh and gpu_population_scan.sh: trains the ten full-width
# PyTorch victims (scripts/device/torch_population.py; clean, BadNets, Blend, WaNet, SIG, seeds
# 600 and 601) side by side on the GPU into /tmp/tz and gathers their manifest. Needs S (the
# summary file), EPOCHS, RESERVE (seconds of the deadline to leave for what follows), t0 and left().
IDS=""
for f in clean badnets blend wanet sig; do for s in 600 601; do IDS="$IDS torch-$f-s$s"; done; done
echo "== PyTorch training, $EPOCHS epochs, side by side:$IDS" | tee -a "$S"
mkdir -p /tmp/tz
for id in $IDS; do
  PYTHONUNBUFFERED=1 timeout $(( $(left) - RESERVE )) python3 scripts/device/torch_population.py \
    --data .dev/data/cifar10 --out /tmp/tz --epochs "$EPOCHS" --model "$id" > "/tmp/train-$id.log" 2>&1 &
done
wait
echo "trained at $(( $(date +%s) - t0 )) s" | tee -a "$S"
python3 scripts/device/torch_population.py --out /tmp/tz --manifest 2>&1 | tee -a "$S"
